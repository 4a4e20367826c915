//! `PassthroughDevice`: a device assigned to a guest that fires interrupts from the slots
//! the guest programmed, through the host's interrupt remapping.

use std::sync::atomic::{AtomicU64, Ordering};

use pvirq_host::DeviceSpec;
use pvirq_host::model::{Delivery, ModelHost};

use super::error::PassthroughError;
use super::tables::{DeviceTables, Slot};

/// A pass-through device: a requester ID and interrupt storage in guest memory.
///
/// [`fire`](Self::fire) does what the hardware does when the device raises a slot: reads
/// the slot from memory, stays silent if it is masked, and otherwise sends the slot's
/// message as a write tagged with its requester ID — which the host's remapping unit
/// checks ([`Host::fire`]) before anything reaches a guest.
#[derive(Debug)]
pub struct PassthroughDevice {
    requester_id: u16,
    tables: DeviceTables,
    sent: AtomicU64,
    suppressed: AtomicU64,
}

impl PassthroughDevice {
    /// A device with requester ID `requester_id` and the given tables.
    pub fn new(requester_id: u16, tables: DeviceTables) -> Self {
        Self {
            requester_id,
            tables,
            sent: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// The PCI requester ID the device's writes carry.
    pub fn requester_id(&self) -> u16 {
        self.requester_id
    }

    /// The device's tables; the guest driver programs and masks slots through them.
    pub fn tables(&self) -> &DeviceTables {
        &self.tables
    }

    /// How the VMM describes this device to the host (no multi-MSI).
    pub fn spec(&self) -> DeviceSpec {
        DeviceSpec {
            requester_id: self.requester_id,
            msi_max: 0,
            msix_table_size: u16::try_from(self.tables.msix_entries()).unwrap_or(u16::MAX),
            ims_slots: self.tables.ims_slots(),
        }
    }

    /// Raises `slot`: if it is unmasked, sends its message to `host` as a write from this
    /// device, and returns where it was delivered. A masked slot sends nothing
    /// ([`PassthroughError::Masked`]); a message the host refuses is
    /// [`PassthroughError::Fault`] (the host records it too).
    pub fn fire(&self, host: &ModelHost, slot: Slot) -> Result<Delivery, PassthroughError> {
        let state = self.tables.read(slot)?;
        if state.masked {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return Err(PassthroughError::Masked(slot));
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        host.fire(self.requester_id, state.message)
            .map_err(|fault| PassthroughError::Fault { slot, fault })
    }

    /// Messages the device has sent (delivered or not).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Fires suppressed because the slot was masked.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}
