//! Grant records: what the host remembers about each granted vector, per device and kind.
//!
//! A record is 12 bytes (plus the map's key and control byte); the IRTE, host vector and
//! route it names are the layers' own state.

use crate::layers::{HostVector, IndexBitmap, RouteId};
use crate::vm::DeviceSpec;
use pvirq_proto::Kind;
use std::collections::HashMap;

/// One granted vector's host state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantRecord {
    /// Host CPU of its host vector.
    pub cpu: u32,
    /// Its guest route.
    pub route: RouteId,
    /// Its IRTE on the device's unit.
    pub irte: u16,
    /// Its host vector on `cpu`.
    pub vector: u8,
}

impl GrantRecord {
    /// The host vector.
    pub fn host_vector(&self) -> HostVector {
        HostVector {
            cpu: self.cpu,
            vector: self.vector,
        }
    }
}

/// One kind's table of a device: which indices are granted, and their records.
#[derive(Debug)]
pub(crate) struct KindTable {
    /// Free (not granted) indices.
    pub(crate) free: IndexBitmap,
    pub(crate) records: HashMap<u32, GrantRecord>,
}

impl KindTable {
    fn new(size: u32) -> Self {
        KindTable {
            free: IndexBitmap::new(size),
            records: HashMap::new(),
        }
    }

    pub(crate) fn size(&self) -> u32 {
        self.free.len()
    }

    pub(crate) fn granted(&self) -> u32 {
        self.records.len() as u32
    }

    /// The `n` lowest free indices (the table is left as it was).
    pub(crate) fn lowest_free(&mut self, n: u32) -> Vec<u32> {
        let mut out = Vec::with_capacity(n as usize);
        while out.len() < n as usize {
            match self.free.first_free() {
                Some(i) => {
                    self.free.take(i);
                    out.push(i);
                }
                None => break,
            }
        }
        for i in &out {
            self.free.put(*i);
        }
        out
    }

    pub(crate) fn insert(&mut self, index: u32, record: GrantRecord) {
        self.free.take(index);
        self.records.insert(index, record);
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
    pub(crate) spec: DeviceSpec,
    pub(crate) msi: KindTable,
    pub(crate) msix: KindTable,
    pub(crate) ims: KindTable,
}

impl DeviceGrants {
    pub(crate) fn new(spec: DeviceSpec) -> Self {
        DeviceGrants {
            msi: KindTable::new(u32::from(spec.msi_max)),
            msix: KindTable::new(u32::from(spec.msix_table_size)),
            ims: KindTable::new(spec.ims_slots),
            spec,
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
            let mut grants: Vec<_> = self
                .table(*kind)
                .records
                .iter()
                .map(|(i, r)| (*kind, *i, *r))
                .collect();
            grants.sort_by_key(|(_, i, _)| *i);
            out.extend(grants);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_records_are_compact() {
        assert_eq!(std::mem::size_of::<GrantRecord>(), 12);
    }

    #[test]
    fn lowest_free_leaves_the_table_unchanged() {
        let mut t = KindTable::new(8);
        let r = GrantRecord {
            cpu: 0,
            route: 0,
            irte: 0,
            vector: 0x20,
        };
        t.insert(1, r);
        assert_eq!(t.lowest_free(3), [0, 2, 3]);
        assert_eq!(t.free.free_count(), 7);
        assert_eq!(t.lowest_free(9).len(), 7);
        assert_eq!(t.remove(1), Some(r));
        assert_eq!(t.remove(1), None);
    }
}
