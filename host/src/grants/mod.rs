//! Grant records: what the core remembers about each granted vector, per device and kind.
//!
//! Records are kept in a [`PagedMap`] by the grant's table index (no hashing, no per-grant
//! key). What the host holds for a grant is the backend's; the route is the
//! route layer's; the record says which route, where it delivers, and what the guest was
//! given.

use crate::backend::GuestDest;
use crate::bitmap::IndexBitmap;
use crate::paged::PagedMap;
use crate::routes::RouteId;
use pvirq_proto::{GrantMode, Kind, MsiMessage};

/// One granted vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantRecord {
    /// Its guest route.
    pub route: RouteId,
    /// Where it delivers; `None` while parked.
    pub dest: Option<GuestDest>,
    /// The message the guest was given.
    pub message: MsiMessage,
    /// How the host delivers it.
    pub mode: GrantMode,
    /// The PASID it was granted for (IMS).
    pub pasid: Option<u32>,
}

/// Grant records by table index.
pub(crate) type Records = PagedMap<GrantRecord>;

/// One kind's table of a device: which indices are granted, and their records.
#[derive(Debug)]
pub(crate) struct KindTable {
    /// Free (not granted) indices.
    pub(crate) free: IndexBitmap,
    pub(crate) records: Records,
}

impl KindTable {
    fn new(size: u32) -> Self {
        KindTable {
            // Device slots are taken one index at a time (an MSI block is always 0..n):
            // no aligned-block summaries to keep up.
            free: IndexBitmap::singles(size),
            records: Records::default(),
        }
    }

    pub(crate) fn size(&self) -> u32 {
        self.free.len()
    }

    pub(crate) fn granted(&self) -> u32 {
        self.records.len() as u32
    }

    /// The `n` lowest free indices (or all of them, if fewer are free).
    pub(crate) fn lowest_free(&self, n: u32) -> Vec<u32> {
        let mut out = Vec::with_capacity(n.min(self.free.free_count()) as usize);
        out.extend(self.free.free_indices().take(n as usize));
        out
    }

    /// The lowest run of `n` consecutive free indices (ANY_CONTIGUOUS, spec §4.5), or none
    /// if no run is that long.
    pub(crate) fn lowest_free_run(&self, n: u32) -> Vec<u32> {
        match self.free.first_free_run(n) {
            Some(first) => (first..first.saturating_add(n)).collect(),
            None => Vec::new(),
        }
    }

    /// The longest run of consecutive free indices (QUERY's free runs, spec §4.4).
    pub(crate) fn longest_free_run(&self) -> u32 {
        self.free.longest_free_run()
    }

    pub(crate) fn insert(&mut self, index: u32, record: GrantRecord) {
        self.free.take(index);
        self.records.insert(index, record);
    }

    /// Points the grant at `index` at a new destination (a committed RETARGET).
    pub(crate) fn set_dest(&mut self, index: u32, dest: Option<GuestDest>) {
        if let Some(record) = self.records.get_mut(&index) {
            record.dest = dest;
        }
    }

    pub(crate) fn remove(&mut self, index: u32) -> Option<GrantRecord> {
        let record = self.records.remove(&index)?;
        self.free.put(index);
        Some(record)
    }
}

/// A device's grants, one table per kind. The MSI table's size is the device's largest
/// block; a granted block always occupies indices `0..n`.
#[derive(Debug)]
pub(crate) struct DeviceGrants {
    pub(crate) msi: KindTable,
    pub(crate) msix: KindTable,
    pub(crate) ims: KindTable,
}

impl DeviceGrants {
    /// Tables of the given sizes: MSI (the largest block), MSI-X, IMS.
    pub(crate) fn new([msi, msix, ims]: [u32; 3]) -> Self {
        DeviceGrants {
            msi: KindTable::new(msi),
            msix: KindTable::new(msix),
            ims: KindTable::new(ims),
        }
    }

    pub(crate) fn table(&self, kind: Kind) -> &KindTable {
        match kind {
            Kind::Msi => &self.msi,
            Kind::MsiX => &self.msix,
            Kind::Ims => &self.ims,
        }
    }

    pub(crate) fn table_mut(&mut self, kind: Kind) -> &mut KindTable {
        match kind {
            Kind::Msi => &mut self.msi,
            Kind::MsiX => &mut self.msix,
            Kind::Ims => &mut self.ims,
        }
    }

    pub(crate) fn granted(&self) -> u32 {
        self.msi.granted() + self.msix.granted() + self.ims.granted()
    }

    /// Every grant of the device, as `(kind, index, record)`, in index order per kind.
    pub(crate) fn all(&self) -> Vec<(Kind, u32, GrantRecord)> {
        let mut out = Vec::with_capacity(self.granted() as usize);
        for kind in Kind::ALL {
            out.extend(
                self.table(*kind)
                    .records
                    .iter()
                    .map(|(i, r)| (*kind, i, *r)),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(route: u32) -> GrantRecord {
        GrantRecord {
            route,
            dest: Some(GuestDest {
                apic_id: route,
                vector: 0x30,
            }),
            message: MsiMessage {
                address: 0xFEE0_0000,
                data: route,
            },
            mode: GrantMode::Remapped,
            pasid: None,
        }
    }

    #[test]
    fn grant_records_stay_small() {
        assert!(std::mem::size_of::<GrantRecord>() <= 48);
    }

    #[test]
    fn lowest_free_leaves_the_table_unchanged() {
        let mut t = KindTable::new(8);
        let r = r(0);
        t.insert(1, r);
        assert_eq!(t.lowest_free(3), [0, 2, 3]);
        assert_eq!(t.free.free_count(), 7);
        assert_eq!(t.lowest_free(9).len(), 7);
        assert_eq!(t.lowest_free_run(2), [2, 3]);
        assert_eq!(t.lowest_free_run(6), [2, 3, 4, 5, 6, 7]);
        assert!(t.lowest_free_run(7).is_empty());
        assert_eq!(t.longest_free_run(), 6);
        assert_eq!(t.remove(1), Some(r));
        assert_eq!(t.remove(1), None);
    }
}
