//! Snapshot and restore with the event queue (spec §13, [DEV-27]): a destination that gives
//! grants new messages or cannot back them tells a driver that negotiated the event queue
//! (REPROGRAM, REVOKE, after the events that were pending); the pending events, the next
//! sequence number, what is armed and which devices were removed travel with the state,
//! and a hostile event state is refused with nothing held.

use super::test_utils::*;
use super::*;
use crate::model::{FaultReason, ModelConfig, ModelHost, RemapConfig, RemapFault};
use crate::snapshot::{ArmedSnapshot, RestoreError, Restored};
use pvirq_proto::{
    Alloc, EVENT_LEN, Event, EventBody, GrantMode, IndexSpec, Kind, Operation, Request, Resource,
    Status, Target, Targeting, feature,
};
use std::sync::Arc;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

fn alloc(device: u32, min: u16, max: u16) -> Vec<u8> {
    let t: Vec<Target> = (0..max)
        .map(|i| Target::new(u32::from(i % 2), 0x50 + i as u8))
        .collect();
    encode(&Request {
        device,
        tag: 3,
        op: Operation::Alloc(Alloc {
            kind: Kind::MsiX,
            index: IndexSpec::Any,
            min,
            max,
            pasid: None,
            targets: &t,
            targeting: Targeting::PerVector,
        }),
    })
}

fn call(dev: &mut PvirqDevice<Mem>, req: &mut Driver<'_>, request: &[u8]) -> Status {
    let bufs = req.send(request, &[256]);
    let at = req.used_idx();
    dev.process_all();
    header(&req.reply(&bufs, req.used(at).1)).0
}

fn parts(mem: &vm_memory::GuestMemoryMmap) -> (RestoreParts<Mem>, Arc<Recorder>) {
    let irq = Arc::new(Recorder::default());
    let parts = RestoreParts {
        mem: atomic(mem),
        interrupt: irq.clone(),
        queue_evts: vec![
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ],
    };
    (parts, irq)
}

/// A host with one remapping unit of `entries` entries.
fn small_host(entries: u32) -> ModelHost {
    ModelHost::new(&ModelConfig {
        remap: RemapConfig {
            units: 1,
            entries_per_unit: entries,
        },
        ..ModelConfig::default()
    })
    .unwrap()
}

#[test]
fn a_destination_that_changes_grants_tells_the_driver_in_order_after_what_was_pending() {
    let source = host();
    let mem = guest_memory();
    let mut req = Driver::new(&mem, 16);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, _irq) = events_device(vm(&source, 0x100, 16), &mem, &req, &evt);
    assert_eq!(call(&mut dev, &mut req, &alloc(0, 4, 4)), Status::Ok);
    let before = dev.vm().grants(0);
    // No buffer yet: the LIMITS waits, and travels.
    dev.set_quota(20);
    assert_eq!(dev.vm().pending_events(), 1);
    dev.pause();
    let state = dev.save();
    let events = state.vm.events.clone().unwrap();
    assert_eq!((events.next_sequence, events.pending.len()), (1, 1));
    let state: PvirqDeviceState =
        serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();

    // The destination: 6 remapping entries, 3 of them another VM's. The grants had entries
    // 0..3: three get other entries (new messages), one cannot be backed.
    let dest = small_host(6);
    let squatter = vm(&dest, 0x300, 8);
    let t = [Target::new(0, 0x30); 3];
    let taken = squatter.call(&Request {
        device: 0,
        tag: 0,
        op: Operation::Alloc(Alloc::any(Kind::MsiX, 3, &t)),
    });
    assert_eq!(header(&taken).0, Status::Ok);
    let (p, irq) = parts(&mem);
    let (mut restored, report) = PvirqDevice::restore(vm(&dest, 0x100, 20), &state, p).unwrap();
    let outcomes: Vec<Restored> = report.iter().map(|r| r.outcome).collect();
    assert!(matches!(
        outcomes[..],
        [
            Restored::Reprogrammed(_),
            Restored::Reprogrammed(_),
            Restored::Reprogrammed(_),
            Restored::Revoked(Resource::Irte)
        ]
    ));
    assert_eq!(
        restored.occupancy().held,
        3,
        "the revoked grant's quota is free"
    );
    assert_eq!(restored.vm().pending_events(), 5);
    assert!(
        irq.take().is_empty(),
        "nothing is written before the VM runs"
    );
    // The driver runs again: it gives buffers, the device resumes.
    evt.give(6);
    restored.resume();
    let events = evt.events();
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        events[0].body,
        EventBody::Limits {
            device: None,
            limit: 20
        }
    );
    let now = restored.vm().grants(0);
    for (i, event) in events[1..4].iter().enumerate() {
        let (kind, index, record) = now[i];
        assert_eq!(
            event.body,
            EventBody::Reprogram {
                device: 0,
                kind,
                index,
                message: record.message,
                mode: GrantMode::Remapped
            }
        );
        assert_ne!(record.message, before[i].2.message);
        // Programmed with the new message, the vector delivers to its target.
        let delivery = dest.fire(0x100, record.message).unwrap();
        assert_eq!(delivery.dest, before[i].2.dest);
        // The old message selects another VM's entry: blocked, recorded.
        let fault = dest.fire(0x100, before[i].2.message).unwrap_err();
        assert!(matches!(
            fault.reason,
            FaultReason::Remap(RemapFault::SourceIdMismatch { .. })
        ));
    }
    assert_eq!(
        events[4].body,
        EventBody::Revoke {
            device: 0,
            kind: Kind::MsiX,
            index: before[3].1,
            reason: Resource::Irte
        }
    );
    // A request after the events sees what they report: the revoked index is not held.
    let free = encode(&Request {
        device: 0,
        tag: 9,
        op: Operation::Free(pvirq_proto::Indices::Run(pvirq_proto::IndexRange {
            kind: Kind::MsiX,
            first: before[3].1,
            count: 1,
        })),
    });
    assert_eq!(call(&mut restored, &mut req, &free), Status::NotGranted);
    dest.check_invariants().unwrap();

    // The same destination for a driver without the event queue: refused, nothing held.
    let (p, _) = parts(&mem);
    let mut v1 = state.clone();
    v1.acked_features = feature::V1;
    v1.vm.features = feature::V1;
    v1.vm.events = None;
    drop(restored);
    let held = dest.occupancy();
    let refused = PvirqDevice::restore(vm(&dest, 0x100, 20), &v1, p).map(|_| ());
    assert_eq!(
        refused,
        Err(PersistError::GuestCannotBeTold {
            reprogrammed: 3,
            revoked: 1
        })
    );
    assert_eq!(dest.occupancy(), held);
}

#[test]
fn pending_events_the_next_sequence_and_what_is_armed_travel_with_the_state() {
    let host = host();
    let mem = guest_memory();
    let mut req = Driver::new(&mem, 16);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, _irq) = events_device(vm(&host, 0x100, 4), &mem, &req, &evt);
    evt.give(1);
    dev.set_quota(6);
    dev.set_quota(4);
    assert_eq!(evt.events().len(), 1, "sequence 1 written, 2 waits");
    assert_eq!(call(&mut dev, &mut req, &alloc(0, 4, 4)), Status::Ok);
    assert_eq!(call(&mut dev, &mut req, &alloc(1, 2, 2)), Status::NoSpace);
    dev.pause();
    let state = dev.save();
    assert_eq!(
        state.vm.events.as_ref().unwrap().armed,
        [ArmedSnapshot {
            device: 1,
            min_count: 2
        }]
    );
    drop(dev);
    let (p, _) = parts(&mem);
    let (mut restored, report) = PvirqDevice::restore(vm(&host, 0x100, 4), &state, p).unwrap();
    assert!(report.iter().all(|r| r.outcome == Restored::Kept));
    evt.give(2);
    restored.resume();
    let reset = encode(&Request {
        device: 0,
        tag: 0,
        op: Operation::Reset,
    });
    assert_eq!(call(&mut restored, &mut req, &reset), Status::Ok);
    let events = evt.events();
    assert_eq!(
        events,
        [
            Event {
                sequence: 2,
                body: EventBody::Limits {
                    device: None,
                    limit: 4
                }
            },
            Event {
                sequence: 3,
                body: EventBody::Available {
                    device: 1,
                    count: 4
                }
            }
        ]
    );
    host.check_invariants().unwrap();
}

#[test]
fn a_removed_device_stays_removed_across_a_restore() {
    let host = host();
    let mem = guest_memory();
    let mut req = Driver::new(&mem, 16);
    let evt = EventDriver::new(&mem, 8);
    let (mut dev, _irq) = events_device(vm(&host, 0x100, 8), &mem, &req, &evt);
    assert_eq!(call(&mut dev, &mut req, &alloc(0, 2, 2)), Status::Ok);
    drop(dev.remove_device(1).unwrap());
    dev.pause();
    let state = dev.save();
    assert_eq!(state.vm.removed, [1]);
    drop(dev);
    // The VMM gives the gone device's handle a placeholder (here, the same spec).
    let (p, _) = parts(&mem);
    let (mut restored, _) = PvirqDevice::restore(vm(&host, 0x100, 8), &state, p).unwrap();
    assert_eq!(
        call(&mut restored, &mut req, &alloc(1, 1, 1)),
        Status::NoDevice
    );
    assert_eq!(call(&mut restored, &mut req, &alloc(0, 1, 1)), Status::Ok);
    assert_eq!(
        restored.vm().pending_events(),
        1,
        "DEVICE_REMOVED still waits"
    );
    host.check_invariants().unwrap();
}

#[test]
fn a_hostile_event_state_is_refused_with_nothing_held() {
    let host = host();
    let mem = guest_memory();
    let mut req = Driver::new(&mem, 16);
    let evt = EventDriver::new(&mem, 8);
    let (mut dev, _irq) = events_device(vm(&host, 0x100, 8), &mem, &req, &evt);
    assert_eq!(call(&mut dev, &mut req, &alloc(0, 2, 2)), Status::Ok);
    dev.set_quota(8 + 1);
    dev.set_device_share(1, Some(2)).unwrap();
    dev.pause();
    let good = dev.save();
    drop(dev);
    assert_eq!(good.vm.events.as_ref().unwrap().pending.len(), 2);
    let record = |body: EventBody| {
        let mut r = [0u8; EVENT_LEN];
        Event { sequence: 0, body }.encode(&mut r).unwrap();
        r
    };
    let with = |f: &dyn Fn(&mut PvirqDeviceState)| {
        let mut s = good.clone();
        f(&mut s);
        s
    };
    let events = |s: &mut PvirqDeviceState| s.vm.events.as_mut().unwrap().clone();
    let set_events = |s: &mut PvirqDeviceState, e| s.vm.events = Some(e);
    let grants = |e: RestoreError| PersistError::Grants(e);
    let cases: Vec<(PvirqDeviceState, PersistError)> = vec![
        (
            with(&|s| s.version = 3),
            PersistError::UnsupportedVersion(3),
        ),
        (
            with(&|s| s.vm.version = 3),
            grants(RestoreError::UnsupportedVersion(3)),
        ),
        (
            with(&|s| {
                s.acked_features &= !feature::INFO;
                s.vm.features &= !feature::INFO;
            }),
            PersistError::Activate(ActivateError::Dependency(feature::EVENTS)),
        ),
        (
            with(&|s| {
                s.acked_features &= !feature::EVENTS;
                s.vm.features &= !feature::EVENTS;
            }),
            grants(RestoreError::EventsNotNegotiated),
        ),
        (
            with(&|s| {
                let mut e = events(s);
                e.pending[1][0] = 0;
                set_events(s, e);
            }),
            grants(RestoreError::EventRecord {
                position: 1,
                error: pvirq_proto::Error::UnknownEventType(0),
            }),
        ),
        (
            with(&|s| {
                let mut e = events(s);
                e.pending[0][8] = 1;
                set_events(s, e);
            }),
            grants(RestoreError::EventSequence { position: 0 }),
        ),
        (
            with(&|s| {
                let mut e = events(s);
                e.pending.push(record(EventBody::Revoke {
                    device: 0,
                    kind: Kind::MsiX,
                    index: 64,
                    reason: Resource::Irte,
                }));
                set_events(s, e);
            }),
            grants(RestoreError::EventSubject { position: 2 }),
        ),
        (
            with(&|s| {
                let mut e = events(s);
                e.pending.push(record(EventBody::DeviceAdded { device: 2 }));
                set_events(s, e);
            }),
            grants(RestoreError::EventSubject { position: 2 }),
        ),
        (
            with(&|s| {
                let mut e = events(s);
                e.pending.push(record(EventBody::Limits {
                    device: None,
                    limit: 1,
                }));
                set_events(s, e);
            }),
            grants(RestoreError::EventSuperseded { position: 2 }),
        ),
        (
            with(&|s| {
                let mut e = events(s);
                e.armed = vec![ArmedSnapshot {
                    device: 0,
                    min_count: 0,
                }];
                set_events(s, e);
            }),
            grants(RestoreError::Armed { device: 0 }),
        ),
        (
            with(&|s| {
                let mut e = events(s);
                e.armed = vec![ArmedSnapshot {
                    device: 2,
                    min_count: 1,
                }];
                set_events(s, e);
            }),
            grants(RestoreError::Armed { device: 2 }),
        ),
        (
            with(&|s| s.vm.removed = vec![0]),
            grants(RestoreError::Removed { handle: 0 }),
        ),
        (
            with(&|s| s.vm.removed = vec![1, 1]),
            grants(RestoreError::Removed { handle: 1 }),
        ),
        (
            with(&|s| s.vm.removed = vec![2]),
            grants(RestoreError::Removed { handle: 2 }),
        ),
    ];
    for (i, (state, expected)) in cases.iter().enumerate() {
        let (p, _) = parts(&mem);
        let err = PvirqDevice::restore(vm(&host, 0x100, 8), state, p)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(&err, expected, "case {i}");
        assert_eq!(host.occupancy().vectors_used, 0, "case {i}");
    }
    // The untouched state restores.
    let (p, _) = parts(&mem);
    assert!(PvirqDevice::restore(vm(&host, 0x100, 8), &good, p).is_ok());
}

#[test]
fn a_version_1_state_with_the_request_queue_alone_still_restores() {
    let host = host();
    let mem = guest_memory();
    let mut req = Driver::new(&mem, 16);
    let (mut dev, _irq) = active_device(vm(&host, 0x100, 8), &mem, &req.q);
    assert_eq!(call(&mut dev, &mut req, &alloc(0, 2, 2)), Status::Ok);
    dev.pause();
    let mut state = dev.save();
    drop(dev);
    // As version 1 of this crate wrote it: one queue, no event fields.
    state.version = 1;
    state.vm.version = 1;
    let mut json: serde_json::Value = serde_json::to_value(&state).unwrap();
    for field in ["events", "removed", "config_generation", "vm_quota"] {
        json["vm"].as_object_mut().unwrap().remove(field);
    }
    let state: PvirqDeviceState = serde_json::from_value(json).unwrap();
    assert_eq!(state.queues.as_ref().map(Vec::len), Some(1));
    let (p, _) = parts(&mem);
    let (mut restored, report) = PvirqDevice::restore(vm(&host, 0x100, 8), &state, p).unwrap();
    assert!(report.iter().all(|r| r.outcome == Restored::Kept));
    assert_eq!(call(&mut restored, &mut req, &alloc(0, 1, 1)), Status::Ok);
    assert_eq!(restored.occupancy().held, 3);
    host.check_invariants().unwrap();
}
