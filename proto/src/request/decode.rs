//! Request decoding: spec §5.3 steps 2–4, which depend only on the bytes, `max_batch` and
//! the negotiated features. The first failure is returned; [`Error::refusal`] is the answer.
//!
//! Without an extension bit, every byte an extension gives meaning to is read exactly as
//! version 1 reads it (undefined flag, reserved field), so a version-1 driver gets version
//! 1's answers (spec §2.2 [DEV-24]).

use crate::error::Error;
use crate::feature;
use crate::negotiated::Negotiated;
use crate::request::indices::{INDEX_ENTRY_LEN, IndexList, IndexRange, Indices};
use crate::request::target::{TARGET_LEN, Target, checked_targets};
use crate::request::{
    Alloc, IndexSpec, MAX_MSI_VECTORS, MAX_PASID, Operation, Request, Retarget, RetargetTo,
    Targeting,
};
use crate::types::{Field, Kind, Opcode};
use crate::wire::{
    ALLOC_FLAG_ANY_CONTIGUOUS, ALLOC_FLAG_ANY_INDEX, ALLOC_FLAG_PARKED, ALLOC_FLAG_PASID,
    ALLOC_FLAG_SPREAD, ALLOC_FLAGS_DEFINED, AllocBody, RANGE_FLAG_LIST, RANGE_FLAG_PARK, RangeBody,
    RequestHeader, read,
};
use core::mem::size_of;

/// Bytes of the request header.
const HEADER_LEN: usize = size_of::<RequestHeader>();
/// Bytes of header and body: where index lists and targets start.
const FIXED_LEN: usize = HEADER_LEN + size_of::<AllocBody>();

fn exact(bytes: &[u8], expected: usize) -> Result<(), Error> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            expected,
            got: bytes.len(),
        })
    }
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

/// The last index of a run of `count` from `first` must fit 32 bits (spec §5.3: `first +
/// count` = 2^32 is allowed, one more is not).
fn check_run(first: u32, count: u16) -> Result<(), Error> {
    if first
        .checked_add(u32::from(count).saturating_sub(1))
        .is_none()
    {
        return Err(Error::IndexOverflow { first, count });
    }
    Ok(())
}

/// ALLOC body fields, checked in §5.3 step 3's order.
struct AllocFields {
    kind: Kind,
    index: IndexSpec,
    targeting: Targeting,
    pasid: Option<u32>,
    /// Targets that must follow the body.
    num_targets: u16,
}

/// The ALLOC flags a channel with `features` defines (spec §4.5): an un-negotiated flag is
/// undefined, exactly as version 1's bits 2–7 are.
fn alloc_flags_defined(features: u64) -> u8 {
    let mut defined = ALLOC_FLAGS_DEFINED;
    if features & feature::PARKED != 0 {
        defined |= ALLOC_FLAG_PARKED;
    }
    if features & feature::SPREAD != 0 {
        defined |= ALLOC_FLAG_SPREAD;
    }
    if features & feature::CONTIGUOUS != 0 {
        defined |= ALLOC_FLAG_ANY_CONTIGUOUS;
    }
    defined
}

fn alloc_fields(body: &AllocBody, negotiated: Negotiated) -> Result<AllocFields, Error> {
    let max_batch = negotiated.batch_limit();
    let kind = kind(body.kind)?;
    let flags = body.flags;
    if flags & !alloc_flags_defined(negotiated.features) != 0 {
        return Err(Error::UndefinedFlags(flags));
    }
    let has = |flag: u8| flags & flag != 0;
    if has(ALLOC_FLAG_PARKED) && has(ALLOC_FLAG_SPREAD)
        || has(ALLOC_FLAG_ANY_CONTIGUOUS) && !has(ALLOC_FLAG_ANY_INDEX)
    {
        return Err(Error::FlagConflict(flags));
    }
    let num_targets = body.num_targets.get();
    let spread_negotiated = negotiated.has(feature::SPREAD);
    if !spread_negotiated && num_targets != 0 {
        // Version 1's `reserved`.
        return Err(Error::ReservedNotZero(Field::BodyReserved));
    }
    if spread_negotiated {
        let fits = if has(ALLOC_FLAG_SPREAD) {
            (1..=max_batch).contains(&num_targets)
        } else {
            num_targets == 0
        };
        if !fits {
            return Err(Error::InvalidNumTargets(num_targets));
        }
    }
    let (min, max) = (body.min_count.get(), body.max_count.get());
    if min == 0 || min > max {
        return Err(Error::InvalidCount { min, max });
    }
    check_batch(max, max_batch)?;
    let first = body.first_index.get();
    let index = if has(ALLOC_FLAG_ANY_INDEX) {
        if first != 0 {
            return Err(Error::IndexNotZero(first));
        }
        if has(ALLOC_FLAG_ANY_CONTIGUOUS) {
            IndexSpec::AnyContiguous
        } else {
            IndexSpec::Any
        }
    } else {
        check_run(first, max)?;
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
    let pasid = if has(ALLOC_FLAG_PASID) {
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
    let (targeting, num_targets) = if has(ALLOC_FLAG_PARKED) {
        (Targeting::Parked, 0)
    } else if has(ALLOC_FLAG_SPREAD) {
        (Targeting::Spread, num_targets)
    } else {
        (Targeting::PerVector, max)
    };
    Ok(AllocFields {
        kind,
        index,
        targeting,
        pasid,
        num_targets,
    })
}

/// FREE and RETARGET body fields, checked in §5.3 step 3's order.
struct RangeFields {
    kind: Kind,
    list: bool,
    park: bool,
    first: u32,
    count: u16,
}

fn range_fields(
    body: &RangeBody,
    opcode: Opcode,
    negotiated: Negotiated,
) -> Result<RangeFields, Error> {
    let kind = kind(body.kind)?;
    // The flags byte is version 1's `reserved0` unless an extension gives it flags.
    let flags_byte = negotiated.features & (feature::INDEX_LIST | feature::PARKED) != 0;
    let flags = body.flags;
    if flags_byte {
        let mut defined = 0;
        if negotiated.has(feature::INDEX_LIST) {
            defined |= RANGE_FLAG_LIST;
        }
        if negotiated.has(feature::PARKED) && opcode == Opcode::Retarget {
            defined |= RANGE_FLAG_PARK;
        }
        if flags & !defined != 0 {
            return Err(Error::UndefinedFlags(flags));
        }
    }
    let reserved0 = if flags_byte { 0 } else { flags };
    if reserved0 != 0
        || body.reserved1.get() != 0
        || body.reserved2.get() != 0
        || body.reserved3.get() != 0
    {
        return Err(Error::ReservedNotZero(Field::BodyReserved));
    }
    let (first, count) = (body.first_index.get(), body.count.get());
    if count == 0 {
        return Err(Error::InvalidCount { min: 0, max: 0 });
    }
    check_batch(count, negotiated.batch_limit())?;
    let list = flags_byte && flags & RANGE_FLAG_LIST != 0;
    if list {
        if first != 0 {
            return Err(Error::IndexNotZero(first));
        }
    } else {
        check_run(first, count)?;
    }
    Ok(RangeFields {
        kind,
        list,
        park: flags_byte && flags & RANGE_FLAG_PARK != 0,
        first,
        count,
    })
}

/// Step 4 for FREE and RETARGET: the total length, then the index list, then the targets.
fn indices_and_targets<'a>(
    bytes: &'a [u8],
    fields: &RangeFields,
    with_targets: bool,
) -> Result<(Indices<'a>, &'a [Target]), Error> {
    let count = usize::from(fields.count);
    let list_len = if fields.list {
        count * INDEX_ENTRY_LEN
    } else {
        0
    };
    let targets_len = if with_targets { count * TARGET_LEN } else { 0 };
    exact(bytes, FIXED_LEN + list_len + targets_len)?;
    let rest = bytes.get(FIXED_LEN..).unwrap_or_default();
    let (list_bytes, target_bytes) = rest.split_at_checked(list_len).unwrap_or_default();
    let indices = if fields.list {
        Indices::List {
            kind: fields.kind,
            indices: IndexList::from_wire(list_bytes)?,
        }
    } else {
        Indices::Run(IndexRange {
            kind: fields.kind,
            first: fields.first,
            count: fields.count,
        })
    };
    Ok((indices, checked_targets(target_bytes)?))
}

impl<'a> Request<'a> {
    /// Decodes and validates a request occupying exactly `bytes`, against the channel's
    /// `max_batch` and negotiated features.
    ///
    /// A `max_batch` above [`crate::MAX_BATCH_LIMIT`] counts as that limit, which no device
    /// may exceed. Checks, in spec §5.3's order: the header (length, opcode, reserved
    /// fields), then the body's fields (kind, flags, reserved fields, `num_targets`,
    /// counts, index, PASID), then the total length, then each index-list entry, then each
    /// target. The first failure is returned.
    ///
    /// With [`Negotiated::v1`] (no extension bit) this is version 1's decoder: every
    /// extension flag is undefined and every extension field reserved.
    pub fn decode(bytes: &'a [u8], negotiated: Negotiated) -> Result<Request<'a>, Error> {
        let header: RequestHeader = read(bytes, 0)?;
        let opcode = Opcode::from_wire(header.opcode).ok_or(Error::UnknownOpcode(header.opcode))?;
        if header.reserved0 != 0 || header.reserved1.get() != 0 {
            return Err(Error::ReservedNotZero(Field::HeaderReserved));
        }
        let op = match opcode {
            Opcode::Query => exact(bytes, HEADER_LEN).map(|()| Operation::Query)?,
            Opcode::Reset => exact(bytes, HEADER_LEN).map(|()| Operation::Reset)?,
            Opcode::Alloc => {
                let body: AllocBody = read(bytes, HEADER_LEN)?;
                let fields = alloc_fields(&body, negotiated)?;
                let targets_len = usize::from(fields.num_targets) * TARGET_LEN;
                exact(bytes, FIXED_LEN + targets_len)?;
                let targets = checked_targets(bytes.get(FIXED_LEN..).unwrap_or_default())?;
                Operation::Alloc(Alloc {
                    kind: fields.kind,
                    index: fields.index,
                    min: body.min_count.get(),
                    max: body.max_count.get(),
                    pasid: fields.pasid,
                    targeting: fields.targeting,
                    targets,
                })
            }
            Opcode::Free => {
                let fields = range_fields(&read(bytes, HEADER_LEN)?, opcode, negotiated)?;
                let (indices, _) = indices_and_targets(bytes, &fields, false)?;
                Operation::Free(indices)
            }
            Opcode::Retarget => {
                let fields = range_fields(&read(bytes, HEADER_LEN)?, opcode, negotiated)?;
                let (indices, targets) = indices_and_targets(bytes, &fields, !fields.park)?;
                let to = if fields.park {
                    RetargetTo::Park
                } else {
                    RetargetTo::Targets(targets)
                };
                Operation::Retarget(Retarget { indices, to })
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
}
