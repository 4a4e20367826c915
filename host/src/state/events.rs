//! The pending-event log of a VM whose driver negotiated the event queue (spec §12): what
//! the device has to tell the driver and has not written yet, in order, with coalescing so
//! that a driver that never returns event buffers costs a bounded amount of memory.
//!
//! Sequence numbers are given when an event is written, not when it is queued: an event
//! that supersedes a pending one takes the end of the order, so numbering at queue time
//! would leave gaps the driver could not tell from a lost event.
//!
//! The log also remembers which devices have an AVAILABLE armed (a NO_SPACE refusal of an
//! ALLOC), with the smallest `min_count` refused since it was armed.

use pvirq_proto::{Event, EventBody, Kind, wire::EVENT_DEVICE_VM};
use std::collections::BTreeMap;

/// Which pending events a new one supersedes: those with the same subject. The subject's
/// device comes first, so that every subject of one device is one range of the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Subject {
    /// The device handle; [`EVENT_DEVICE_VM`] for the VM-wide LIMITS (never a handle).
    device: u32,
    class: Class,
    /// The grant's kind (wire value) and index, for REPROGRAM and REVOKE; else 0.
    kind: u8,
    index: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Reprogram,
    Revoke,
    Limits,
    Available,
    /// DEVICE_ADDED (a handle is added once) and DEVICE_REMOVED.
    Hotplug,
}

impl Subject {
    fn of(body: &EventBody) -> Subject {
        let plain = |device: u32, class| Subject {
            device,
            class,
            kind: 0,
            index: 0,
        };
        let grant = |device: u32, class, kind: Kind, index| Subject {
            device,
            class,
            kind: kind.to_wire(),
            index,
        };
        match *body {
            EventBody::Reprogram {
                device,
                kind,
                index,
                ..
            } => grant(device, Class::Reprogram, kind, index),
            EventBody::Revoke {
                device,
                kind,
                index,
                ..
            } => grant(device, Class::Revoke, kind, index),
            EventBody::Limits { device, .. } => {
                plain(device.unwrap_or(EVENT_DEVICE_VM), Class::Limits)
            }
            EventBody::Available { device, .. } => plain(device, Class::Available),
            EventBody::DeviceAdded { device } | EventBody::DeviceRemoved { device } => {
                plain(device, Class::Hotplug)
            }
        }
    }

    /// The same grant, as the subject of a REPROGRAM.
    fn reprogram(self) -> Subject {
        Subject {
            class: Class::Reprogram,
            ..self
        }
    }
}

/// The log. Disabled (recording nothing) unless the driver negotiated `PVIRQ_F_EVENTS`
/// and set DRIVER_OK, or a restored snapshot carried it.
#[derive(Debug)]
pub(crate) struct EventLog {
    enabled: bool,
    /// The sequence number of the next event written.
    next_sequence: u32,
    /// Position in the order of the next event queued.
    next_order: u64,
    /// Pending events by position in the order.
    pending: BTreeMap<u64, EventBody>,
    /// The position of the pending event about each subject.
    subjects: BTreeMap<Subject, u64>,
    /// Devices with an AVAILABLE armed, and the `min_count` to wait for.
    armed: BTreeMap<u32, u16>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            enabled: false,
            next_sequence: 1,
            next_order: 0,
            pending: BTreeMap::new(),
            subjects: BTreeMap::new(),
            armed: BTreeMap::new(),
        }
    }
}

/// Why a pending event cannot join the log: it is about the same subject as one already
/// pending (a snapshot that claims both was not written by a device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Superseded;

impl EventLog {
    /// Starts recording (the driver set DRIVER_OK with `PVIRQ_F_EVENTS`): the first event
    /// written is sequence 1. A log already recording (restored) is left as it is.
    pub(crate) fn enable(&mut self) {
        if !self.enabled {
            *self = EventLog {
                enabled: true,
                ..EventLog::default()
            };
        }
    }

    /// Discards every pending event and stops recording (device reset, [DEV-1]).
    pub(crate) fn discard(&mut self) {
        *self = EventLog::default();
    }

    /// Whether events are recorded.
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Queues `body` at the end of the order, superseding the pending events about the
    /// same thing (spec §12, *Bounds*): a REPROGRAM supersedes a pending REPROGRAM of the
    /// grant; a REVOKE a pending REPROGRAM or REVOKE of it (the driver forgets the index
    /// either way, and a second REVOKE of an index it no longer holds would look like a
    /// device error to it); AVAILABLE and LIMITS the pending one with the same `device`;
    /// DEVICE_REMOVED every pending event of the device. Nothing is recorded while the
    /// log is disabled.
    pub(crate) fn push(&mut self, body: EventBody) {
        if !self.enabled {
            return;
        }
        let subject = Subject::of(&body);
        match body {
            EventBody::DeviceRemoved { device } => {
                let of_device: Vec<Subject> = self
                    .subjects
                    .range(Self::device_range(device))
                    .map(|(s, _)| *s)
                    .collect();
                for s in of_device {
                    self.remove(s);
                }
            }
            EventBody::Revoke { .. } => {
                self.remove(subject.reprogram());
                self.remove(subject);
            }
            _ => self.remove(subject),
        }
        self.insert(subject, body);
    }

    /// Queues a pending event restored from a snapshot, at the end of the order, refusing
    /// one whose subject is already pending.
    pub(crate) fn restore_pending(&mut self, body: EventBody) -> Result<(), Superseded> {
        let subject = Subject::of(&body);
        if self.subjects.contains_key(&subject) {
            return Err(Superseded);
        }
        self.insert(subject, body);
        Ok(())
    }

    fn device_range(device: u32) -> std::ops::RangeInclusive<Subject> {
        Subject {
            device,
            class: Class::Reprogram,
            kind: 0,
            index: 0,
        }..=Subject {
            device,
            class: Class::Hotplug,
            kind: u8::MAX,
            index: u32::MAX,
        }
    }

    fn insert(&mut self, subject: Subject, body: EventBody) {
        let order = self.next_order;
        self.next_order += 1;
        self.pending.insert(order, body);
        self.subjects.insert(subject, order);
    }

    fn remove(&mut self, subject: Subject) {
        if let Some(order) = self.subjects.remove(&subject) {
            self.pending.remove(&order);
        }
    }

    /// The next event to write, with the sequence number it carries.
    pub(crate) fn front(&self) -> Option<Event> {
        self.pending.values().next().map(|body| Event {
            sequence: self.next_sequence,
            body: *body,
        })
    }

    /// The front event was written into a buffer: it is gone, and the next one is numbered
    /// one higher (modulo 2^32).
    pub(crate) fn pop(&mut self) {
        if let Some((_, body)) = self.pending.pop_first() {
            self.subjects.remove(&Subject::of(&body));
            self.next_sequence = self.next_sequence.wrapping_add(1);
        }
    }

    /// Events not yet written, in order.
    pub(crate) fn pending(&self) -> impl Iterator<Item = &EventBody> {
        self.pending.values()
    }

    /// How many events wait.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    /// The sequence number the next event written carries.
    pub(crate) fn next_sequence(&self) -> u32 {
        self.next_sequence
    }

    /// Sets the sequence number of the next event written (a restored log).
    pub(crate) fn set_next_sequence(&mut self, sequence: u32) {
        self.next_sequence = sequence;
    }

    /// Arms an AVAILABLE for `device` after a NO_SPACE for `min` vectors, keeping the
    /// smallest `min` refused since it was armed: the driver hears as soon as its
    /// smallest fallback would succeed. Nothing is armed while the log is disabled.
    pub(crate) fn arm(&mut self, device: u32, min: u16) {
        if self.enabled {
            let armed = self.armed.entry(device).or_insert(min);
            *armed = (*armed).min(min);
        }
    }

    /// Devices with an AVAILABLE armed, and the count each waits for.
    pub(crate) fn armed(&self) -> Vec<(u32, u16)> {
        self.armed.iter().map(|(d, m)| (*d, *m)).collect()
    }

    /// Disarms `device`'s AVAILABLE.
    pub(crate) fn disarm(&mut self, device: u32) {
        self.armed.remove(&device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvirq_proto::{GrantMode, MsiMessage, Resource};

    fn reprogram(device: u32, index: u32, data: u32) -> EventBody {
        EventBody::Reprogram {
            device,
            kind: Kind::MsiX,
            index,
            message: MsiMessage {
                address: 0xFEE0_0000,
                data,
            },
            mode: GrantMode::Remapped,
        }
    }

    fn revoke(device: u32, index: u32) -> EventBody {
        EventBody::Revoke {
            device,
            kind: Kind::MsiX,
            index,
            reason: Resource::Irte,
        }
    }

    fn drain(log: &mut EventLog) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = log.front() {
            out.push(e);
            log.pop();
        }
        out
    }

    #[test]
    fn a_disabled_log_records_and_arms_nothing() {
        let mut log = EventLog::default();
        log.push(EventBody::DeviceAdded { device: 1 });
        log.arm(0, 1);
        assert_eq!((log.len(), log.armed()), (0, vec![]));
    }

    #[test]
    fn events_are_numbered_from_1_in_the_order_written_and_wrap() {
        let mut log = EventLog::default();
        log.enable();
        log.push(EventBody::DeviceAdded { device: 2 });
        log.push(EventBody::Available {
            device: 0,
            count: 3,
        });
        let events = drain(&mut log);
        assert_eq!(
            events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(events[0].body, EventBody::DeviceAdded { device: 2 });
        log.set_next_sequence(u32::MAX);
        log.push(EventBody::DeviceAdded { device: 3 });
        log.push(EventBody::DeviceAdded { device: 4 });
        let events = drain(&mut log);
        assert_eq!(
            events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [u32::MAX, 0]
        );
        // Enabling a live log changes nothing; discarding starts again at 1.
        log.push(EventBody::DeviceAdded { device: 5 });
        log.enable();
        assert_eq!(log.len(), 1);
        log.discard();
        assert!(!log.is_enabled() && log.len() == 0);
        log.enable();
        assert_eq!(log.next_sequence(), 1);
    }

    #[test]
    fn a_later_event_about_the_same_thing_supersedes_and_takes_the_end_of_the_order() {
        let mut log = EventLog::default();
        log.enable();
        log.push(reprogram(0, 5, 1));
        log.push(EventBody::Limits {
            device: None,
            limit: 8,
        });
        log.push(reprogram(0, 6, 1));
        log.push(reprogram(0, 5, 2)); // supersedes the first
        log.push(EventBody::Limits {
            device: None,
            limit: 4,
        });
        log.push(EventBody::Limits {
            device: Some(0),
            limit: 2,
        }); // a device's share: another subject than the VM's quota
        let bodies: Vec<EventBody> = drain(&mut log).into_iter().map(|e| e.body).collect();
        assert_eq!(
            bodies,
            [
                reprogram(0, 6, 1),
                reprogram(0, 5, 2),
                EventBody::Limits {
                    device: None,
                    limit: 4
                },
                EventBody::Limits {
                    device: Some(0),
                    limit: 2
                },
            ]
        );
    }

    #[test]
    fn a_revoke_supersedes_the_grants_reprogram_and_a_removal_everything_of_its_device() {
        let mut log = EventLog::default();
        log.enable();
        log.push(reprogram(1, 5, 1));
        log.push(revoke(1, 5));
        log.push(reprogram(1, 5, 3)); // a new grant at the index: after the REVOKE
        log.push(revoke(0, 5));
        log.push(EventBody::Available {
            device: 1,
            count: 1,
        });
        let bodies: Vec<EventBody> = log.pending().copied().collect();
        assert_eq!(
            bodies,
            [
                revoke(1, 5),
                reprogram(1, 5, 3),
                revoke(0, 5),
                EventBody::Available {
                    device: 1,
                    count: 1
                }
            ]
        );
        log.push(EventBody::DeviceRemoved { device: 1 });
        let bodies: Vec<EventBody> = drain(&mut log).into_iter().map(|e| e.body).collect();
        assert_eq!(
            bodies,
            [revoke(0, 5), EventBody::DeviceRemoved { device: 1 }]
        );
    }

    #[test]
    fn restored_events_keep_their_order_and_a_second_about_one_subject_is_refused() {
        let mut log = EventLog::default();
        log.enable();
        assert_eq!(log.restore_pending(reprogram(0, 1, 1)), Ok(()));
        assert_eq!(log.restore_pending(revoke(0, 1)), Ok(()));
        assert_eq!(log.restore_pending(reprogram(0, 1, 2)), Err(Superseded));
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn arming_keeps_the_smallest_min_until_disarmed() {
        let mut log = EventLog::default();
        log.enable();
        log.arm(1, 8);
        log.arm(1, 2);
        log.arm(1, 4);
        log.arm(0, 3);
        assert_eq!(log.armed(), [(0, 3), (1, 2)]);
        log.disarm(1);
        assert_eq!(log.armed(), [(0, 3)]);
    }
}
