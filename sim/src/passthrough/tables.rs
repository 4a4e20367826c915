//! `DeviceTables`: a device's MSI-X table and IMS slots, stored in guest memory, as both the
//! guest driver (writes) and the device (reads) reach them.

use pvirq_proto::MsiMessage;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::entry::{
    CTRL_MASK, CTRL_OFFSET, ENTRY_SIZE, MAX_PASID, SlotState, decode_ims, decode_msix, encode,
    ims_ctrl,
};
use super::error::PassthroughError;
use super::slot::Slot;

/// Where one table lives: `entries` consecutive 16-byte entries from `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRegion {
    /// Guest-physical address of entry 0.
    pub base: GuestAddress,
    /// Number of entries.
    pub entries: u32,
}

impl TableRegion {
    fn len(&self) -> u64 {
        u64::from(self.entries) * ENTRY_SIZE
    }

    fn overlaps(&self, other: &TableRegion) -> bool {
        let (a, b) = (self.base.0, other.base.0);
        a < b.saturating_add(other.len()) && b < a.saturating_add(self.len())
    }
}

/// A device's interrupt storage in guest memory. Cloning shares the memory.
#[derive(Clone, Debug)]
pub struct DeviceTables {
    mem: GuestMemoryMmap,
    msix: Option<TableRegion>,
    ims: Option<TableRegion>,
}

impl DeviceTables {
    /// Tables at the given regions of `mem`, every entry reset to masked (as a device's
    /// MSI-X table is at reset). Each region must lie in `mem`; they must not overlap.
    pub fn new(
        mem: GuestMemoryMmap,
        msix: Option<TableRegion>,
        ims: Option<TableRegion>,
    ) -> Result<Self, PassthroughError> {
        for region in msix.iter().chain(&ims) {
            let fits = usize::try_from(region.len())
                .is_ok_and(|len| len > 0 && mem.check_range(region.base, len));
            if !fits {
                return Err(PassthroughError::TableOutsideMemory {
                    base: region.base.0,
                    entries: region.entries,
                });
            }
        }
        if let (Some(a), Some(b)) = (&msix, &ims)
            && a.overlaps(b)
        {
            return Err(PassthroughError::TablesOverlap);
        }
        let tables = Self { mem, msix, ims };
        let slots = msix
            .iter()
            .flat_map(|r| (0..r.entries).map(Slot::MsiX))
            .chain(ims.iter().flat_map(|r| (0..r.entries).map(Slot::Ims)));
        for slot in slots {
            tables.write(slot, 0, &encode(MsiMessage::default(), CTRL_MASK))?;
        }
        Ok(tables)
    }

    /// The memory the tables live in.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The MSI-X table's size (0 without one).
    pub fn msix_entries(&self) -> u32 {
        self.msix.map_or(0, |r| r.entries)
    }

    /// The number of IMS slots (0 without them).
    pub fn ims_slots(&self) -> u32 {
        self.ims.map_or(0, |r| r.entries)
    }

    /// Guest-physical address of `slot`'s entry.
    pub fn address(&self, slot: Slot) -> Result<GuestAddress, PassthroughError> {
        let (region, index) = match slot {
            Slot::MsiX(n) => (self.msix, n),
            Slot::Ims(n) => (self.ims, n),
        };
        region
            .filter(|r| index < r.entries)
            .map(|r| GuestAddress(r.base.0 + u64::from(index) * ENTRY_SIZE))
            .ok_or(PassthroughError::NoSuchSlot(slot))
    }

    fn write(&self, slot: Slot, offset: u64, bytes: &[u8]) -> Result<(), PassthroughError> {
        let addr = self.address(slot)?;
        self.mem
            .write_slice(bytes, GuestAddress(addr.0 + offset))
            .map_err(PassthroughError::Memory)
    }

    /// The entry's 16 bytes as they are in memory.
    pub fn raw(&self, slot: Slot) -> Result<[u8; ENTRY_SIZE as usize], PassthroughError> {
        let mut raw = [0; ENTRY_SIZE as usize];
        self.mem
            .read_slice(&mut raw, self.address(slot)?)
            .map_err(PassthroughError::Memory)?;
        Ok(raw)
    }

    /// What `slot` holds now.
    pub fn read(&self, slot: Slot) -> Result<SlotState, PassthroughError> {
        let raw = self.raw(slot)?;
        Ok(match slot {
            Slot::MsiX(_) => decode_msix(&raw),
            Slot::Ims(_) => decode_ims(&raw),
        })
    }

    /// The guest driver's side: writes `message` into `slot` while it stays masked, then
    /// unmasks it — two writes, as a driver does it. `pasid` is for IMS slots only.
    pub fn program(
        &self,
        slot: Slot,
        message: MsiMessage,
        pasid: Option<u32>,
    ) -> Result<(), PassthroughError> {
        let ctrl = control(slot, pasid)?;
        self.write(slot, 0, &encode(message, ctrl | CTRL_MASK))?;
        self.write(slot, CTRL_OFFSET, &ctrl.to_le_bytes())
    }

    /// The guest driver's side: writes `message` (and `pasid`, IMS only) into `slot` and
    /// leaves it masked, as a driver programs a parked grant before it is activated.
    pub fn program_masked(
        &self,
        slot: Slot,
        message: MsiMessage,
        pasid: Option<u32>,
    ) -> Result<(), PassthroughError> {
        let ctrl = control(slot, pasid)?;
        self.write(slot, 0, &encode(message, ctrl | CTRL_MASK))
    }

    /// The guest driver's side: replaces `slot`'s message (address and data), leaving its
    /// control word — mask bit, PASID — as it is: the middle step of a reprogram (mask,
    /// write, unmask).
    pub fn write_message(&self, slot: Slot, message: MsiMessage) -> Result<(), PassthroughError> {
        let raw = self.raw(slot)?;
        let ctrl = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
        self.write(slot, 0, &encode(message, ctrl))
    }

    /// The guest driver's side: clears `slot`'s mask bit, leaving the rest in place. (A
    /// device holding a pending interrupt for it sends it when it next re-reads its pending
    /// slots: [`PassthroughDevice::poll_pending`](super::PassthroughDevice::poll_pending).)
    pub fn unmask(&self, slot: Slot) -> Result<(), PassthroughError> {
        let raw = self.raw(slot)?;
        let ctrl = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]) & !CTRL_MASK;
        self.write(slot, CTRL_OFFSET, &ctrl.to_le_bytes())
    }

    /// The guest driver's side: masks `slot`, leaving its message in place.
    pub fn mask(&self, slot: Slot) -> Result<(), PassthroughError> {
        let raw = self.raw(slot)?;
        let ctrl = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]) | CTRL_MASK;
        self.write(slot, CTRL_OFFSET, &ctrl.to_le_bytes())
    }
}

/// The unmasked control word of `slot` carrying `pasid` (IMS only, 20 bits).
fn control(slot: Slot, pasid: Option<u32>) -> Result<u32, PassthroughError> {
    match (slot, pasid) {
        (Slot::MsiX(_), Some(_)) => Err(PassthroughError::PasidOnMsix(slot)),
        (_, Some(p)) if p > MAX_PASID => Err(PassthroughError::PasidTooLarge(p)),
        (Slot::MsiX(_), None) => Ok(0),
        (Slot::Ims(_), pasid) => Ok(ims_ctrl(pasid)),
    }
}
