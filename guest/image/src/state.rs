//! What the guest remembers of its grants: per device and slot, the message it programmed
//! and where it expects the interrupt. This — not the host's records — is what a fire step
//! checks deliveries against.

use crate::devices::{MAX_IMS, Slot};
use pvirq_guest_image_abi::device::MSIX_MAX;
use pvirq_proto::MsiMessage;

/// The most devices the guest keeps records for.
pub const MAX_GUEST_DEVICES: usize = 8;

/// A slot's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Held {
    /// Never granted, or forgotten.
    #[default]
    None,
    /// Granted and programmed.
    Live,
    /// Freed, or revoked by the host; the message it had is kept (a careless guest could
    /// still fire it).
    Freed,
}

/// One slot's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The slot's state.
    pub held: Held,
    /// The message programmed.
    pub message: MsiMessage,
    /// The target as the request named it (vCPU index, or APIC ID with `APIC_ID`).
    pub vcpu: u32,
    /// The APIC ID the interrupt should arrive on, while [`Record::active`]
    /// ([`crate::topology::NO_APIC`] for a target the guest cannot place).
    pub apic: u8,
    /// Its vector.
    pub vector: u8,
    /// Granted without a target, or parked again: programmed, kept masked, not fired.
    pub parked: bool,
}

impl Record {
    /// A slot never granted. All zeros, so that the records live in the image's
    /// zero-initialised data rather than its loaded part.
    pub const EMPTY: Record = Record {
        held: Held::None,
        message: MsiMessage {
            address: 0,
            data: 0,
        },
        vcpu: 0,
        apic: 0,
        vector: 0,
        parked: false,
    };

    /// Whether the guest expects interrupts from the slot: held, with a target.
    pub fn active(&self) -> bool {
        self.held == Held::Live && !self.parked
    }
}

impl Default for Record {
    fn default() -> Self {
        Record::EMPTY
    }
}

/// The records of one device.
pub struct DeviceRecords {
    msix: [Record; MSIX_MAX as usize],
    ims: [Record; MAX_IMS as usize],
}

impl DeviceRecords {
    const EMPTY: DeviceRecords = DeviceRecords {
        msix: [Record::EMPTY; MSIX_MAX as usize],
        ims: [Record::EMPTY; MAX_IMS as usize],
    };

    /// The record of `slot`, if the guest keeps one for it.
    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut Record> {
        match slot {
            Slot::MsiX(i) => self.msix.get_mut(i as usize),
            Slot::Ims(i) => self.ims.get_mut(i as usize),
        }
    }

    /// Every slot with its record.
    pub fn iter(&self) -> impl Iterator<Item = (Slot, &Record)> {
        let msix = self.msix.iter().enumerate();
        let ims = self.ims.iter().enumerate();
        msix.map(|(i, r)| (Slot::MsiX(i as u32), r))
            .chain(ims.map(|(i, r)| (Slot::Ims(i as u32), r)))
    }

    /// Forgets every slot (the device was removed: its grants are gone with it).
    pub fn clear(&mut self) {
        for r in self.msix.iter_mut().chain(self.ims.iter_mut()) {
            *r = Record::EMPTY;
        }
    }

    /// Marks every live slot freed (a device RESET or virtio reset).
    pub fn retire_all(&mut self) {
        for r in self.msix.iter_mut().chain(self.ims.iter_mut()) {
            if r.held == Held::Live {
                r.held = Held::Freed;
            }
        }
    }
}

static mut RECORDS: [DeviceRecords; MAX_GUEST_DEVICES] =
    [const { DeviceRecords::EMPTY }; MAX_GUEST_DEVICES];

/// The records of device `index`.
///
/// Only the bootstrap vCPU's CPL-3 command loop calls this, one command at a time, and no
/// caller keeps the reference across a call: there is never a second live reference.
pub fn records(index: usize) -> Option<&'static mut DeviceRecords> {
    // SAFETY: see above: single-threaded, non-reentrant use (the interrupt handler is
    // assembly that never touches these records).
    let all = unsafe { &mut *core::ptr::addr_of_mut!(RECORDS) };
    all.get_mut(index)
}
