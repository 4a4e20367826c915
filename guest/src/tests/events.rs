//! The event queue (spec §12, [DRV-10]) against the fake device: set up at initialisation,
//! events handed over in order and exactly once, buffers made available again as the
//! acknowledgement, coalescing, every check of a record, configuration changes, and the
//! helpers that apply a REPROGRAM and retry after an AVAILABLE.

use super::driver::{TestDriver, driver, driver_with, targets};
use super::extensions::{full_driver, options};
use super::fake::{EventFault, FakeDevice, Fault, memory};
use crate::transport::{interrupt, status};
use crate::{
    Applied, ConfigField, EVENT_BUFFERS, Error, ProgramMessages, Shortfall, VectorId, apply_event,
};
use pvirq_proto::{
    EVENT_LEN, Event, EventBody, Grant, GrantInfo, GrantMode, IndexSpec, Kind, MsiMessage,
    Resource, feature,
};
use std::vec::Vec;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

fn available(device: u32, count: u32) -> EventBody {
    EventBody::Available { device, count }
}

fn reprogram(index: u32, data: u32) -> EventBody {
    EventBody::Reprogram {
        device: 0,
        kind: Kind::MsiX,
        index,
        message: MsiMessage {
            address: 0xfee0_0010 | u64::from(index) << 5,
            data,
        },
        mode: GrantMode::Remapped,
    }
}

fn drain(d: &mut TestDriver<'_>) -> Result<Vec<Event>, Error> {
    let mut seen = Vec::new();
    d.poll_events(|e| seen.push(e))?;
    Ok(seen)
}

/// The event queue's available index: how many buffers the driver has made available.
fn avail_idx(dev: &FakeDevice) -> u16 {
    dev.with(|s| {
        let at = GuestAddress(s.event_queue.avail_ring() + 2);
        u16::from_le(s.mem.read_obj(at).unwrap())
    })
}

#[test]
fn with_events_the_queue_is_set_up_with_every_buffer_available() {
    let dev = FakeDevice::full(memory());
    let d = full_driver(&dev);
    dev.with(|s| {
        assert!(s.event_queue.ready());
        assert_eq!(s.event_queue.size(), EVENT_BUFFERS);
        assert_eq!(s.event_notifies, 1, "told after DRIVER_OK");
        assert_ne!(s.status & u32::from(status::DRIVER_OK), 0);
    });
    assert_eq!(avail_idx(&dev), EVENT_BUFFERS);
    drop(d);
    // A smaller device queue: the largest power of two it takes.
    let dev = FakeDevice::full(memory());
    dev.with(|s| s.event_queue_max = 6);
    let _d = full_driver(&dev);
    dev.with(|s| assert_eq!(s.event_queue.size(), 4));
    assert_eq!(avail_idx(&dev), 4);
    // No event queue although EVENTS was negotiated: the device cannot be driven.
    let dev = FakeDevice::full(memory());
    dev.with(|s| s.event_queue_max = 0);
    assert_eq!(
        driver_with(&dev, options(feature::ALL)).unwrap_err(),
        Error::EventQueueUnavailable(0)
    );
    dev.with(|s| assert_ne!(s.status & u32::from(status::FAILED), 0));
    // Without EVENTS the queue stays unused.
    let dev = FakeDevice::full(memory());
    let mut v1 = driver(&dev);
    dev.with(|s| assert!(!s.event_queue.ready()));
    assert_eq!(v1.poll_events(|_| panic!("no events")), Ok(0));
    assert_eq!(v1.next_event(), Ok(None));
}

#[test]
fn events_arrive_in_order_exactly_once_and_their_buffers_come_back() {
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    assert_eq!(drain(&mut d), Ok(Vec::new()));
    let mut sequence = 0;
    // Four times the queue's size, a batch at a time: only returned buffers carry more.
    for batch in 0..16u32 {
        for i in 0..16 {
            dev.push_event(available(i % 2, batch * 16 + i));
        }
        let seen = drain(&mut d).unwrap();
        assert_eq!(seen.len(), 16);
        for (i, e) in seen.iter().enumerate() {
            sequence += 1;
            assert_eq!(e.sequence, sequence);
            assert_eq!(e.body, available(i as u32 % 2, batch * 16 + i as u32));
        }
        assert_eq!(drain(&mut d), Ok(Vec::new()), "each event once");
    }
    assert_eq!(
        avail_idx(&dev),
        EVENT_BUFFERS + 256,
        "every buffer made available again"
    );
    dev.with(|s| assert!(s.pending_events.is_empty()));
}

#[test]
fn events_wait_for_buffers_and_are_coalesced_meanwhile() {
    let dev = FakeDevice::full(memory());
    dev.with(|s| s.event_queue_max = 2);
    let mut d = full_driver(&dev);
    dev.with(|s| s.auto_events = false);
    // Superseded while waiting: a reprogram by a later one of the same grant, an
    // AVAILABLE by a later one of the same device, everything of a removed device.
    for body in [
        reprogram(3, 1),
        available(0, 1),
        reprogram(4, 1),
        reprogram(3, 2),
        available(1, 7),
        available(0, 5),
        EventBody::DeviceRemoved { device: 1 },
    ] {
        dev.push_event(body);
    }
    dev.with(|s| assert_eq!(s.pending_events.len(), 4));
    assert_eq!(drain(&mut d), Ok(Vec::new()), "nothing written yet");
    dev.with(|s| s.auto_events = true);
    dev.deliver_events();
    // Two buffers: the other two events come as the buffers come back.
    let seen = drain(&mut d).unwrap();
    let bodies: Vec<EventBody> = seen.iter().map(|e| e.body).collect();
    assert_eq!(
        bodies,
        [
            reprogram(4, 1),
            reprogram(3, 2),
            available(0, 5),
            EventBody::DeviceRemoved { device: 1 }
        ]
    );
    let sequences: Vec<u32> = seen.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [1, 2, 3, 4]);
}

#[test]
fn next_event_acknowledges_an_event_by_asking_for_the_next() {
    let dev = FakeDevice::full(memory());
    dev.with(|s| s.event_queue_max = 1);
    let mut d = full_driver(&dev);
    dev.push_event(available(0, 1));
    dev.push_event(available(1, 2));
    let first = d.next_event().unwrap().unwrap();
    assert_eq!((first.sequence, first.body), (1, available(0, 1)));
    // The one buffer is in the caller's hands: the next event waits.
    dev.with(|s| assert_eq!(s.pending_events.len(), 1));
    // Asking again returns the buffer (the acknowledgement), which brings the next.
    let second = d.next_event().unwrap().unwrap();
    assert_eq!((second.sequence, second.body), (2, available(1, 2)));
    assert_eq!(d.next_event(), Ok(None));
    assert_eq!(avail_idx(&dev), 3);
    // In between, the caller may use the driver.
    dev.push_event(available(0, 3));
    let third = d.next_event().unwrap().unwrap();
    assert!(d.query(0).is_ok());
    assert_eq!(third.sequence, 3);
}

/// Delivers `body` with `fault` to a fresh extended driver (after `setup`); returns the
/// driver's answer and the driver.
fn fault_with(
    dev: &FakeDevice,
    fault: Option<EventFault>,
    body: EventBody,
) -> (Result<Vec<Event>, Error>, TestDriver<'_>) {
    let mut d = full_driver(dev);
    if let Some(fault) = fault {
        dev.event_fault(fault);
    }
    dev.push_event(body);
    (drain(&mut d), d)
}

#[test]
fn a_broken_sequence_is_a_device_fault() {
    let dev = FakeDevice::full(memory());
    let (r, mut d) = fault_with(&dev, Some(EventFault::Sequence(2)), available(0, 1));
    let err = r.unwrap_err();
    assert_eq!(
        err,
        Error::EventSequence {
            expected: 1,
            got: 2
        }
    );
    assert!(err.is_device_fault());
    assert_eq!(avail_idx(&dev), EVENT_BUFFERS + 1, "the buffer is not lost");
    // A repeated event, and a reordered one.
    dev.push_event(available(0, 2));
    dev.event_fault(EventFault::Sequence(1));
    dev.push_event(available(0, 3));
    let err = drain(&mut d).unwrap_err();
    assert_eq!(
        err,
        Error::EventSequence {
            expected: 1,
            got: 2
        }
    );
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    dev.push_event(available(0, 1));
    dev.event_fault(EventFault::Sequence(1));
    dev.push_event(available(0, 2));
    let mut seen = Vec::new();
    let err = d.poll_events(|e| seen.push(e)).unwrap_err();
    assert_eq!(
        err,
        Error::EventSequence {
            expected: 2,
            got: 1
        }
    );
    assert_eq!(
        seen.len(),
        1,
        "the events before the fault were handed over"
    );
}

#[test]
fn lengths_buffer_ids_and_records_are_checked() {
    let dev = FakeDevice::full(memory());
    let (r, _d) = fault_with(&dev, Some(EventFault::Len(31)), available(0, 1));
    assert_eq!(r, Err(Error::EventLength(31)));
    let dev = FakeDevice::full(memory());
    let (r, _d) = fault_with(&dev, Some(EventFault::Len(33)), available(0, 1));
    assert_eq!(r, Err(Error::EventLength(33)));
    let dev = FakeDevice::full(memory());
    let (r, _d) = fault_with(&dev, Some(EventFault::Id(64)), available(0, 1));
    assert_eq!(r, Err(Error::UnknownEventBuffer(64)));
    // The same buffer returned twice: the second time the device does not hold it.
    let dev = FakeDevice::full(memory());
    dev.with(|s| s.auto_events = false);
    let mut d = full_driver(&dev);
    dev.event_fault(EventFault::Twice);
    dev.push_event(available(0, 1));
    dev.deliver_events();
    let mut seen = Vec::new();
    let err = d.poll_events(|e| seen.push(e)).unwrap_err();
    assert_eq!(seen.len(), 1);
    // The buffer was made available again before its second return, so it is the
    // repeated record (its sequence) that gives the device away.
    assert_eq!(
        err,
        Error::EventSequence {
            expected: 2,
            got: 1
        }
    );
    // Returned twice before the driver looked: the second return names a buffer the
    // device no longer holds.
    let dev = FakeDevice::full(memory());
    dev.with(|s| s.auto_events = false);
    let mut d = full_driver(&dev);
    dev.event_fault(EventFault::Twice);
    dev.push_event(available(0, 1));
    dev.deliver_events();
    let first = d.next_event().unwrap().unwrap();
    assert_eq!(first.sequence, 1);
    assert!(matches!(d.next_event(), Err(Error::UnknownEventBuffer(_))));
    // Garbage: an undefined type.
    let dev = FakeDevice::full(memory());
    let (r, _d) = fault_with(&dev, Some(EventFault::Raw([0; EVENT_LEN])), available(0, 1));
    assert_eq!(
        r,
        Err(Error::Malformed(pvirq_proto::Error::UnknownEventType(0)))
    );
}

#[test]
fn an_empty_buffer_is_skipped_and_made_available_again() {
    let dev = FakeDevice::full(memory());
    let (r, _d) = fault_with(&dev, Some(EventFault::Unused), available(0, 1));
    // The empty buffer went back, and the event came in it (or another) right after.
    let seen = r.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].sequence, seen[0].body), (1, available(0, 1)));
    assert_eq!(avail_idx(&dev), EVENT_BUFFERS + 2);
    // An empty buffer from a device that claims it wrote nothing is skipped the same way
    // (a used length of 0 is never an event).
    let dev = FakeDevice::full(memory());
    let (r, _d) = fault_with(&dev, Some(EventFault::Len(0)), available(0, 1));
    assert_eq!(r, Ok(Vec::new()));
    assert_eq!(avail_idx(&dev), EVENT_BUFFERS + 1);
}

#[test]
fn events_must_name_devices_kinds_and_modes_the_driver_knows() {
    // A device handle past num_devices (2).
    let dev = FakeDevice::full(memory());
    let (r, _d) = fault_with(&dev, None, available(2, 1));
    assert_eq!(
        r,
        Err(Error::EventDevice {
            device: 2,
            num_devices: 2
        })
    );
    // ... unless the configuration grew first: re-read without waiting for the interrupt.
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    dev.change_config(|c| c.num_devices = 3.into());
    dev.push_event(EventBody::DeviceAdded { device: 2 });
    let seen = drain(&mut d).unwrap();
    assert_eq!(seen[0].body, EventBody::DeviceAdded { device: 2 });
    assert_eq!(d.config().num_devices, 3);
    // A kind the driver did not negotiate.
    let dev = FakeDevice::full(memory());
    let mut d = driver_with(
        &dev,
        options(feature::ALL & !feature::IMS & !feature::PASID),
    )
    .unwrap();
    let revoke = EventBody::Revoke {
        device: 0,
        kind: Kind::Ims,
        index: 0,
        reason: Resource::Irte,
    };
    dev.push_event(revoke);
    assert_eq!(drain(&mut d), Err(Error::EventNotNegotiated(feature::IMS)));
    // A posted grant the driver never asked for.
    let dev = FakeDevice::full(memory());
    let mut d = driver_with(&dev, options(feature::ALL & !feature::POSTED)).unwrap();
    let posted = EventBody::Reprogram {
        device: 0,
        kind: Kind::MsiX,
        index: 0,
        message: MsiMessage::default(),
        mode: GrantMode::Posted,
    };
    dev.push_event(posted);
    assert_eq!(
        drain(&mut d),
        Err(Error::EventNotNegotiated(feature::POSTED))
    );
    // An index outside the table QUERY reported (64 MSI-X entries).
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    d.query(0).unwrap();
    dev.push_event(reprogram(64, 0));
    assert_eq!(
        drain(&mut d),
        Err(Error::EventIndex {
            device: 0,
            kind: Kind::MsiX,
            index: 64
        })
    );
}

#[test]
fn configuration_changes_are_re_read_and_checked() {
    let dev = FakeDevice::full(memory());
    dev.with(|s| s.auto = false);
    let mut d = full_driver(&dev);
    dev.change_config(|c| c.vm_quota = 48.into());
    dev.push_event(EventBody::Limits {
        device: None,
        limit: 48,
    });
    let st = d.handle_interrupt().unwrap();
    assert!(st.config_changed && st.events_pending);
    assert_eq!(d.config().vm_quota, 48);
    let seen = drain(&mut d).unwrap();
    assert_eq!(
        seen[0].body,
        EventBody::Limits {
            device: None,
            limit: 48
        }
    );
    assert!(!d.handle_interrupt().unwrap().events_pending);
    // What may not change is a device fault, and the driver keeps what it had.
    dev.change_config(|c| c.num_vcpus = 8.into());
    assert_eq!(
        d.handle_interrupt().unwrap_err(),
        Error::ConfigChanged(ConfigField::NumVcpus)
    );
    assert_eq!(d.config().num_vcpus, 4);
    // Without EVENTS nothing may change.
    let dev = FakeDevice::full(memory());
    let mut v1 = driver(&dev);
    dev.change_config(|c| c.vm_quota = 48.into());
    assert_eq!(
        v1.handle_interrupt().unwrap_err(),
        Error::ConfigChanged(ConfigField::Generation)
    );
    assert_eq!(
        v1.refresh_config(),
        Err(Error::ConfigChanged(ConfigField::Generation))
    );
    // DEVICE_NEEDS_RESET.
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    assert_eq!(d.refresh_config(), Ok(None));
    dev.with(|s| {
        s.status |= u32::from(status::DEVICE_NEEDS_RESET);
        s.interrupt_status |= interrupt::CONFIG_CHANGE;
    });
    let err = d.handle_interrupt().unwrap_err();
    assert_eq!(err, Error::DeviceNeedsReset);
    assert!(err.is_device_fault());
}

/// A recording interrupt table: every step, in order.
#[derive(Default)]
struct Table {
    steps: Vec<(&'static str, VectorId, Option<MsiMessage>)>,
    masked: std::collections::BTreeSet<u32>,
}

impl ProgramMessages for Table {
    fn mask(&mut self, v: VectorId) -> bool {
        self.steps.push(("mask", v, None));
        !self.masked.insert(v.index)
    }
    fn program(&mut self, v: VectorId, message: MsiMessage) {
        self.steps.push(("program", v, Some(message)));
    }
    fn unmask(&mut self, v: VectorId) {
        self.masked.remove(&v.index);
        self.steps.push(("unmask", v, None));
    }
    fn replay(&mut self, v: VectorId) {
        self.steps.push(("replay", v, None));
    }
    fn forget(&mut self, v: VectorId, _reason: Resource) {
        self.steps.push(("forget", v, None));
    }
}

#[test]
fn a_reprogram_masks_programs_unmasks_and_replays_in_that_order() {
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    let mut grants = [GrantInfo::from_grant(Grant::new(0, Default::default())); 2];
    d.alloc_irq_vectors(0, Kind::MsiX, 2, &targets(2), &mut grants)
        .unwrap();
    let mut table = Table::default();
    // Vector 1 is masked (a parked grant the driver has not activated, say).
    table.masked.insert(1);
    dev.push_event(reprogram(0, 0x11));
    dev.push_event(reprogram(1, 0x22));
    let revoke = EventBody::Revoke {
        device: 0,
        kind: Kind::MsiX,
        index: 0,
        reason: Resource::Irte,
    };
    dev.push_event(revoke);
    dev.push_event(available(0, 1));
    let mut applied = Vec::new();
    d.poll_events(|e| applied.push(apply_event(&mut table, &e)))
        .unwrap();
    let v = |index| VectorId {
        device: 0,
        kind: Kind::MsiX,
        index,
    };
    let msg = |index: u32, data| MsiMessage {
        address: 0xfee0_0010 | u64::from(index) << 5,
        data,
    };
    assert_eq!(
        table.steps,
        [
            ("mask", v(0), None),
            ("program", v(0), Some(msg(0, 0x11))),
            ("unmask", v(0), None),
            ("replay", v(0), None),
            // Masked already: programmed, left masked, nothing to replay.
            ("mask", v(1), None),
            ("program", v(1), Some(msg(1, 0x22))),
            ("mask", v(0), None),
            ("forget", v(0), None),
        ]
    );
    assert_eq!(
        applied,
        [
            Applied::Reprogrammed(v(0)),
            Applied::Reprogrammed(v(1)),
            Applied::Revoked(v(0), Resource::Irte),
            Applied::Other,
        ]
    );
}

#[test]
fn a_driver_that_fell_back_gets_its_vectors_when_available_arrives() {
    let dev = FakeDevice::full(memory());
    dev.with(|s| s.available = 3);
    let mut d = full_driver(&dev);
    let t = targets(8);
    let mut grants = [GrantInfo::from_grant(Grant::new(0, Default::default())); 8];
    // 1. Everything: refused, which arms AVAILABLE on a real device.
    let err = d
        .alloc_irq_vectors(0, Kind::MsiX, 8, &t, &mut grants)
        .unwrap_err();
    let fallback = err.fallback_count().unwrap();
    // 2. Fall back, and remember what is missing.
    let got = d
        .alloc_irq_vectors(0, Kind::MsiX, fallback, &t, &mut grants)
        .unwrap()
        .grants
        .len() as u16;
    assert_eq!(got, 3);
    let mut shortfall = Shortfall::new(0, Kind::MsiX, 8, got);
    // 3. Another device's AVAILABLE is not ours; ours says how many to ask for.
    dev.with(|s| s.available = 10);
    dev.push_event(available(1, 10));
    dev.push_event(available(0, 10));
    while let Some(event) = d.next_event().unwrap() {
        let Some(s) = shortfall else { break };
        let Some(n) = s.retry(&event) else { continue };
        assert_eq!(n, 5);
        let more = d
            .alloc_parked(0, Kind::MsiX, IndexSpec::Any, 1, n, None, &mut grants)
            .unwrap();
        shortfall = s.granted(more.grants.len() as u16);
    }
    assert_eq!(shortfall, None, "all eight held");
    dev.with(|s| assert_eq!(s.held.len(), 8));
    let _ = Fault::NoReply;
}
