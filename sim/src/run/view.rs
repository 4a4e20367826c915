//! The scenario's record of what each guest holds: per device, each granted vector's
//! message and destination (and where a delivery must land), and the messages it has given
//! back (to fire stale ones on purpose). Kept by the runner for both guest sides.

use crate::scenario::Dest;
use pvirq_proto::{Kind, MsiMessage};
use std::collections::BTreeMap;

/// One vector the guest holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Held {
    pub message: MsiMessage,
    /// Its target as the guest named it (`None`: parked).
    pub dest: Option<Dest>,
    /// Where a delivery must land: (APIC ID, guest vector); `None` while parked.
    pub expect: Option<(u32, u8)>,
}

/// What the guest knows about one device's vectors.
#[derive(Clone, Debug, Default)]
pub(super) struct DeviceView {
    pub live: BTreeMap<(Kind, u32), Held>,
    pub retired: Vec<MsiMessage>,
}

impl DeviceView {
    pub fn grant(&mut self, kind: Kind, index: u32, message: MsiMessage, dest: Option<Dest>) {
        self.retired.retain(|m| *m != message);
        self.live.insert(
            (kind, index),
            Held {
                message,
                dest,
                expect: None,
            },
        );
    }

    /// Vector (`kind`, `index`) now has `message` (a REPROGRAM the guest applied).
    pub fn reprogram(&mut self, kind: Kind, index: u32, message: MsiMessage) {
        if let Some(held) = self.live.get_mut(&(kind, index)) {
            self.retired.push(held.message);
            held.message = message;
        }
    }

    pub fn retire(&mut self, kind: Kind, index: u32) {
        if let Some(held) = self.live.remove(&(kind, index)) {
            self.retired.push(held.message);
        }
    }

    pub fn retire_all(&mut self) {
        let live = std::mem::take(&mut self.live);
        self.retired.extend(live.into_values().map(|h| h.message));
    }

    pub fn retarget(&mut self, kind: Kind, index: u32, dest: Option<Dest>) {
        if let Some(held) = self.live.get_mut(&(kind, index)) {
            held.dest = dest;
        }
    }

    /// Sets where each held vector's deliveries must land, from its destination.
    pub fn expect_with(&mut self, at: impl Fn(Dest) -> Option<(u32, u8)>) {
        for held in self.live.values_mut() {
            held.expect = held.dest.and_then(&at);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reprogrammed_vector_keeps_its_target_and_its_old_message_is_stale() {
        let mut v = DeviceView::default();
        let (old, new) = (
            MsiMessage {
                address: 0xFEE0_0010,
                data: 0,
            },
            MsiMessage {
                address: 0xFEE0_0030,
                data: 0,
            },
        );
        let d = Dest {
            vcpu: 2,
            vector: 0x41,
        };
        v.grant(Kind::Ims, 3, old, Some(d));
        v.expect_with(|d| Some((d.vcpu * 2, d.vector)));
        v.reprogram(Kind::Ims, 3, new);
        v.reprogram(Kind::Ims, 4, old);
        let held = v.live[&(Kind::Ims, 3)];
        assert_eq!((held.message, held.expect), (new, Some((4, 0x41))));
        assert_eq!(v.retired, vec![old]);
        v.retarget(Kind::Ims, 3, None);
        v.expect_with(|d| Some((d.vcpu, d.vector)));
        assert_eq!(v.live[&(Kind::Ims, 3)].expect, None, "parked");
    }

    use super::*;

    #[test]
    fn a_regranted_message_is_no_longer_stale() {
        let mut v = DeviceView::default();
        let m = MsiMessage {
            address: 0xFEE0_0000,
            data: 1,
        };
        let d = Dest {
            vcpu: 0,
            vector: 0x40,
        };
        v.grant(Kind::MsiX, 0, m, Some(d));
        v.retire(Kind::MsiX, 0);
        assert_eq!(v.retired, vec![m]);
        v.grant(Kind::MsiX, 1, m, Some(d));
        assert!(v.retired.is_empty());
    }
}
