//! The guest's view of a pass-through device: its BAR (doorbell, MSI-X table, PBA) and its
//! IMS slots in guest RAM. Writing a slot is a plain store; whether it exits depends on the
//! VMM (a trapped MSI-X table exits on every access, an untrapped one and IMS never do).

use pvirq_guest_image_abi::device::{
    CTRL_MASK, DOORBELL, ENTRY_SIZE, IMS_BASE_HI, IMS_BASE_LO, IMS_PASID_ENABLE, IMS_PASID_SHIFT,
    IMS_SLOTS, MSIX_DISABLE, MSIX_ENTRIES, MSIX_PBA, MSIX_TABLE, PLAIN, doorbell,
};
use pvirq_guest_image_abi::layout::{IMS_AREA, IMS_AREA_PER_DEVICE, MAX_DEVICES, device_bar};
use pvirq_proto::{Kind, MsiMessage};

/// The most IMS slots the guest keeps per device (its IMS area).
pub const MAX_IMS: u32 = (IMS_AREA_PER_DEVICE / ENTRY_SIZE) as u32;

/// One slot of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// MSI-X table entry.
    MsiX(u32),
    /// IMS slot.
    Ims(u32),
}

impl Slot {
    /// The slot a grant of `kind` at `index` lives in (none for multi-MSI).
    pub fn of(kind: Kind, index: u32) -> Option<Slot> {
        match kind {
            Kind::MsiX => Some(Slot::MsiX(index)),
            Kind::Ims => Some(Slot::Ims(index)),
            Kind::Msi => None,
        }
    }
}

/// Pass-through device `index` of this VM.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    bar: u64,
    ims_base: u64,
    msix_entries: u32,
    ims_slots: u32,
}

fn read32(addr: u64) -> u32 {
    // SAFETY: callers pass addresses inside a device BAR or the device's IMS area, both
    // identity-mapped and user-accessible.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn write32(addr: u64, value: u32) {
    // SAFETY: as in `read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

impl Device {
    /// Opens device `index`: reads its sizes and tells it where its IMS slots live. `None`
    /// past the layout's devices.
    pub fn open(index: usize) -> Option<Device> {
        if index >= MAX_DEVICES {
            return None;
        }
        let bar = device_bar(index);
        let ims_base = IMS_AREA + index as u64 * IMS_AREA_PER_DEVICE;
        let device = Device {
            bar,
            ims_base,
            msix_entries: read32(bar + MSIX_ENTRIES),
            ims_slots: read32(bar + IMS_SLOTS).min(MAX_IMS),
        };
        if device.ims_slots > 0 {
            // Masked before the device learns where they are.
            for i in 0..device.ims_slots {
                write32(ims_base + u64::from(i) * ENTRY_SIZE + 12, CTRL_MASK);
            }
            write32(bar + IMS_BASE_LO, ims_base as u32);
            write32(bar + IMS_BASE_HI, (ims_base >> 32) as u32);
        }
        Some(device)
    }

    fn entry(&self, slot: Slot) -> Option<u64> {
        match slot {
            Slot::MsiX(i) if i < self.msix_entries => {
                Some(self.bar + MSIX_TABLE + u64::from(i) * ENTRY_SIZE)
            }
            Slot::Ims(i) if i < self.ims_slots => Some(self.ims_base + u64::from(i) * ENTRY_SIZE),
            _ => None,
        }
    }

    /// Writes `message` into `slot` while it stays masked, then unmasks it — the order a
    /// driver uses. `pasid` applies to IMS slots only. False for a slot the device lacks.
    pub fn program(&self, slot: Slot, message: MsiMessage, pasid: Option<u32>) -> bool {
        match self.write_masked(slot, message, pasid) {
            Some((at, ctrl)) => {
                write32(at + 12, ctrl);
                true
            }
            None => false,
        }
    }

    /// Writes `message` into `slot` and leaves it masked: a parked grant, programmed at
    /// once (its message is final) and unmasked when it is activated. `pasid` as in
    /// [`Device::program`].
    pub fn program_masked(&self, slot: Slot, message: MsiMessage, pasid: Option<u32>) -> bool {
        self.write_masked(slot, message, pasid).is_some()
    }

    /// Masks `slot`, then writes `message` into it: the entry's address and its unmasked
    /// control word (with `pasid` for IMS), or `None` for a slot the device lacks.
    fn write_masked(
        &self,
        slot: Slot,
        message: MsiMessage,
        pasid: Option<u32>,
    ) -> Option<(u64, u32)> {
        let at = self.entry(slot)?;
        let ctrl = match (slot, pasid) {
            (Slot::Ims(_), Some(p)) => IMS_PASID_ENABLE | (p << IMS_PASID_SHIFT),
            _ => 0,
        };
        write32(at + 12, ctrl | CTRL_MASK);
        write32(at, message.address as u32);
        write32(at + 4, (message.address >> 32) as u32);
        write32(at + 8, message.data);
        Some((at, ctrl))
    }

    /// Writes `message`'s address and data into `slot`, leaving its control word (mask,
    /// PASID) as it is: the reprogramming of a masked slot.
    pub fn write_message(&self, slot: Slot, message: MsiMessage) -> bool {
        let Some(at) = self.entry(slot) else {
            return false;
        };
        write32(at, message.address as u32);
        write32(at + 4, (message.address >> 32) as u32);
        write32(at + 8, message.data);
        true
    }

    /// Masks `slot`; whether it was masked already (`None` for a slot the device lacks).
    pub fn mask(&self, slot: Slot) -> Option<bool> {
        let at = self.entry(slot)?;
        let ctrl = read32(at + 12);
        if ctrl & CTRL_MASK == 0 {
            write32(at + 12, ctrl | CTRL_MASK);
        }
        Some(ctrl & CTRL_MASK != 0)
    }

    /// Sets or clears `slot`'s mask bit, keeping the rest of its control word.
    pub fn set_masked(&self, slot: Slot, masked: bool) -> bool {
        let Some(at) = self.entry(slot) else {
            return false;
        };
        let ctrl = read32(at + 12);
        write32(
            at + 12,
            if masked {
                ctrl | CTRL_MASK
            } else {
                ctrl & !CTRL_MASK
            },
        );
        true
    }

    /// Asks the device to raise `slot`.
    pub fn ring(&self, slot: Slot) {
        let value = match slot {
            Slot::MsiX(i) => doorbell(false, i),
            Slot::Ims(i) => doorbell(true, i),
        };
        write32(self.bar + DOORBELL, value);
    }

    /// Asks the VMM to write its plain irqfd (the benchmark's baseline).
    pub fn ring_plain(&self) {
        write32(self.bar + PLAIN, 1);
    }

    /// The PBA bit of MSI-X entry `index`.
    pub fn pending(&self, index: u32) -> bool {
        if index >= self.msix_entries {
            return false;
        }
        let word = read32(self.bar + MSIX_PBA + u64::from(index / 32) * 4);
        word & (1 << (index % 32)) != 0
    }

    /// Masks every MSI-X entry at once (MSI-X disable).
    pub fn disable_msix(&self) {
        write32(self.bar + MSIX_DISABLE, 1);
    }
}
