//! Live migration between two hosts in one process, through the device path: the source's
//! device is paused and saved, the guest detached, the device restored on a fresh VM of
//! the destination host, and the guest driver carries on against it. The assigned
//! devices' state (what the guest programmed into their MSI-X tables and IMS slots)
//! travels with them; on the destination they have other requester IDs.
//!
//! Where the destination gives every grant the same message (same occupancy), nothing
//! changes for the guest: every grant delivers there. The source keeps everything until
//! the destination is confirmed, and a destination that cannot give the same messages is
//! refused with nothing held there, the guest going back to the source, which resumes.

use pvirq_guest::Options;
use pvirq_host::Vm;
use pvirq_host::device::PersistError;
use pvirq_host::model::{FaultReason, ModelHost, RemapFault};
use pvirq_host::routes::{MemoryRoutes, RouteBook};
use pvirq_host::snapshot::Restored;
use pvirq_proto::{
    Grant, IndexRange, IndexSpec, Kind, MsiMessage, Operation, Outcome, Retarget, Target,
};
use pvirq_sim::{Channel, SimError};
use pvirq_tests::setup::{dev, host, vm_config};
use pvirq_tests::workload::{self, Assigned, DEV_B, Devices};
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
