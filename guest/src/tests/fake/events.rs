//! The fake device's event queue (spec §12): events queued in order, coalesced while they
//! wait, numbered and written into the driver's buffers when there are any.

use super::State;
use pvirq_proto::{EVENT_LEN, Event, EventBody};
use virtio_queue::QueueT;
use vm_memory::Bytes;

/// How the next written event goes wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EventFault {
    /// Write it with this sequence number (the device's count moves on as usual).
    Sequence(u32),
    /// Report this used length.
    Len(u32),
    /// Return the buffer under this id.
    Id(u32),
    /// Write these bytes instead of the record (the sequence is used up).
    Raw([u8; EVENT_LEN]),
    /// Return the buffer twice: a second used element with the same id.
    Twice,
    /// Return the buffer empty (used length 0), as a device does with a buffer it cannot
    /// use; the event waits for the next buffer.
    Unused,
}

/// Whether pending event `old` is superseded by `new` (spec §12, *Bounds: coalescing*).
fn supersedes(new: &EventBody, old: &EventBody) -> bool {
    use EventBody::*;
    match (new, old) {
        (
            Reprogram {
                device,
                kind,
                index,
                ..
            }
            | Revoke {
                device,
                kind,
                index,
                ..
            },
            Reprogram {
                device: d,
                kind: k,
                index: i,
                ..
            },
        ) => (device, kind, index) == (d, k, i),
        (Available { device, .. }, Available { device: d, .. }) => device == d,
        (Limits { device, .. }, Limits { device: d, .. }) => device == d,
        (DeviceRemoved { device }, old) => old.device() == Some(*device),
        _ => false,
    }
}

impl State {
    /// Queues `body` at the end of the order, dropping the pending events it supersedes.
    pub(super) fn queue_event(&mut self, body: EventBody) {
        self.pending_events.retain(|old| !supersedes(&body, old));
        self.pending_events.push_back(body);
    }

    pub(super) fn deliver_events(&mut self) -> usize {
        let mem = self.mem.clone();
        let mut written = 0;
        while !self.pending_events.is_empty() && self.event_queue.ready() {
            let Some(chain) = self.event_queue.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            let desc = chain.into_iter().next().expect("one descriptor");
            assert!(desc.is_write_only() && desc.len() as usize >= EVENT_LEN);
            let fault = self.event_faults.pop_front();
            if fault == Some(EventFault::Unused) {
                // A buffer the device cannot use: returned empty, no event consumed.
                State::push_used(&mem, &mut self.event_queue, u32::from(head), 0, 0);
                continue;
            }
            let body = self.pending_events.pop_front().expect("pending");
            let sequence = match fault {
                Some(EventFault::Sequence(s)) => s,
                _ => self.next_sequence,
            };
            self.next_sequence = self.next_sequence.wrapping_add(1);
            let mut record = [0u8; EVENT_LEN];
            Event { sequence, body }
                .encode(&mut record)
                .expect("event encodes");
            if let Some(EventFault::Raw(raw)) = fault {
                record = raw;
            }
            mem.write_slice(&record, desc.addr()).expect("event buffer");
            self.events_written.push(record);
            let (id, len) = match fault {
                Some(EventFault::Len(l)) => (u32::from(head), l),
                Some(EventFault::Id(id)) => (id, EVENT_LEN as u32),
                _ => (u32::from(head), EVENT_LEN as u32),
            };
            State::push_used(&mem, &mut self.event_queue, id, len, 0);
            if fault == Some(EventFault::Twice) {
                State::push_used(&mem, &mut self.event_queue, id, len, 0);
            }
            written += 1;
        }
        if written > 0 {
            self.interrupt_status |= crate::transport::interrupt::USED_BUFFER;
        }
        written
    }
}
