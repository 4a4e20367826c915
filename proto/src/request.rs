//! Requests: typed, validated values decoded from and encoded to wire bytes (spec §4).

use crate::error::Error;
use crate::le::{Le16, Le32, Le64};
use crate::types::{Field, Kind, Opcode};
use crate::wire::{
    ALLOC_FLAG_ANY_INDEX, ALLOC_FLAG_PASID, ALLOC_FLAGS_DEFINED, AllocBody, RangeBody,
    RequestHeader, WireTarget,
};
use crate::{HEADER_LEN, RESPONSE_HEADER_LEN};
use bytemuck::{Pod, Zeroable};
use core::fmt;
use core::mem::size_of;

/// Lowest guest vector a target may name: x86 reserves 0–31 for exceptions.
pub const MIN_GUEST_VECTOR: u8 = 0x20;
/// Largest PASID (20 bits).
pub const MAX_PASID: u32 = (1 << 20) - 1;
/// Largest multi-message MSI block.
pub const MAX_MSI_VECTORS: u16 = 32;

const TARGET_LEN: usize = size_of::<WireTarget>();
const BODY_LEN: usize = size_of::<AllocBody>();
const GRANT_LEN: usize = size_of::<crate::wire::WireGrant>();
const QUERY_REPLY_LEN: usize = RESPONSE_HEADER_LEN + size_of::<crate::wire::QueryBody>();

/// Where one interrupt must arrive in the guest.
///
/// A `Target` built with [`Target::new`] always has its reserved bytes zero; one read from
/// a request was checked by [`Request::decode`] (vector at least 0x20, reserved zero).
/// Whether the vCPU exists is the device's call.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(transparent)]
pub struct Target(WireTarget);

impl Target {
    /// A destination: vCPU index and guest vector.
    pub const fn new(vcpu: u32, vector: u8) -> Self {
        Target(WireTarget {
            vcpu: Le32::new(vcpu),
            vector,
            reserved: [0; 3],
        })
    }

    /// The destination vCPU index.
    pub const fn vcpu(&self) -> u32 {
        self.0.vcpu.get()
    }

    /// The guest vector.
    pub const fn vector(&self) -> u8 {
        self.0.vector
    }

    fn check(&self, entry: usize) -> Result<(), Error> {
        let entry = entry as u32;
        if self.0.reserved != [0; 3] {
            return Err(Error::TargetReserved { entry });
        }
        if self.0.vector < MIN_GUEST_VECTOR {
            return Err(Error::VectorOutOfRange {
                entry,
                vector: self.0.vector,
            });
        }
        Ok(())
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Target {
    /// Canonical text: `vcpu:vector`, e.g. `1:0x31`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{:#x}", self.vcpu(), self.vector())
    }
}

/// Which table indices an ALLOC asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexSpec {
    /// Any free indices the device chooses (MSI always uses this form or `At(0)`).
    Any,
    /// Exactly `first..first + n` for the `n` vectors granted.
    At(u32),
}

/// An ALLOC request's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alloc<'a> {
    /// The interrupt mechanism.
    pub kind: Kind,
    /// Which indices.
    pub index: IndexSpec,
    /// Fewest vectors the driver accepts (at least 1).
    pub min: u16,
    /// Most vectors the driver wants.
    pub max: u16,
    /// The PASID the IMS slots will carry, if any.
    pub pasid: Option<u32>,
    /// One destination per vector that may be granted: exactly `max` of them. Vector `i` of
    /// the grant goes to `targets[i]`.
    pub targets: &'a [Target],
}

impl<'a> Alloc<'a> {
    /// Linux's `pci_alloc_irq_vectors` shape: between `min` and `targets.len()` vectors of
    /// `kind` at indices the device chooses, no PASID; vector `i` goes to `targets[i]`.
    ///
    /// More than 65,535 targets cannot be expressed; `max` saturates and encoding then
    /// reports the mismatch.
    pub fn any(kind: Kind, min: u16, targets: &'a [Target]) -> Self {
        let max = u16::try_from(targets.len()).unwrap_or(u16::MAX);
        Alloc {
            kind,
            index: IndexSpec::Any,
            min,
            max,
            pasid: None,
            targets,
        }
    }
}

/// A run of indices of one kind: the body of FREE, and of RETARGET before its targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IndexRange {
    /// The interrupt mechanism.
    pub kind: Kind,
    /// First index of the run.
    pub first: u32,
    /// Length of the run (at least 1).
    pub count: u16,
}

impl IndexRange {
    /// The indices of the run. Decoding guarantees it does not overflow.
    pub fn indices(&self) -> impl Iterator<Item = u32> + use<> {
        let first = self.first;
        (0..u32::from(self.count)).map(move |i| first.wrapping_add(i))
    }
}

/// A RETARGET request's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retarget<'a> {
    /// The granted vectors to move.
    pub range: IndexRange,
    /// One new destination per index of `range`, in order.
    pub targets: &'a [Target],
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation<'a> {
    /// Report the device's limits and the VM's quota.
    Query,
    /// Reserve and grant vectors.
    Alloc(Alloc<'a>),
    /// Release granted vectors.
    Free(IndexRange),
    /// Move granted vectors to new destinations.
    Retarget(Retarget<'a>),
    /// Release every vector of the device.
    Reset,
}

impl Operation<'_> {
    /// The opcode that carries this operation.
    pub const fn opcode(&self) -> Opcode {
        match self {
            Operation::Query => Opcode::Query,
            Operation::Alloc(_) => Opcode::Alloc,
            Operation::Free(_) => Opcode::Free,
            Operation::Retarget(_) => Opcode::Retarget,
            Operation::Reset => Opcode::Reset,
        }
    }
}

/// A validated request. Targets borrow from the decoded buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Device handle.
    pub device: u32,
    /// The driver's tag, echoed in the response.
    pub tag: u64,
    /// What is asked.
    pub op: Operation<'a>,
}

/// Reads a `T` at `offset`, or reports how many bytes were needed.
fn read<T: Pod>(bytes: &[u8], offset: usize) -> Result<T, Error> {
    let end = offset + size_of::<T>();
    bytes
        .get(offset..end)
        .map(bytemuck::pod_read_unaligned)
        .ok_or(Error::TooShort {
            needed: end,
            got: bytes.len(),
        })
}

fn kind(byte: u8) -> Result<Kind, Error> {
    Kind::from_wire(byte).ok_or(Error::UnknownKind(byte))
}

fn check_batch(count: u16, max_batch: u16) -> Result<(), Error> {
    if count > max_batch {
        return Err(Error::BatchTooLarge { count, max_batch });
    }
    Ok(())
}

/// Splits the `count` targets that must fill `bytes[offset..]` exactly, and checks each.
fn targets(bytes: &[u8], offset: usize, count: u16) -> Result<&[Target], Error> {
    let expected = offset + usize::from(count) * TARGET_LEN;
    if bytes.len() != expected {
        return Err(Error::LengthMismatch {
            expected,
            got: bytes.len(),
        });
    }
    let raw = bytes.get(offset..).unwrap_or_default();
    // Alignment is 1 and the length is a multiple of 8, so the cast cannot fail; map the
    // impossible error rather than unwrap on a guest-reachable path.
    let targets: &[Target] = bytemuck::try_cast_slice(raw).map_err(|_| Error::LengthMismatch {
        expected,
        got: bytes.len(),
    })?;
    for (entry, target) in targets.iter().enumerate() {
        target.check(entry)?;
    }
    Ok(targets)
}

fn range(body: &RangeBody, max_batch: u16) -> Result<IndexRange, Error> {
    let kind = kind(body.kind)?;
    if body.reserved0 != 0 || body.reserved1.get() != 0 || body.reserved2.get() != 0 {
        return Err(Error::ReservedNotZero(Field::BodyReserved));
    }
    if body.reserved3.get() != 0 {
        return Err(Error::ReservedNotZero(Field::BodyReserved));
    }
    let (first, count) = (body.first_index.get(), body.count.get());
    if count == 0 {
        return Err(Error::InvalidCount { min: 0, max: 0 });
    }
    check_batch(count, max_batch)?;
    if first.checked_add(u32::from(count) - 1).is_none() {
        return Err(Error::IndexOverflow { first, count });
    }
    Ok(IndexRange { kind, first, count })
}

fn alloc_fields(body: &AllocBody, max_batch: u16) -> Result<(Kind, IndexSpec, Option<u32>), Error> {
    let kind = kind(body.kind)?;
    if body.flags & !ALLOC_FLAGS_DEFINED != 0 {
        return Err(Error::UndefinedFlags(body.flags));
    }
    if body.reserved.get() != 0 {
        return Err(Error::ReservedNotZero(Field::BodyReserved));
    }
    let (min, max) = (body.min_count.get(), body.max_count.get());
    if min == 0 || min > max {
        return Err(Error::InvalidCount { min, max });
    }
    check_batch(max, max_batch)?;
    let first = body.first_index.get();
    let index = if body.flags & ALLOC_FLAG_ANY_INDEX != 0 {
        if first != 0 {
            return Err(Error::IndexNotZero(first));
        }
        IndexSpec::Any
    } else {
        if first.checked_add(u32::from(max) - 1).is_none() {
            return Err(Error::IndexOverflow { first, count: max });
        }
        IndexSpec::At(first)
    };
    if kind == Kind::Msi {
        if !min.is_power_of_two() || !max.is_power_of_two() || max > MAX_MSI_VECTORS {
            return Err(Error::MsiCount { min, max });
        }
        if let IndexSpec::At(first) = index
            && first != 0
        {
            return Err(Error::IndexNotZero(first));
        }
    }
    let pasid = body.pasid.get();
    let pasid = if body.flags & ALLOC_FLAG_PASID != 0 {
        if kind != Kind::Ims || pasid > MAX_PASID {
            return Err(Error::InvalidPasid(pasid));
        }
        Some(pasid)
    } else {
        if pasid != 0 {
            return Err(Error::ReservedNotZero(Field::Pasid));
        }
        None
    };
    Ok((kind, index, pasid))
}

impl<'a> Request<'a> {
    /// Decodes and validates a request occupying exactly `bytes`.
    ///
    /// `max_batch` is the device's advertised limit on counts; a value above
    /// [`crate::MAX_BATCH_LIMIT`] counts as that limit, which no device may exceed. Checks, in order: the
    /// header (length, opcode, reserved fields), then the body's fields in wire order,
    /// then the total length, then each target. The first failure is returned.
    pub fn decode(bytes: &'a [u8], max_batch: u16) -> Result<Request<'a>, Error> {
        let max_batch = max_batch.min(crate::MAX_BATCH_LIMIT);
        let header: RequestHeader = read(bytes, 0)?;
        let opcode = Opcode::from_wire(header.opcode).ok_or(Error::UnknownOpcode(header.opcode))?;
        if header.reserved0 != 0 || header.reserved1.get() != 0 {
            return Err(Error::ReservedNotZero(Field::HeaderReserved));
        }
        let exact = |expected: usize| {
            if bytes.len() == expected {
                Ok(())
            } else {
                Err(Error::LengthMismatch {
                    expected,
                    got: bytes.len(),
                })
            }
        };
        let op = match opcode {
            Opcode::Query => exact(HEADER_LEN).map(|()| Operation::Query)?,
            Opcode::Reset => exact(HEADER_LEN).map(|()| Operation::Reset)?,
            Opcode::Alloc => {
                let body: AllocBody = read(bytes, HEADER_LEN)?;
                let (kind, index, pasid) = alloc_fields(&body, max_batch)?;
                let (min, max) = (body.min_count.get(), body.max_count.get());
                let targets = targets(bytes, HEADER_LEN + BODY_LEN, max)?;
                Operation::Alloc(Alloc {
                    kind,
                    index,
                    min,
                    max,
                    pasid,
                    targets,
                })
            }
            Opcode::Free => {
                let range = range(&read(bytes, HEADER_LEN)?, max_batch)?;
                exact(HEADER_LEN + BODY_LEN)?;
                Operation::Free(range)
            }
            Opcode::Retarget => {
                let range = range(&read(bytes, HEADER_LEN)?, max_batch)?;
                let targets = targets(bytes, HEADER_LEN + BODY_LEN, range.count)?;
                Operation::Retarget(Retarget { range, targets })
            }
        };
        Ok(Request {
            device: header.device.get(),
            tag: header.tag.get(),
            op,
        })
    }

    /// The header of whatever request `bytes` start with, even if the rest is malformed, so
    /// that a refusal can echo the opcode, device and tag. `None` if fewer than 16 bytes.
    pub fn peek_header(bytes: &[u8]) -> Option<RequestHeader> {
        read(bytes, 0).ok()
    }

    /// Bytes [`Request::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        match &self.op {
            Operation::Query | Operation::Reset => HEADER_LEN,
            Operation::Free(_) => HEADER_LEN + BODY_LEN,
            Operation::Alloc(a) => HEADER_LEN + BODY_LEN + a.targets.len() * TARGET_LEN,
            Operation::Retarget(r) => HEADER_LEN + BODY_LEN + r.targets.len() * TARGET_LEN,
        }
    }

    /// The largest reply this request can get: the writable space a driver must provide.
    pub fn max_response_len(&self) -> usize {
        match &self.op {
            Operation::Query => QUERY_REPLY_LEN,
            Operation::Alloc(a) => RESPONSE_HEADER_LEN + usize::from(a.max) * GRANT_LEN,
            _ => RESPONSE_HEADER_LEN,
        }
    }

    /// Encodes into `buf` and returns the length written.
    ///
    /// The result is checked exactly as [`Request::decode`] would check it (with the
    /// largest batch the protocol allows), so a value that encodes is one a device decodes.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let len = self.encoded_len();
        let got = buf.len();
        let out = buf
            .get_mut(..len)
            .ok_or(Error::BufferTooSmall { needed: len, got })?;
        let header = RequestHeader {
            opcode: self.op.opcode().to_wire(),
            reserved0: 0,
            reserved1: Le16::new(0),
            device: Le32::new(self.device),
            tag: Le64::new(self.tag),
        };
        let (head, rest) = out.split_at_mut(HEADER_LEN);
        head.copy_from_slice(bytemuck::bytes_of(&header));
        let (body, tail): (Option<[u8; BODY_LEN]>, &[Target]) = match &self.op {
            Operation::Query | Operation::Reset => (None, &[]),
            Operation::Alloc(a) => {
                if a.targets.len() != usize::from(a.max) {
                    return Err(Error::EntryCountMismatch {
                        expected: usize::from(a.max),
                        got: a.targets.len(),
                    });
                }
                (Some(bytemuck::cast(alloc_body(a))), a.targets)
            }
            Operation::Free(r) => (Some(bytemuck::cast(range_body(r))), &[]),
            Operation::Retarget(r) => {
                if r.targets.len() != usize::from(r.range.count) {
                    return Err(Error::EntryCountMismatch {
                        expected: usize::from(r.range.count),
                        got: r.targets.len(),
                    });
                }
                (Some(bytemuck::cast(range_body(&r.range))), r.targets)
            }
        };
        let body: &[u8] = match &body {
            Some(bytes) => bytes,
            None => &[],
        };
        let (body_out, targets_out) = rest.split_at_mut(body.len());
        body_out.copy_from_slice(body);
        targets_out.copy_from_slice(bytemuck::cast_slice(tail));
        Request::decode(out, crate::MAX_BATCH_LIMIT)?;
        Ok(len)
    }
}

fn alloc_body(a: &Alloc<'_>) -> AllocBody {
    let (flags, first) = match a.index {
        IndexSpec::Any => (ALLOC_FLAG_ANY_INDEX, 0),
        IndexSpec::At(first) => (0, first),
    };
    let pasid_flag = if a.pasid.is_some() {
        ALLOC_FLAG_PASID
    } else {
        0
    };
    AllocBody {
        kind: a.kind.to_wire(),
        flags: flags | pasid_flag,
        reserved: Le16::new(0),
        first_index: Le32::new(first),
        min_count: Le16::new(a.min),
        max_count: Le16::new(a.max),
        pasid: Le32::new(a.pasid.unwrap_or(0)),
    }
}

fn range_body(r: &IndexRange) -> RangeBody {
    RangeBody {
        kind: r.kind.to_wire(),
        first_index: Le32::new(r.first),
        count: Le16::new(r.count),
        ..RangeBody::default()
    }
}

struct TargetList<'a>(&'a [Target]);

impl fmt::Display for TargetList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{t}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Display for Request<'_> {
    /// Canonical text (spec §7), e.g.
    /// `alloc device=7 tag=0x2a kind=msix index=any count=1..2 pasid=none targets=[0:0x30,1:0x31]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} device={} tag={:#x}",
            self.op.opcode(),
            self.device,
            self.tag
        )?;
        match &self.op {
            Operation::Query | Operation::Reset => Ok(()),
            Operation::Alloc(a) => {
                write!(f, " kind={} index=", a.kind)?;
                match a.index {
                    IndexSpec::Any => f.write_str("any")?,
                    IndexSpec::At(first) => write!(f, "{first}")?,
                }
                write!(f, " count={}..{} pasid=", a.min, a.max)?;
                match a.pasid {
                    Some(p) => write!(f, "{p:#x}")?,
                    None => f.write_str("none")?,
                }
                write!(f, " targets={}", TargetList(a.targets))
            }
            Operation::Free(r) => write!(f, " kind={} index={} count={}", r.kind, r.first, r.count),
            Operation::Retarget(r) => write!(
                f,
                " kind={} index={} count={} targets={}",
                r.range.kind,
                r.range.first,
                r.range.count,
                TargetList(r.targets)
            ),
        }
    }
}
