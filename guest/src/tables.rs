//! The table sizes QUERY reported, remembered per device handle so that a reply or an
//! event naming an index can be checked against the table it must lie in (spec §8: grants
//! "inside the table").
//!
//! A bounded cache: no allocator, and a kernel driver queries the devices it drives, few at
//! a time. An assigned device's tables do not change while its handle lives (handles are
//! never reused, spec §2.4), so an entry stays true until the device is removed (the
//! driver forgets it on DEVICE_REMOVED) or the driver is dropped; a device that was not queried, or fell out of the cache, is simply not
//! checked against its table.

use pvirq_proto::{DeviceInfo, Kind};

/// Devices whose table sizes are remembered at once.
pub(crate) const TABLE_CACHE: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    device: u32,
    /// Index-space sizes by kind: the largest MSI block, the MSI-X table, the IMS slots.
    sizes: [u32; 3],
}

/// Table sizes of the most recently queried devices.
#[derive(Clone, Debug, Default)]
pub(crate) struct TableCache {
    entries: [Option<Entry>; TABLE_CACHE],
    /// The slot the next new device takes when none is empty (round robin).
    next: usize,
}

const fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Msi => 0,
        Kind::MsiX => 1,
        Kind::Ims => 2,
    }
}

impl TableCache {
    /// Remembers what QUERY said of `device`.
    pub(crate) fn learn(&mut self, device: u32, info: &DeviceInfo) {
        let entry = Entry {
            device,
            sizes: [
                u32::from(info.msi_max),
                u32::from(info.msix_table_size),
                info.ims_slots,
            ],
        };
        let empty = || self.entries.iter().position(Option::is_none);
        let at = match self.position(device).or_else(empty) {
            Some(at) => at,
            None => {
                let at = self.next % TABLE_CACHE;
                self.next = (at + 1) % TABLE_CACHE;
                at
            }
        };
        if let Some(e) = self.entries.get_mut(at) {
            *e = Some(entry);
        }
    }

    /// Forgets `device` (removed).
    pub(crate) fn forget(&mut self, device: u32) {
        if let Some(e) = self
            .position(device)
            .and_then(|at| self.entries.get_mut(at))
        {
            *e = None;
        }
    }

    fn position(&self, device: u32) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.is_some_and(|e| e.device == device))
    }

    /// The size of `kind`'s index space on `device`, if QUERY said it: indices `0..size`
    /// exist (for MSI, the largest block).
    pub(crate) fn size(&self, device: u32, kind: Kind) -> Option<u32> {
        let entry = self.entries.get(self.position(device)?)?.as_ref()?;
        entry.sizes.get(slot(kind)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(msix: u16) -> DeviceInfo {
        DeviceInfo {
            msi_max: 8,
            msix_table_size: msix,
            ims_slots: 1000,
            ..DeviceInfo::default()
        }
    }

    #[test]
    fn sizes_are_remembered_per_device_and_the_oldest_makes_room() {
        let mut cache = TableCache::default();
        assert_eq!(cache.size(0, Kind::MsiX), None);
        cache.learn(0, &info(64));
        cache.learn(0, &info(32));
        assert_eq!(cache.size(0, Kind::MsiX), Some(32), "re-learned in place");
        assert_eq!(cache.size(0, Kind::Msi), Some(8));
        assert_eq!(cache.size(0, Kind::Ims), Some(1000));
        for device in 1..TABLE_CACHE as u32 {
            cache.learn(device, &info(device as u16));
        }
        assert_eq!(cache.size(0, Kind::MsiX), Some(32), "still room for all");
        cache.learn(99, &info(7));
        assert_eq!(cache.size(0, Kind::MsiX), None, "the first one made room");
        assert_eq!(cache.size(99, Kind::MsiX), Some(7));
        cache.forget(99);
        assert_eq!(cache.size(99, Kind::MsiX), None);
        assert_eq!(cache.size(5, Kind::MsiX), Some(5));
    }
}
