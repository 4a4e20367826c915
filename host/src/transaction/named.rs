//! The grants a FREE or RETARGET names (spec §4.6, §4.7, §5.4): a run or *(extension,
//! bit 12)* a list of indices, each of which must be granted to the device with the
//! kind, looked at in request order; and FREE's rule that an MSI block goes whole.

use crate::grants::{GrantRecord, KindTable};
use pvirq_proto::{Indices, Refusal};

/// The record of every index `indices` names, in request order, or NOT_GRANTED at the
/// first that is not granted in `table` (inside the table or not).
pub(super) fn named_grants(
    table: &KindTable,
    indices: &Indices<'_>,
) -> Result<Vec<(u32, GrantRecord)>, Refusal> {
    indices
        .iter()
        .map(|i| {
            table
                .records
                .get(&i)
                .map(|r| (i, *r))
                .ok_or(Refusal::NotGranted { index: i })
        })
        .collect()
}

/// FREE of MSI vectors must name the whole block `0..size` (spec §4.6). A run that is
/// shorter or does not start at 0 is NOT_GRANTED at its first index, a longer one at the
/// block size (the first index past the block). A list is NOT_GRANTED at its first entry
/// that breaks `0, 1, …, size − 1`, or at its first entry when it stops short; with no
/// block held, at its first entry.
pub(super) fn whole_msi_block(table: &KindTable, indices: &Indices<'_>) -> Result<(), Refusal> {
    let size = table.granted();
    let first = indices.iter().next().unwrap_or(0);
    match indices {
        Indices::Run(range) => {
            let count = u32::from(range.count);
            if size == 0 || range.first != 0 || count < size {
                return Err(Refusal::NotGranted { index: range.first });
            }
            if count > size {
                return Err(Refusal::NotGranted { index: size });
            }
        }
        Indices::List { indices: list, .. } => {
            if size == 0 {
                return Err(Refusal::NotGranted { index: first });
            }
            if let Some(index) = list
                .iter()
                .zip(0u32..)
                .find(|(index, expected)| index != expected || *expected >= size)
                .map(|(index, _)| index)
            {
                return Err(Refusal::NotGranted { index });
            }
            if (list.len() as u64) < u64::from(size) {
                return Err(Refusal::NotGranted { index: first });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::GuestDest;
    use crate::grants::DeviceGrants;
    use pvirq_proto::{GrantMode, IndexList, IndexRange, Kind, Le32, MsiMessage};

    fn record(route: u32) -> GrantRecord {
        GrantRecord {
            route,
            dest: Some(GuestDest {
                apic_id: 0,
                vector: 0x30,
            }),
            message: MsiMessage::default(),
            mode: GrantMode::Remapped,
            pasid: None,
        }
    }

    /// A device whose MSI block is `0..4` and whose MSI-X entries 1, 5 and 6 are granted.
    fn grants() -> DeviceGrants {
        let mut g = DeviceGrants::new([8, 16, 0]);
        for i in 0..4 {
            g.table_mut(Kind::Msi).insert(i, record(i));
        }
        for i in [1, 5, 6] {
            g.table_mut(Kind::MsiX).insert(i, record(10 + i));
        }
        g
    }

    fn list(kind: Kind, entries: &[Le32]) -> Indices<'_> {
        Indices::List {
            kind,
            indices: IndexList::new(entries).unwrap(),
        }
    }

    fn le(v: &[u32]) -> Vec<Le32> {
        v.iter().map(|i| Le32::new(*i)).collect()
    }

    #[test]
    fn lists_name_their_first_ungranted_entry_in_list_order() {
        let g = grants();
        let t = g.table(Kind::MsiX);
        let ok = le(&[1, 6]);
        let got = named_grants(t, &list(Kind::MsiX, &ok)).unwrap();
        assert_eq!(
            got.iter().map(|(i, r)| (*i, r.route)).collect::<Vec<_>>(),
            [(1, 11), (6, 16)]
        );
        let bad = le(&[1, 2, 3, 5, 9000]);
        assert_eq!(
            named_grants(t, &list(Kind::MsiX, &bad)),
            Err(Refusal::NotGranted { index: 2 })
        );
        let run: Indices = IndexRange {
            kind: Kind::MsiX,
            first: 5,
            count: 3,
        }
        .into();
        assert_eq!(named_grants(t, &run), Err(Refusal::NotGranted { index: 7 }));
    }

    #[test]
    fn an_msi_block_is_freed_whole_by_run_or_list() {
        let g = grants();
        let t = g.table(Kind::Msi);
        let run = |first, count| {
            Indices::Run(IndexRange {
                kind: Kind::Msi,
                first,
                count,
            })
        };
        assert_eq!(whole_msi_block(t, &run(0, 4)), Ok(()));
        assert_eq!(
            whole_msi_block(t, &run(0, 2)),
            Err(Refusal::NotGranted { index: 0 })
        );
        assert_eq!(
            whole_msi_block(t, &run(1, 4)),
            Err(Refusal::NotGranted { index: 1 })
        );
        assert_eq!(
            whole_msi_block(t, &run(0, 8)),
            Err(Refusal::NotGranted { index: 4 })
        );
        let whole = le(&[0, 1, 2, 3]);
        assert_eq!(whole_msi_block(t, &list(Kind::Msi, &whole)), Ok(()));
        let gap = le(&[0, 1, 3]);
        assert_eq!(
            whole_msi_block(t, &list(Kind::Msi, &gap)),
            Err(Refusal::NotGranted { index: 3 })
        );
        let long = le(&[0, 1, 2, 3, 4]);
        assert_eq!(
            whole_msi_block(t, &list(Kind::Msi, &long)),
            Err(Refusal::NotGranted { index: 4 })
        );
        let short = le(&[0, 1]);
        assert_eq!(
            whole_msi_block(t, &list(Kind::Msi, &short)),
            Err(Refusal::NotGranted { index: 0 })
        );
        let none = DeviceGrants::new([8, 0, 0]);
        let late = le(&[2, 3]);
        assert_eq!(
            whole_msi_block(none.table(Kind::Msi), &list(Kind::Msi, &late)),
            Err(Refusal::NotGranted { index: 2 })
        );
    }
}
