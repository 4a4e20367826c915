//! Live migration between two hosts in one process, through the device path: the source's
//! device is paused and saved, the guest detached, the device restored on a fresh VM of
//! the destination host, and the guest driver carries on against it. The assigned
//! devices' state (what the guest programmed into their MSI-X tables and IMS slots)
//! travels with them; on the destination they have other requester IDs.
//!
//! Where the destination gives every grant the same message (same occupancy), nothing
//! changes for the guest: every grant delivers there. The source keeps everything until
//! the destination is confirmed, and a destination that cannot give the same messages is
//! refused with nothing held there (for a driver without the event queue), the guest going
//! back to the source, which resumes. A driver with the event queue is told instead: the
//! destination reprograms and revokes through events ([DEV-27]).

mod events_guest;

use events_guest::EventsGuest;
use pvirq_guest::Options;
use pvirq_host::Vm;
use pvirq_host::device::PersistError;
use pvirq_host::model::{FaultReason, ModelHost, RemapFault};
use pvirq_host::routes::{MemoryRoutes, RouteBook};
use pvirq_host::snapshot::Restored;
use pvirq_proto::{
    Alloc, EventBody, Grant, IndexRange, IndexSpec, Kind, MsiMessage, Operation, Outcome, Request,
    Resource, Retarget, Status, Target, feature,
};
use pvirq_sim::{Channel, SimError};
use pvirq_tests::setup::{dev, host, vm_config};
use pvirq_tests::workload::{self, Assigned, DEV_A, DEV_B, Devices, Programmed};
use std::sync::{Arc, Mutex};

const VCPUS: u32 = 4;
/// The devices' requester IDs on the source and on the destination.
const SOURCE: (u16, u16) = (0x0100, 0x0101);
const DEST: (u16, u16) = (0x0300, 0x0301);

fn vm(host: &ModelHost, assigned: &Assigned) -> (Vm, Arc<Mutex<RouteBook>>) {
    let routes = MemoryRoutes::kvm_like();
    let book = routes.book();
    let vm = host
        .create_vm(workload::vm_config(assigned, VCPUS), Box::new(routes))
        .unwrap();
    (vm, book)
}

/// IRTEs and host vectors in use.
fn held(host: &ModelHost) -> (u32, u32) {
    let o = host.occupancy();
    (o.units.iter().map(|u| u.used).sum(), o.vectors_used)
}

#[test]
fn a_migration_to_a_host_giving_the_same_messages_delivers_every_grant_there_and_the_source_releases_once_confirmed()
 {
    let (source_host, crowded_host, dest_host) = (host(256, 4), host(256, 4), host(256, 4));
    let devices = Devices::new();
    let on_source = devices.on(SOURCE.0, SOURCE.1);
    let on_dest = devices.on(DEST.0, DEST.1);
    let (vm0, source_book) = vm(&source_host, &on_source);
    let mut ch = Channel::for_vm(vm0, Options::default()).unwrap();
    let mut programmed = workload::run(&mut ch, &devices, VCPUS);
    workload::check_delivery(&source_host, &on_source, &programmed, &source_book);
    let source_held = held(&source_host);
    let grants = programmed.len();

    // A first destination where another VM holds IRTEs 0..3: the grants there would need
    // new messages, and this driver cannot be told. Refused, nothing held there; the guest
    // goes back to the source, which handles what it sent meanwhile.
    let mut squatter =
        pvirq_tests::setup::channel(&crowded_host, vm_config(8, vec![dev(0x200, 0, 8, 0)]));
    let t = [Target::new(0, 0x30); 3];
    squatter
        .driver()
        .alloc_irq_vectors(
            0,
            Kind::MsiX,
            3,
            &t,
            &mut [Grant::new(0, MsiMessage::default()); 3],
        )
        .unwrap();
    let crowded = held(&crowded_host);
    let state = ch.pause_and_save();
    let moved = [Target::new(2, 0xB0)];
    let in_flight = ch
        .driver()
        .submit(
            DEV_B,
            Operation::Retarget(Retarget::run(
                IndexRange {
                    kind: Kind::MsiX,
                    first: 0,
                    count: 1,
                },
                &moved,
            )),
        )
        .unwrap();
    let (guest, source) = ch.detach();
    let (vm1, _) = vm(&crowded_host, &devices.on(DEST.0, DEST.1));
    let refused = guest.restore(vm1, &state).map(|_| ()).unwrap_err();
    assert!(
        matches!(
            refused,
            SimError::Restore(PersistError::GuestCannotBeTold { revoked: 0, .. })
        ),
        "{refused}"
    );
    assert_eq!(
        held(&crowded_host),
        crowded,
        "nothing held on the refusing host"
    );
    assert_eq!(
        held(&source_host),
        source_held,
        "the source kept everything"
    );
    let mut ch = guest.attach(source);
    ch.driver().poll().unwrap();
    let mut reply = vec![0u8; ch.driver().max_reply_len()];
    let done = ch
        .driver()
        .take(in_flight, &mut reply)
        .unwrap()
        .expect("the source resumed");
    assert!(matches!(done.outcome, Outcome::Retargeted { count: 1, .. }));
    workload::moved(&mut programmed, DEV_B, Kind::MsiX, 0, &moved);
    workload::check_delivery(&source_host, &on_source, &programmed, &source_book);

    // The destination with the source's occupancy: every grant keeps its message.
    let state = ch.pause_and_save();
    let state: pvirq_sim::channel::ChannelState =
        serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    let (guest, mut source) = ch.detach();
    let (vm2, dest_book) = vm(&dest_host, &on_dest);
    let (dest, report) = guest.restore(vm2, &state).unwrap();
    let mut ch = guest.attach(dest);
    assert_eq!(report.len(), grants);
    assert!(
        report.iter().all(|r| r.outcome == Restored::Kept),
        "{report:?}"
    );
    assert_eq!(held(&dest_host), source_held, "the same IRTEs and vectors");

    // Until confirmed, the source keeps every grant: its devices' messages still land.
    assert_eq!(held(&source_host), source_held);
    assert_eq!(source.vm().occupancy().held, ch.vm().occupancy().held);
    workload::check_delivery(&source_host, &on_source, &programmed, &source_book);
    // The destination delivers every grant, from its own devices, through its own routes.
    workload::check_delivery(&dest_host, &on_dest, &programmed, &dest_book);

    // Confirmed: the source releases everything; its devices' messages go nowhere.
    assert_eq!(source.finish_migration() as usize, grants);
    assert_eq!(held(&source_host), (0, 0));
    assert_eq!(source.vm().occupancy().held, 0);
    let delivered = source_book.lock().unwrap().delivered();
    for p in &programmed {
        let fault = on_source.fire(&source_host, p).unwrap_err();
        assert!(
            matches!(
                fault.reason,
                FaultReason::Remap(RemapFault::EntryNotPresent { .. })
            ),
            "{p:?}: {fault:?}"
        );
    }
    assert_eq!(source_book.lock().unwrap().delivered(), delivered);

    // The guest goes on at the destination: a further ALLOC, and its FREE.
    let target = Target::new(3, 0xC0);
    let grant = ch
        .driver()
        .alloc_irq_at(DEV_B, Kind::MsiX, IndexSpec::At(2), target, None)
        .unwrap();
    let extra = workload::Programmed {
        device: DEV_B,
        kind: Kind::MsiX,
        index: 2,
        message: grant.message(),
        target,
    };
    devices.program(&extra);
    workload::check_delivery(&dest_host, &on_dest, &[extra], &dest_book);
    let free = IndexRange {
        kind: Kind::MsiX,
        first: 2,
        count: 1,
    };
    assert_eq!(ch.driver().free(DEV_B, free).unwrap().count, 1);
    assert!(on_dest.fire(&dest_host, &extra).is_err());
    assert_eq!(held(&dest_host), source_held);
    workload::check_delivery(&dest_host, &on_dest, &programmed, &dest_book);
    dest_host.check_invariants().unwrap();
    source_host.check_invariants().unwrap();
}

/// What the event-queue driver negotiates: version 1's bits, INFO and EVENTS.
const WITH_EVENTS: u64 = feature::V1 | feature::INFO | feature::EVENTS;

/// The grants `vm` holds on `device`, as the guest programs them (the VM's record of each
/// message is what the driver was given), with the targets they deliver to.
fn programmed(vm: &Vm, device: u32) -> Vec<Programmed> {
    vm.grants(device)
        .into_iter()
        .map(|(kind, index, record)| {
            let dest = record.dest.expect("an active grant");
            Programmed {
                device,
                kind,
                index,
                message: record.message,
                target: Target::new(dest.apic_id, dest.vector),
            }
        })
        .collect()
}

fn alloc<'a>(device: u32, alloc: Alloc<'a>) -> Request<'a> {
    Request {
        device,
        tag: u64::from(device),
        op: Operation::Alloc(alloc),
    }
}

/// A destination with other occupancy: another VM holds some of the remapping entries the
/// grants had, and there are fewer in all. The guest, which negotiated the event queue, is
/// told in order which grants got new messages and which could not be backed; once it
/// reprograms, every grant left delivers to its target there. The source holds everything
/// until confirmed. Afterwards the revoked vectors come back when the other VM frees
/// (AVAILABLE).
#[test]
fn a_migration_to_a_host_with_other_occupancy_reprograms_and_revokes_through_the_event_queue() {
    let (source_host, dest_host) = (host(256, 4), host(12, 4));
    let devices = Devices::new();
    let on_source = devices.on(SOURCE.0, SOURCE.1);
    let on_dest = devices.on(DEST.0, DEST.1);
    let (vm0, source_book) = vm(&source_host, &on_source);
    let mut guest = EventsGuest::new(vm0.clone(), WITH_EVENTS, 12);
    // Remapping entries on the source: A's MSI-X 0..5, B's 5..8, A's MSI block 8..12.
    let t: Vec<Target> = (0..5)
        .map(|i| Target::new(i % VCPUS, 0x40 + i as u8))
        .collect();
    for (device, request) in [
        (DEV_A, Alloc::any(Kind::MsiX, 5, &t)),
        (DEV_B, Alloc::any(Kind::MsiX, 3, &t[..3])),
        (DEV_A, Alloc::any(Kind::Msi, 4, &t[..4])),
    ] {
        let (status, count, _) = guest.call(&alloc(device, request));
        assert_eq!((status, count), (Status::Ok, u32::from(request.max)));
    }
    let mut granted = programmed(&vm0, DEV_A);
    granted.extend(programmed(&vm0, DEV_B));
    assert_eq!(granted.len(), 12);
    for p in &granted {
        devices.program(p);
    }
    workload::check_delivery(&source_host, &on_source, &granted, &source_book);
    // An event handled on the source: the numbering goes on at the destination.
    let share = guest
        .device()
        .lock()
        .unwrap()
        .set_device_share(DEV_B, Some(4));
    assert_eq!(share, Ok(()));
    let events = guest.events();
    assert_eq!(events.len(), 1);
    let source_held = held(&source_host);

    // The destination: 12 remapping entries, 3 of them another VM's.
    let mut squatter =
        pvirq_tests::setup::channel(&dest_host, vm_config(8, vec![dev(0x200, 0, 8, 0)]));
    let three = [Target::new(0, 0x30); 3];
    squatter
        .driver()
        .alloc_irq_vectors(
            0,
            Kind::MsiX,
            3,
            &three,
            &mut [Grant::new(0, MsiMessage::default()); 3],
        )
        .unwrap();
    let state = guest.pause_and_save();
    let (vm1, dest_book) = vm(&dest_host, &on_dest);
    let (front, report) = guest.restore_on(vm1.clone(), &state).unwrap();
    let fates: Vec<(u32, Kind, &str)> = report
        .iter()
        .map(|r| {
            let fate = match r.outcome {
                Restored::Kept => "kept",
                Restored::Reprogrammed(_) => "reprogrammed",
                Restored::Revoked(Resource::Irte) => "revoked: irte",
                Restored::Revoked(_) => "revoked: other",
            };
            (r.device, r.kind, fate)
        })
        .collect();
    let expected: Vec<(u32, Kind, &str)> = [(DEV_A, Kind::Msi, "kept", 4)]
        .into_iter()
        .chain([(DEV_A, Kind::MsiX, "reprogrammed", 5)])
        .chain([(DEV_B, Kind::MsiX, "revoked: irte", 3)])
        .flat_map(|(d, k, f, n)| std::iter::repeat_n((d, k, f), n))
        .collect();
    assert_eq!(fates, expected);
    // Until the guest runs there, the source holds and delivers everything.
    assert_eq!(held(&source_host), source_held);
    workload::check_delivery(&source_host, &on_source, &granted, &source_book);

    let source = guest.attach(front);
    let events = guest.events();
    assert_eq!(events.first().map(|e| e.sequence), Some(2));
    let mut revoked = Vec::new();
    let mut order = Vec::new();
    for event in &events {
        match event.body {
            EventBody::Reprogram {
                device,
                kind,
                index,
                message,
                ..
            } => {
                // Mask, program the new message, unmask.
                let p = granted
                    .iter_mut()
                    .find(|p| (p.device, p.kind, p.index) == (device, kind, index))
                    .expect("a grant the driver holds");
                assert_ne!(p.message, message);
                p.message = message;
                devices.program(p);
                order.push(("reprogram", device, index));
            }
            EventBody::Revoke {
                device,
                kind,
                index,
                reason,
            } => {
                assert_eq!(reason, Resource::Irte);
                let at = granted
                    .iter()
                    .position(|p| (p.device, p.kind, p.index) == (device, kind, index))
                    .expect("a grant the driver holds");
                revoked.push(granted.remove(at));
                order.push(("revoke", device, index));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        order,
        (0..5)
            .map(|i| ("reprogram", DEV_A, i))
            .chain((0..3).map(|i| ("revoke", DEV_B, i)))
            .collect::<Vec<_>>()
    );
    // Every grant left delivers to its target at the destination, through its routes.
    workload::check_delivery(&dest_host, &on_dest, &granted, &dest_book);
    for r in &revoked {
        assert!(on_dest.fire(&dest_host, r).is_err(), "{r:?}");
    }
    assert_eq!(vm1.occupancy().held, 9, "the revoked grants' quota is free");

    // Confirmed: only now does the source let go.
    assert_eq!(held(&source_host), source_held);
    assert_eq!(source.device().lock().unwrap().finish_migration(), 12);
    assert_eq!(held(&source_host), (0, 0));

    // The guest wants B's vectors back: refused (no entry free), then told when the other
    // VM gave its entries back.
    let (status, _, _) = guest.call(&alloc(DEV_B, Alloc::any(Kind::MsiX, 3, &t[..3])));
    assert_eq!(status, Status::NoSpace);
    squatter
        .driver()
        .free(
            0,
            IndexRange {
                kind: Kind::MsiX,
                first: 0,
                count: 3,
            },
        )
        .unwrap();
    assert!(guest.events().is_empty());
    guest.device().lock().unwrap().resources_changed();
    let events = guest.events();
    assert_eq!(
        events.iter().map(|e| e.body).collect::<Vec<_>>(),
        [EventBody::Available {
            device: DEV_B,
            count: 3
        }]
    );
    let (status, count, _) = guest.call(&alloc(DEV_B, Alloc::any(Kind::MsiX, 3, &t[..3])));
    assert_eq!((status, count), (Status::Ok, 3));
    let again = programmed(&vm1, DEV_B);
    for p in &again {
        devices.program(p);
    }
    workload::check_delivery(&dest_host, &on_dest, &again, &dest_book);
    workload::check_delivery(&dest_host, &on_dest, &granted, &dest_book);
    dest_host.check_invariants().unwrap();
    source_host.check_invariants().unwrap();
}
