//! The VM's pass-through BAR windows: one per device slot of the layout, each on the MMIO
//! bus from the start and holding the device plugged there, or none. A device hot-added
//! while the VM runs is plugged into its window (the bus itself cannot change once the
//! vCPUs run); a removed one is unplugged, and its window then reads all-ones like an empty
//! slot.

use super::bar::{BarSnapshot, PassthroughBar};
use std::sync::{Arc, PoisonError, RwLock};
use vm_device::DeviceMmio;
use vm_device::bus::{MmioAddress, MmioAddressOffset};

/// The windows.
#[derive(Debug, Default)]
pub struct BarSlots {
    slots: Vec<RwLock<Option<Arc<PassthroughBar>>>>,
}

impl BarSlots {
    /// `count` empty windows.
    pub fn new(count: usize) -> Self {
        BarSlots {
            slots: (0..count).map(|_| RwLock::new(None)).collect(),
        }
    }

    /// The device in window `index`.
    pub fn get(&self, index: usize) -> Option<Arc<PassthroughBar>> {
        let slot = self.slots.get(index)?;
        slot.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Plugs `bar` into window `index`; false if there is no such window or it is taken.
    pub fn plug(&self, index: usize, bar: Arc<PassthroughBar>) -> bool {
        let Some(slot) = self.slots.get(index) else {
            return false;
        };
        let mut slot = slot.write().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return false;
        }
        *slot = Some(bar);
        true
    }

    /// Unplugs the device of window `index`.
    pub fn unplug(&self, index: usize) -> Option<Arc<PassthroughBar>> {
        let slot = self.slots.get(index)?;
        slot.write().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Every device plugged in, in window order.
    pub fn plugged(&self) -> impl Iterator<Item = Arc<PassthroughBar>> + '_ {
        (0..self.slots.len()).filter_map(|i| self.get(i))
    }

    /// Every plugged device's counters added up.
    pub fn total(&self) -> BarSnapshot {
        self.plugged().fold(BarSnapshot::default(), |t, b| {
            let c = b.counters();
            BarSnapshot {
                rung: t.rung + c.rung,
                delivered: t.delivered + c.delivered,
                blocked: t.blocked + c.blocked,
                held_pending: t.held_pending + c.held_pending,
                sent_pending: t.sent_pending + c.sent_pending,
                commits: t.commits + c.commits,
            }
        })
    }
}

/// Window `index` on the bus.
pub struct BarWindow {
    slots: Arc<BarSlots>,
    index: usize,
}

impl BarWindow {
    /// Window `index` of `slots`.
    pub fn new(slots: Arc<BarSlots>, index: usize) -> Self {
        BarWindow { slots, index }
    }
}

impl DeviceMmio for BarWindow {
    fn mmio_read(&self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        match self.slots.get(self.index) {
            Some(bar) => bar.mmio_read(base, offset, data),
            None => data.fill(0xFF),
        }
    }

    fn mmio_write(&self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        if let Some(bar) = self.slots.get(self.index) {
            bar.mmio_write(base, offset, data);
        }
    }
}
