//! The checks a reply must pass beyond decoding and the echo (spec §8 [DRV-9]): an OK
//! carries a result the request allows, and a refusal is one the request can get.
//!
//! Everything here reads the driver's own copy of the reply (spec §8: copied out of shared
//! memory once, validated, used). What the driver cannot know it does not check: it keeps
//! no record of the grants it holds (see the crate documentation), so "none already held"
//! is left to the caller; the table an index must lie in is known once QUERY reported it
//! ([`TableCache`]).

use crate::Error;
use crate::error::{GrantField, QueryField};
use crate::tables::TableCache;
use pvirq_proto::{
    DeviceInfo, Field, GrantSlice, IndexSpec, Kind, Opcode, Outcome, Refusal, Response, feature,
};

/// What an ALLOC asked for: what its grants must fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AllocExpect {
    pub(crate) kind: Kind,
    pub(crate) index: IndexSpec,
    pub(crate) min: u16,
    pub(crate) max: u16,
    pub(crate) pasid: Option<u32>,
    /// Whether the grants must come back parked.
    pub(crate) parked: bool,
    /// Targets the request carried (the bound of an INVALID_TARGET's entry).
    pub(crate) targets: usize,
}

/// What a correct answer must look like, beyond the echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    Query,
    Alloc(AllocExpect),
    /// FREE or RETARGET of `count` indices: the run from `first`, or a list (`None`).
    Indices {
        count: u16,
        first: Option<u32>,
        /// Targets the request carried.
        targets: usize,
    },
    Reset,
}

/// What the checks need to know besides what the request asked for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Context<'t> {
    /// The request's operation.
    pub(crate) opcode: Opcode,
    /// The device handle it named.
    pub(crate) device: u32,
    /// Writable bytes it offered.
    pub(crate) capacity: u32,
    /// The negotiated features.
    pub(crate) features: u64,
    /// Table sizes QUERY reported.
    pub(crate) tables: &'t TableCache,
    /// The device's `max_batch`.
    pub(crate) max_batch: u16,
}

/// Checks the outcome of a decoded reply whose echo matched the request that `expect`
/// describes.
pub(crate) fn outcome(
    expect: &Expect,
    context: &Context<'_>,
    response: &Response<'_>,
) -> Result<(), Error> {
    match (*expect, &response.outcome) {
        (_, Outcome::Refused(refusal)) => refusal_fits(expect, context, *refusal),
        (Expect::Query, Outcome::Queried { info, .. }) => {
            query_fits(info, context.features, context.max_batch)
        }
        (Expect::Alloc(alloc), Outcome::Allocated { grants, .. }) => {
            let table = context.tables.size(context.device, alloc.kind);
            grants_fit(&alloc, grants, table)
        }
        (Expect::Indices { count, .. }, Outcome::Freed { count: got, .. })
        | (Expect::Indices { count, .. }, Outcome::Retargeted { count: got, .. }) => {
            if u32::from(count) != *got {
                return Err(Error::CountMismatch {
                    expected: u32::from(count),
                    got: *got,
                });
            }
            Ok(())
        }
        (Expect::Reset, Outcome::Reset { .. }) => Ok(()),
        // With the opcode echoed correctly, `Response::decode` picks the outcome that
        // belongs to it; anything else is a malformed reply.
        _ => Err(Error::Malformed(pvirq_proto::Error::OutcomeMismatch(
            response.opcode,
        ))),
    }
}

/// The kinds a driver with `features` may be told about.
fn negotiated_kinds(features: u64) -> u32 {
    [
        (Kind::Msi, feature::MSI),
        (Kind::MsiX, feature::MSIX),
        (Kind::Ims, feature::IMS),
    ]
    .iter()
    .filter(|(_, bit)| features & bit != 0)
    .fold(0, |bits, (kind, _)| bits | 1 << (kind.to_wire() - 1))
}

/// A QUERY body agrees with itself and with the negotiation (spec §4.4).
fn query_fits(info: &DeviceInfo, features: u64, max_batch: u16) -> Result<(), Error> {
    let kinds = info.kinds;
    let checks = [
        (
            kinds.bits() & !negotiated_kinds(features) == 0,
            QueryField::Kinds,
        ),
        (
            kinds.contains(Kind::Msi) || info.msi_max == 0,
            QueryField::MsiMax,
        ),
        (
            kinds.contains(Kind::MsiX) || info.msix_table_size == 0,
            QueryField::MsixTableSize,
        ),
        (
            kinds.contains(Kind::Ims) || info.ims_slots == 0,
            QueryField::ImsSlots,
        ),
        (
            info.available <= u32::from(max_batch),
            QueryField::Available,
        ),
    ];
    for (ok, field) in checks {
        if !ok {
            return Err(Error::QueryMismatch(field));
        }
    }
    if let Some(ext) = &info.ext {
        if ext.msix_free_run > info.msix_table_size {
            return Err(Error::QueryMismatch(QueryField::MsixFreeRun));
        }
        if ext.ims_free_run > info.ims_slots {
            return Err(Error::QueryMismatch(QueryField::ImsFreeRun));
        }
    }
    Ok(())
}

/// Whether `index` appears among the first `position` grants (for unordered replies).
fn seen_before(grants: &GrantSlice<'_>, position: usize, index: u32) -> bool {
    grants
        .iter()
        .take(position)
        .any(|earlier| earlier.index() == index)
}

/// An OK ALLOC grants what the request allows (spec §4.5, §8): a count within
/// `min..=max` (a power of two for MSI, no larger than the block QUERY reported), at
/// distinct indices inside the table, at the indices asked for (`first..` without
/// `ANY_INDEX`, one run with `ANY_CONTIGUOUS`, the block's own `0..n` for MSI), each record
/// parked exactly when the request parked them and carrying the request's PASID.
fn grants_fit(
    alloc: &AllocExpect,
    grants: &GrantSlice<'_>,
    table: Option<u32>,
) -> Result<(), Error> {
    let n = grants.len();
    let msi = alloc.kind == Kind::Msi;
    let in_range = (usize::from(alloc.min)..=usize::from(alloc.max)).contains(&n);
    let msi_fits =
        !msi || (n.is_power_of_two() && table.is_none_or(|size| n as u64 <= u64::from(size)));
    if !in_range || !msi_fits {
        return Err(Error::GrantCount {
            count: n,
            min: alloc.min,
            max: alloc.max,
        });
    }
    // An MSI block's indices are its message numbers; other tables are what QUERY said.
    let bound = if msi {
        Some(n as u64)
    } else {
        table.map(u64::from)
    };
    let lowest = grants.iter().map(|g| g.index()).min().unwrap_or(0);
    // Strictly increasing indices are distinct without a quadratic search.
    let mut increasing = true;
    let mut previous: Option<u32> = None;
    for (position, grant) in grants.iter().enumerate() {
        let index = grant.index();
        let wrong_place = match alloc.index {
            IndexSpec::At(first) => u64::from(index) != u64::from(first) + position as u64,
            IndexSpec::AnyContiguous => u64::from(index) >= u64::from(lowest) + n as u64,
            IndexSpec::Any => false,
        };
        if wrong_place || bound.is_some_and(|b| u64::from(index) >= b) {
            return Err(Error::GrantIndex { position, index });
        }
        increasing &= previous.is_none_or(|p| p < index);
        previous = Some(index);
        if !increasing && seen_before(grants, position, index) {
            return Err(Error::DuplicateGrant { position, index });
        }
        if let GrantSlice::Info(_) = grants {
            if grant.parked() != alloc.parked {
                return Err(Error::GrantMismatch {
                    position,
                    field: GrantField::Parked,
                });
            }
            if grant.pasid() != alloc.pasid {
                return Err(Error::GrantMismatch {
                    position,
                    field: GrantField::Pasid,
                });
            }
        }
    }
    Ok(())
}

/// Whether `index` is one of the `count` indices from `first`.
fn in_run(index: u32, first: u32, count: u16) -> bool {
    index >= first && u64::from(index) < u64::from(first) + u64::from(count)
}

/// A refusal is one the request can get (spec §5.1, §5.4): `detail` and `info` already fit
/// the status (decoding checked that); here the status must fit the operation, and an index,
/// entry or count must be one the request named.
fn refusal_fits(expect: &Expect, context: &Context<'_>, refusal: Refusal) -> Result<(), Error> {
    let opcode = context.opcode;
    let (targets, count) = match *expect {
        Expect::Alloc(a) => (a.targets, a.max),
        Expect::Indices { count, targets, .. } => (targets, count),
        Expect::Query | Expect::Reset => (0, 0),
    };
    let entry_below = |entry: u32, bound: usize| (entry as usize) < bound;
    let plausible = match refusal {
        Refusal::NoSpace { .. } => opcode == Opcode::Alloc,
        Refusal::IndexInUse { index } | Refusal::IndexOutOfRange { index } => {
            let in_use = matches!(refusal, Refusal::IndexInUse { .. });
            match *expect {
                Expect::Alloc(a) => match a.index {
                    IndexSpec::At(first) => in_run(index, first, a.max),
                    // The device chose the indices: only a second MSI block is in use, at 0.
                    IndexSpec::Any | IndexSpec::AnyContiguous => {
                        in_use && a.kind == Kind::Msi && index == 0
                    }
                },
                // FREE and RETARGET get INDEX_OUT_OF_RANGE only for a run past 2^32 - 1,
                // which the driver never sends, and never INDEX_IN_USE.
                _ => false,
            }
        }
        Refusal::NotGranted { index } => match *expect {
            Expect::Indices { first, count, .. } => {
                first.is_none_or(|first| in_run(index, first, count))
            }
            _ => false,
        },
        Refusal::InvalidTarget { field, entry } => {
            matches!(field, Field::TargetVcpu | Field::TargetVector) && entry_below(entry, targets)
        }
        Refusal::BadRequest { field, entry } => match field {
            Field::TargetVcpu | Field::TargetVector | Field::TargetReserved => {
                entry_below(entry, targets)
            }
            Field::IndexList => entry_below(entry, usize::from(count)),
            _ => entry == 0,
        },
        Refusal::Unsupported { field } => {
            matches!(field, Field::Opcode | Field::Kind | Field::Pasid)
        }
        Refusal::BatchTooLarge { max_batch } => max_batch < u32::from(count),
        Refusal::ResponseTooSmall { needed } => needed > context.capacity,
        Refusal::NoDevice | Refusal::DeviceError { .. } => true,
    };
    if plausible {
        Ok(())
    } else {
        Err(Error::ImplausibleRefusal { opcode, refusal })
    }
}
