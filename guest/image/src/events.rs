//! The `events` command: the guest takes what the device said unasked (spec §12), in order,
//! and does what a kernel driver does with it. A REPROGRAM goes to the vector's own MSI-X
//! entry or IMS slot through [`ProgramMessages`] over the pass-through BARs (mask, program,
//! unmask, replay, in [`apply_event`]'s order); a REVOKE masks the vector and forgets it;
//! a device added is opened, one removed forgotten. Every event is reported as the device
//! wrote it, with whether the guest applied it to a vector it holds.

use crate::commands::{Guest, Outcome};
use crate::devices::{Device, Slot};
use crate::state::{Held, MAX_GUEST_DEVICES, Record, records};
use pvirq_guest::proto::{EVENT_LEN, Event, EventBody, MsiMessage, Resource};
use pvirq_guest::{ProgramMessages, VectorId, apply_event};
use pvirq_guest_image_abi::mailbox::{EVENT_WORDS, MAX_LIST_EVENTS};

/// The guest's interrupt tables as `apply_event` reaches them: the devices' slots and the
/// guest's records of them.
struct Tables<'a> {
    devices: &'a [Option<Device>; MAX_GUEST_DEVICES],
    /// Vectors that may have lost an interrupt.
    replays: u32,
}

impl Tables<'_> {
    /// The device and slot of `v`, if the guest has both.
    fn slot(&self, v: VectorId) -> Option<(Device, Slot)> {
        let dev = self.devices.get(v.device as usize).copied().flatten()?;
        Some((dev, Slot::of(v.kind, v.index)?))
    }

    /// The guest's record of `v`.
    fn record(&self, v: VectorId) -> Option<&'static mut Record> {
        let (_, slot) = self.slot(v)?;
        records(v.device as usize)?.get_mut(slot)
    }

    /// Whether the guest holds `v` (a REPROGRAM or REVOKE may name a vector it freed after
    /// the event was queued: the two queues are not ordered).
    fn holds(&self, v: VectorId) -> bool {
        self.record(v).is_some_and(|r| r.held == Held::Live)
    }
}

impl ProgramMessages for Tables<'_> {
    fn mask(&mut self, v: VectorId) -> bool {
        self.slot(v)
            .and_then(|(dev, slot)| dev.mask(slot))
            .unwrap_or(true)
    }

    fn program(&mut self, v: VectorId, message: MsiMessage) {
        if let Some((dev, slot)) = self.slot(v) {
            dev.write_message(slot, message);
        }
        if let Some(r) = self.record(v) {
            r.message = message;
        }
    }

    fn unmask(&mut self, v: VectorId) {
        if let Some((dev, slot)) = self.slot(v) {
            dev.set_masked(slot, false);
        }
    }

    fn replay(&mut self, _: VectorId) {
        // A kernel runs the vector's handler once; this guest's handlers only count, so it
        // counts the replays instead of inventing an interrupt.
        self.replays += 1;
    }

    fn forget(&mut self, v: VectorId, _: Resource) {
        // Kept as freed: a careless guest could still ring it with the old message, which
        // the host blocks.
        if let Some(r) = self.record(v) {
            r.held = Held::Freed;
            r.parked = false;
        }
    }
}

impl Guest {
    /// Handles one event; whether it was a REPROGRAM or REVOKE applied to a vector the
    /// guest holds.
    fn handle_event(&mut self, tables_replays: &mut u32, event: &Event) -> bool {
        match event.body {
            EventBody::Reprogram {
                device,
                kind,
                index,
                ..
            }
            | EventBody::Revoke {
                device,
                kind,
                index,
                ..
            } => {
                let mut tables = Tables {
                    devices: &self.devices,
                    replays: 0,
                };
                let vector = VectorId {
                    device,
                    kind,
                    index,
                };
                if !tables.holds(vector) {
                    return false;
                }
                apply_event(&mut tables, event);
                *tables_replays += tables.replays;
                true
            }
            EventBody::DeviceAdded { device } => {
                if let Some(slot) = self.devices.get_mut(device as usize) {
                    *slot = Device::open(device as usize);
                }
                if let Some(recs) = records(device as usize) {
                    recs.clear();
                }
                false
            }
            EventBody::DeviceRemoved { device } => {
                if let Some(slot) = self.devices.get_mut(device as usize) {
                    *slot = None;
                }
                if let Some(recs) = records(device as usize) {
                    recs.clear();
                }
                false
            }
            EventBody::Limits { .. } | EventBody::Available { .. } => false,
        }
    }

    /// The `events` command.
    pub fn events(&mut self) -> Outcome {
        let (mut handled, mut replays) = (0usize, 0u32);
        while handled < MAX_LIST_EVENTS {
            let next = match self.driver.as_mut() {
                Some(driver) => driver.next_event(),
                None => return Outcome::NotReady,
            };
            let event = match next {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(e) => {
                    self.mb.result(0, handled as u32);
                    return e.into();
                }
            };
            let applied = self.handle_event(&mut replays, &event);
            let mut record = [0u8; EVENT_LEN];
            if event.encode(&mut record).is_err() {
                return Outcome::Bad;
            }
            let base = EVENT_WORDS * handled;
            for (k, word) in record.chunks_exact(4).enumerate() {
                let word = <[u8; 4]>::try_from(word).unwrap_or_default();
                self.mb.output(base + k, u32::from_le_bytes(word));
            }
            self.mb.output(base + EVENT_WORDS - 1, u32::from(applied));
            handled += 1;
        }
        self.mb.result(0, handled as u32);
        self.mb.result(1, replays);
        Outcome::Ok
    }
}
