//! Which table indices an ALLOC takes (spec §4.5, *Indices*): the index checks of §5.3
//! step 9, what the device's table can supply in the shape asked for, and the indices
//! chosen once the count is known.

use super::sizing::Slots;
use super::table_size;
use crate::grants::KindTable;
use crate::state::DeviceState;
use pvirq_proto::{IndexSpec, Kind, Refusal};

/// What `dev`'s `kind` table can supply for an ALLOC of at most `max` vectors at
/// `index`, or the index refusal (INDEX_OUT_OF_RANGE, INDEX_IN_USE) for named indices.
///
/// - MSI: one block per device, `0..n` (a second one is INDEX_IN_USE at 0); contiguous by
///   nature, so ANY_CONTIGUOUS changes nothing.
/// - Named indices: every one of `first..first + max` inside the table and free, even if
///   fewer are granted.
/// - ANY_INDEX: the free slots. ANY_CONTIGUOUS: the longest free run, with the free
///   slots beside it so that a shortfall can be told apart as fragmentation.
pub(super) fn slots(
    dev: &DeviceState,
    kind: Kind,
    index: IndexSpec,
    max: u32,
) -> Result<Slots, Refusal> {
    let table = dev.grants.table(kind);
    if kind == Kind::Msi {
        if table.granted() > 0 {
            return Err(Refusal::IndexInUse { index: 0 });
        }
        return Ok(Slots::exactly(table_size(dev, Kind::Msi)));
    }
    match index {
        IndexSpec::At(first) => {
            let size = table.size();
            if u64::from(first) + u64::from(max) > u64::from(size) {
                return Err(Refusal::IndexOutOfRange {
                    index: first.max(size),
                });
            }
            if let Some(index) = (first..first + max).find(|i| !table.free.is_free(*i)) {
                return Err(Refusal::IndexInUse { index });
            }
            Ok(Slots::exactly(max))
        }
        IndexSpec::Any => Ok(Slots::exactly(table.free.free_count())),
        IndexSpec::AnyContiguous => Ok(Slots {
            usable: table.longest_free_run(),
            free: table.free.free_count(),
        }),
    }
}

/// The `n` indices an ALLOC of `kind` at `index` takes from `table` (fewer only if the
/// table cannot supply them, which sizing has ruled out): the block `0..n` for MSI, the
/// run named, the lowest free ones, or the lowest run of `n` free ones.
pub(super) fn choose(table: &KindTable, kind: Kind, index: IndexSpec, n: u32) -> Vec<u32> {
    if kind == Kind::Msi {
        return (0..n).collect();
    }
    match index {
        IndexSpec::At(first) => (first..first.saturating_add(n)).collect(),
        IndexSpec::Any => table.lowest_free(n),
        IndexSpec::AnyContiguous => table.lowest_free_run(n),
    }
}
