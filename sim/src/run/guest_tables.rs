//! The in-process guest's interrupt storage: per assigned device, its MSI-X table and IMS
//! slots as a pass-through device keeps them in memory ([`crate::passthrough`]), the MSI
//! capability's messages, and which vectors the guest holds — what a guest kernel's irq
//! descriptors and the device's tables are. REPROGRAM and REVOKE are applied here with
//! [`pvirq_guest::apply_event`] ([`ProgramMessages`]), and a fire step reads the messages
//! back from here, so a vector the guest did not reprogram sends its old message.

use crate::SimError;
use crate::passthrough::{DeviceTables, PassthroughDevice, Slot, TableRegion};
use pvirq_guest::{ProgramMessages, VectorId};
use pvirq_proto::{Kind, MsiMessage, Resource};
use std::collections::BTreeMap;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Bytes per MSI-X entry or IMS slot.
const ENTRY: u64 = 16;
/// Table memory is allocated in whole pages.
const PAGE: u64 = 4096;

/// One assigned device as the guest sees it.
#[derive(Debug)]
pub(super) struct GuestDevice {
    /// The requester ID its writes carry on the host it is on.
    pub requester_id: u16,
    /// Its MSI-X table and IMS slots (none for an MSI-only device).
    pub device: Option<PassthroughDevice>,
    /// The MSI capability's message of each vector of the block.
    pub msi: BTreeMap<u32, MsiMessage>,
    /// The vectors the guest holds, with the PASID each IMS slot carries.
    pub held: BTreeMap<(Kind, u32), Option<u32>>,
}

impl GuestDevice {
    /// A device with `msix` MSI-X entries and `ims` IMS slots, every one masked.
    pub fn new(requester_id: u16, msix: u16, ims: u32) -> Result<Self, SimError> {
        let msix_len = u64::from(msix) * ENTRY;
        let ims_len = u64::from(ims) * ENTRY;
        let device = if msix_len + ims_len == 0 {
            None
        } else {
            let size = (msix_len + ims_len).div_ceil(PAGE) * PAGE;
            let size = usize::try_from(size).map_err(|e| SimError::GuestMemory(e.to_string()))?;
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)])
                .map_err(|e| SimError::GuestMemory(e.to_string()))?;
            let region = |base, entries| {
                (entries > 0).then_some(TableRegion {
                    base: GuestAddress(base),
                    entries,
                })
            };
            let tables = DeviceTables::new(mem, region(0, u32::from(msix)), region(msix_len, ims))?;
            Some(PassthroughDevice::new(requester_id, tables))
        };
        Ok(GuestDevice {
            requester_id,
            device,
            msi: BTreeMap::new(),
            held: BTreeMap::new(),
        })
    }

    fn tables(&self) -> Option<&DeviceTables> {
        self.device.as_ref().map(PassthroughDevice::tables)
    }

    /// Programs a new grant: its slot written and unmasked, or left masked if `parked`.
    pub fn program(
        &mut self,
        kind: Kind,
        index: u32,
        message: MsiMessage,
        pasid: Option<u32>,
        parked: bool,
    ) -> Result<(), SimError> {
        let pasid = pasid.filter(|_| kind == Kind::Ims);
        match (Slot::for_grant(kind, index), self.tables()) {
            (Some(slot), Some(tables)) if parked => tables.program_masked(slot, message, pasid)?,
            (Some(slot), Some(tables)) => tables.program(slot, message, pasid)?,
            _ => {
                self.msi.insert(index, message);
            }
        }
        self.held.insert((kind, index), pasid);
        Ok(())
    }

    /// Masks the slots of the named vectors the guest holds (before FREE, RESET or PARK,
    /// spec DRV-7); returns those it masked.
    pub fn mask(&self, kind: Kind, indices: &[u32]) -> Result<Vec<Slot>, SimError> {
        let mut masked = Vec::new();
        for &index in indices {
            if let (true, Some(slot), Some(tables)) = (
                self.held.contains_key(&(kind, index)),
                Slot::for_grant(kind, index),
                self.tables(),
            ) && !tables.read(slot)?.masked
            {
                tables.mask(slot)?;
                masked.push(slot);
            }
        }
        Ok(masked)
    }

    /// Unmasks `slots` again (a request refused after the guest masked them).
    pub fn unmask(&self, slots: &[Slot]) -> Result<(), SimError> {
        if let Some(tables) = self.tables() {
            for slot in slots {
                tables.unmask(*slot)?;
            }
        }
        Ok(())
    }

    /// Unmasks the named vectors the guest holds: they have a target now (activation).
    pub fn activate(&self, kind: Kind, indices: &[u32]) -> Result<(), SimError> {
        let slots: Vec<Slot> = indices
            .iter()
            .filter(|i| self.held.contains_key(&(kind, **i)))
            .filter_map(|i| Slot::for_grant(kind, *i))
            .collect();
        self.unmask(&slots)
    }

    /// Forgets the named vectors (freed, revoked, or the device reset).
    pub fn forget(&mut self, kind: Kind, indices: &[u32]) {
        for index in indices {
            self.held.remove(&(kind, *index));
            if kind == Kind::Msi {
                self.msi.remove(index);
            }
        }
    }

    /// Masks and forgets every vector (device RESET, virtio reset, device removed).
    pub fn forget_all(&mut self) -> Result<(), SimError> {
        let held: Vec<(Kind, u32)> = self.held.keys().copied().collect();
        for (kind, index) in held {
            self.mask(kind, &[index])?;
            self.forget(kind, &[index]);
        }
        Ok(())
    }

    /// The message vector (`kind`, `index`) sends now, and whether its slot is masked.
    pub fn message(&self, kind: Kind, index: u32) -> Result<Option<(MsiMessage, bool)>, SimError> {
        match (Slot::for_grant(kind, index), self.tables()) {
            (Some(slot), Some(tables)) => {
                let state = tables.read(slot)?;
                Ok(Some((state.message, state.masked)))
            }
            _ => Ok(self.msi.get(&index).map(|m| (*m, false))),
        }
    }
}

/// The guest's devices as [`pvirq_guest::apply_event`] reaches them. A table write that
/// fails is kept and reported after the event (the trait's steps cannot fail).
pub(super) struct Programmer<'a> {
    pub devices: &'a mut [GuestDevice],
    pub replays: u32,
    pub error: Option<SimError>,
}

impl Programmer<'_> {
    fn slot(&self, v: VectorId) -> Option<(Slot, &DeviceTables)> {
        let device = self.devices.get(v.device as usize)?;
        Some((Slot::for_grant(v.kind, v.index)?, device.tables()?))
    }

    fn keep(&mut self, result: Result<(), crate::passthrough::PassthroughError>) {
        if let Err(e) = result {
            self.error.get_or_insert(e.into());
        }
    }
}

impl ProgramMessages for Programmer<'_> {
    fn mask(&mut self, v: VectorId) -> bool {
        let Some((slot, tables)) = self.slot(v) else {
            // An MSI vector: per-vector masking is not modelled.
            return false;
        };
        let was = tables.read(slot).map(|s| s.masked);
        let result = tables.mask(slot);
        self.keep(result);
        match was {
            Ok(masked) => masked,
            Err(e) => {
                self.keep(Err(e));
                false
            }
        }
    }

    fn program(&mut self, v: VectorId, message: MsiMessage) {
        match self.slot(v) {
            Some((slot, tables)) => {
                let result = tables.write_message(slot, message);
                self.keep(result);
            }
            None => {
                if let Some(device) = self.devices.get_mut(v.device as usize) {
                    device.msi.insert(v.index, message);
                }
            }
        }
    }

    fn unmask(&mut self, v: VectorId) {
        if let Some((slot, tables)) = self.slot(v) {
            let result = tables.unmask(slot);
            self.keep(result);
        }
    }

    fn replay(&mut self, _: VectorId) {
        // The guest would run the vector's handler once; counted.
        self.replays += 1;
    }

    fn forget(&mut self, v: VectorId, _reason: Resource) {
        if let Some(device) = self.devices.get_mut(v.device as usize) {
            device.forget(v.kind, &[v.index]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvirq_proto::{Event, EventBody, GrantMode};

    fn message(n: u32) -> MsiMessage {
        MsiMessage {
            address: 0xFEE0_0000 | u64::from(n) << 5 | 0x18,
            data: 0,
        }
    }

    fn reprogram(device: u32, kind: Kind, index: u32, to: u32) -> Event {
        Event {
            sequence: 1,
            body: EventBody::Reprogram {
                device,
                kind,
                index,
                message: message(to),
                mode: GrantMode::Remapped,
            },
        }
    }

    #[test]
    fn apply_event_reprograms_the_slot_and_a_parked_one_stays_masked() {
        let mut devices = vec![GuestDevice::new(0x10, 4, 4).unwrap()];
        devices[0]
            .program(Kind::MsiX, 0, message(1), None, false)
            .unwrap();
        devices[0]
            .program(Kind::Ims, 2, message(2), Some(7), true)
            .unwrap();
        devices[0]
            .program(Kind::Msi, 0, message(3), None, false)
            .unwrap();
        let mut p = Programmer {
            devices: &mut devices,
            replays: 0,
            error: None,
        };
        for event in [
            reprogram(0, Kind::MsiX, 0, 11),
            reprogram(0, Kind::Ims, 2, 12),
            reprogram(0, Kind::Msi, 0, 13),
        ] {
            pvirq_guest::apply_event(&mut p, &event);
        }
        // Unmasked vectors are replayed once each (the MSI one is never masked here).
        assert_eq!((p.replays, p.error.is_none()), (2, true));
        let d = &devices[0];
        assert_eq!(
            d.message(Kind::MsiX, 0).unwrap(),
            Some((message(11), false))
        );
        assert_eq!(d.message(Kind::Ims, 2).unwrap(), Some((message(12), true)));
        assert_eq!(d.message(Kind::Msi, 0).unwrap(), Some((message(13), false)));
        let tables = d.device.as_ref().unwrap().tables();
        assert_eq!(tables.read(Slot::Ims(2)).unwrap().pasid, Some(7));
    }

    #[test]
    fn a_revoke_masks_and_forgets_and_a_free_masks_first() {
        let mut devices = vec![GuestDevice::new(0x10, 4, 0).unwrap()];
        for i in 0..3 {
            devices[0]
                .program(Kind::MsiX, i, message(i), None, false)
                .unwrap();
        }
        let revoke = Event {
            sequence: 1,
            body: EventBody::Revoke {
                device: 0,
                kind: Kind::MsiX,
                index: 1,
                reason: Resource::Irte,
            },
        };
        let mut p = Programmer {
            devices: &mut devices,
            replays: 0,
            error: None,
        };
        pvirq_guest::apply_event(&mut p, &revoke);
        let d = &mut devices[0];
        assert!(!d.held.contains_key(&(Kind::MsiX, 1)));
        assert_eq!(d.message(Kind::MsiX, 1).unwrap().map(|m| m.1), Some(true));
        // Masking before a FREE touches only what the guest holds, and says what it masked.
        assert_eq!(d.mask(Kind::MsiX, &[0, 1, 3]).unwrap(), [Slot::MsiX(0)]);
        d.unmask(&[Slot::MsiX(0)]).unwrap();
        assert_eq!(d.message(Kind::MsiX, 0).unwrap(), Some((message(0), false)));
        d.forget_all().unwrap();
        assert!(d.held.is_empty());
        assert_eq!(d.message(Kind::MsiX, 2).unwrap().map(|m| m.1), Some(true));
        // A device with neither table keeps its MSI messages alone.
        let msi = GuestDevice::new(0x20, 0, 0).unwrap();
        assert!(msi.device.is_none());
    }
}
