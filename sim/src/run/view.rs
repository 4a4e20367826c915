//! The guest's own record of what it holds: per device, each granted vector's message and
//! destination, and the messages it has given back (to fire stale ones on purpose).

use crate::scenario::Dest;
use pvirq_proto::{Kind, MsiMessage};
use std::collections::BTreeMap;

/// One vector the guest holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Held {
    pub message: MsiMessage,
    pub dest: Dest,
}

/// What the guest knows about one device's vectors.
#[derive(Clone, Debug, Default)]
pub(super) struct DeviceView {
    pub live: BTreeMap<(Kind, u32), Held>,
    pub retired: Vec<MsiMessage>,
}

impl DeviceView {
    pub fn grant(&mut self, kind: Kind, index: u32, message: MsiMessage, dest: Dest) {
        self.retired.retain(|m| *m != message);
        self.live.insert((kind, index), Held { message, dest });
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

    pub fn retarget(&mut self, kind: Kind, index: u32, dest: Dest) {
        if let Some(held) = self.live.get_mut(&(kind, index)) {
            held.dest = dest;
        }
    }
}

/// Indices as compact runs: `0-3,8`.
pub(super) fn runs(indices: &[u32]) -> String {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<String> = Vec::new();
    let mut iter = sorted.into_iter().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_join_consecutive_indices() {
        assert_eq!(runs(&[3, 0, 1, 2, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(runs(&[]), "");
    }

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
        v.grant(Kind::MsiX, 0, m, d);
        v.retire(Kind::MsiX, 0);
        assert_eq!(v.retired, vec![m]);
        v.grant(Kind::MsiX, 1, m, d);
        assert!(v.retired.is_empty());
    }
}
