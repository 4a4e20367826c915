//! Request encoding, the lengths a request needs, and the features it uses.

use crate::device::MAX_BATCH_LIMIT;
use crate::error::Error;
use crate::feature;
use crate::le::{Le16, Le32, Le64};
use crate::negotiated::Negotiated;
use crate::request::indices::{INDEX_ENTRY_LEN, Indices};
use crate::request::target::{TARGET_LEN, Target};
use crate::request::{Alloc, IndexSpec, Operation, Request, RetargetTo, Targeting};
use crate::types::Kind;
use crate::wire::{
    ALLOC_FLAG_ANY_CONTIGUOUS, ALLOC_FLAG_ANY_INDEX, ALLOC_FLAG_PARKED, ALLOC_FLAG_PASID,
    ALLOC_FLAG_SPREAD, AllocBody, QueryBody, QueryBodyExt, RANGE_FLAG_LIST, RANGE_FLAG_PARK,
    RangeBody, RequestHeader, ResponseHeader, WireGrant, WireGrantInfo,
};
use core::mem::size_of;

const HEADER_LEN: usize = size_of::<RequestHeader>();
const BODY_LEN: usize = size_of::<AllocBody>();
const RESPONSE_HEADER_LEN: usize = size_of::<ResponseHeader>();

/// The feature bit that offers `kind`.
const fn kind_feature(kind: Kind) -> u64 {
    match kind {
        Kind::Msi => feature::MSI,
        Kind::MsiX => feature::MSIX,
        Kind::Ims => feature::IMS,
    }
}

fn indices_features(indices: &Indices<'_>) -> u64 {
    let list = if indices.is_list() {
        feature::INDEX_LIST | feature::INFO
    } else {
        0
    };
    kind_feature(indices.kind()) | list
}

fn mismatch(expected: usize, got: usize) -> Error {
    Error::EntryCountMismatch { expected, got }
}

impl Request<'_> {
    /// Bytes [`Request::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        match &self.op {
            Operation::Query | Operation::Reset => HEADER_LEN,
            Operation::Alloc(a) => HEADER_LEN + BODY_LEN + a.targets.len() * TARGET_LEN,
            Operation::Free(indices) => HEADER_LEN + BODY_LEN + list_len(indices),
            Operation::Retarget(r) => {
                HEADER_LEN + BODY_LEN + list_len(&r.indices) + r.targets().len() * TARGET_LEN
            }
        }
    }

    /// The largest reply this request can get on a channel with `features`: the writable
    /// space a driver must provide (spec §4.1 [DRV-6]). [`feature::INFO`] makes the QUERY
    /// body 64 bytes and each grant record 24.
    pub fn max_response_len(&self, features: u64) -> usize {
        let info = features & feature::INFO != 0;
        match &self.op {
            Operation::Query => {
                let ext = if info { size_of::<QueryBodyExt>() } else { 0 };
                RESPONSE_HEADER_LEN + size_of::<QueryBody>() + ext
            }
            Operation::Alloc(a) => {
                let record = if info {
                    size_of::<WireGrantInfo>()
                } else {
                    size_of::<WireGrant>()
                };
                RESPONSE_HEADER_LEN + usize::from(a.max) * record
            }
            _ => RESPONSE_HEADER_LEN,
        }
    }

    /// The feature bits a driver must have negotiated to send this request: the extension
    /// bits its shape uses (with [`feature::INFO`], which each of them needs), without which
    /// a device answers BAD_REQUEST, and the bits a device checks at spec §5.3 step 7 (the
    /// kind's bit, [`feature::PASID`], [`feature::RETARGET`]).
    pub fn required_features(&self) -> u64 {
        match &self.op {
            Operation::Query | Operation::Reset => 0,
            Operation::Alloc(a) => {
                let mut bits = kind_feature(a.kind);
                if a.pasid.is_some() {
                    bits |= feature::PASID;
                }
                if a.index == IndexSpec::AnyContiguous {
                    bits |= feature::CONTIGUOUS | feature::INFO;
                }
                bits |= match a.targeting {
                    Targeting::PerVector => 0,
                    Targeting::Spread => feature::SPREAD | feature::INFO,
                    Targeting::Parked => feature::PARKED | feature::INFO,
                };
                bits
            }
            Operation::Free(indices) => indices_features(indices),
            Operation::Retarget(r) => {
                let park = match r.to {
                    RetargetTo::Targets(_) => 0,
                    RetargetTo::Park => feature::PARKED | feature::INFO,
                };
                feature::RETARGET | indices_features(&r.indices) | park
            }
        }
    }

    /// Encodes into `buf` and returns the length written.
    ///
    /// The bytes are checked exactly as [`Request::decode`] checks them on the most
    /// permissive channel ([`Negotiated::most_permissive`]: every feature, the largest
    /// batch), so a value that encodes is one a device decodes when the driver negotiated
    /// [`Request::required_features`] and the count fits the device's `max_batch`.
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
        let (body, list, targets): (Option<[u8; BODY_LEN]>, Option<&Indices<'_>>, &[Target]) =
            match &self.op {
                Operation::Query | Operation::Reset => (None, None, &[]),
                Operation::Alloc(a) => (Some(bytemuck::cast(alloc_body(a)?)), None, a.targets),
                Operation::Free(indices) => (
                    Some(bytemuck::cast(range_body(indices, 0)?)),
                    Some(indices),
                    &[],
                ),
                Operation::Retarget(r) => {
                    let (flag, targets) = match r.to {
                        RetargetTo::Targets(targets) => (0, targets),
                        RetargetTo::Park => (RANGE_FLAG_PARK, &[][..]),
                    };
                    if matches!(r.to, RetargetTo::Targets(_))
                        && targets.len() != usize::from(r.indices.count())
                    {
                        return Err(mismatch(usize::from(r.indices.count()), targets.len()));
                    }
                    let body = range_body(&r.indices, flag)?;
                    (Some(bytemuck::cast(body)), Some(&r.indices), targets)
                }
            };
        let list: &[u8] = match list {
            Some(Indices::List { indices, .. }) => bytemuck::cast_slice(indices.as_wire()),
            _ => &[],
        };
        let body: &[u8] = match &body {
            Some(bytes) => bytes,
            None => &[],
        };
        let parts = [
            bytemuck::bytes_of(&header),
            body,
            list,
            bytemuck::cast_slice(targets),
        ];
        let mut rest = &mut *out;
        for part in parts {
            let (into, tail) = rest
                .split_at_mut_checked(part.len())
                .ok_or(Error::BufferTooSmall { needed: len, got })?;
            into.copy_from_slice(part);
            rest = tail;
        }
        Request::decode(out, Negotiated::most_permissive())?;
        Ok(len)
    }
}

fn list_len(indices: &Indices<'_>) -> usize {
    match indices {
        Indices::Run(_) => 0,
        Indices::List { indices, .. } => indices.len() * INDEX_ENTRY_LEN,
    }
}

fn alloc_body(a: &Alloc<'_>) -> Result<AllocBody, Error> {
    let (index_flags, first) = match a.index {
        IndexSpec::Any => (ALLOC_FLAG_ANY_INDEX, 0),
        IndexSpec::AnyContiguous => (ALLOC_FLAG_ANY_INDEX | ALLOC_FLAG_ANY_CONTIGUOUS, 0),
        IndexSpec::At(first) => (0, first),
    };
    let pasid_flag = if a.pasid.is_some() {
        ALLOC_FLAG_PASID
    } else {
        0
    };
    let (targeting_flag, num_targets, expected) = match a.targeting {
        Targeting::PerVector => (0, 0, usize::from(a.max)),
        Targeting::Spread => {
            // More targets than 16 bits count: say so rather than wrap.
            let n =
                u16::try_from(a.targets.len()).map_err(|_| Error::InvalidNumTargets(u16::MAX))?;
            (ALLOC_FLAG_SPREAD, n, a.targets.len())
        }
        Targeting::Parked => (ALLOC_FLAG_PARKED, 0, 0),
    };
    if a.targets.len() != expected {
        return Err(mismatch(expected, a.targets.len()));
    }
    Ok(AllocBody {
        kind: a.kind.to_wire(),
        flags: index_flags | pasid_flag | targeting_flag,
        num_targets: Le16::new(num_targets),
        first_index: Le32::new(first),
        min_count: Le16::new(a.min),
        max_count: Le16::new(a.max),
        pasid: Le32::new(a.pasid.unwrap_or(0)),
    })
}

fn range_body(indices: &Indices<'_>, flags: u8) -> Result<RangeBody, Error> {
    let (first, count, list_flag) = match indices {
        Indices::Run(r) => (r.first, r.count, 0),
        Indices::List { indices, .. } => {
            let count = u16::try_from(indices.len()).map_err(|_| Error::BatchTooLarge {
                count: u16::MAX,
                max_batch: MAX_BATCH_LIMIT,
            })?;
            (0, count, RANGE_FLAG_LIST)
        }
    };
    Ok(RangeBody {
        kind: indices.kind().to_wire(),
        flags: flags | list_flag,
        first_index: Le32::new(first),
        count: Le16::new(count),
        ..RangeBody::default()
    })
}
