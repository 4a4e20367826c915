//! Snapshot and restore on the same host, mid-workload, through the device path: the
//! device is paused and saved with a request in flight, the source VM goes away, a new VM
//! is made on the same host and the device restored on it (`PvirqDevice::restore` behind
//! the virtio-mmio front), and the guest driver carries on through the same registers and
//! ring. Every grant still reaches its target through the new VM's routes, the host and
//! the VM hold exactly what they held, and a further ALLOC and FREE are answered as they
//! would have been before.

use pvirq_guest::Options;
use pvirq_host::Vm;
use pvirq_host::model::ModelHost;
use pvirq_host::routes::{MemoryRoutes, RouteBook};
use pvirq_host::snapshot::Restored;
use pvirq_proto::{
    Alloc, Grant, IndexRange, Kind, MsiMessage, Operation, Outcome, Refusal, Resource, Retarget,
    Target,
};
use pvirq_sim::Channel;
use pvirq_sim::channel::ChannelState;
use pvirq_tests::setup::{host, snapshot};
use pvirq_tests::workload::{self, Assigned, DEV_A, DEV_B, Devices, Programmed};
use std::sync::{Arc, Mutex};

const RID_A: u16 = 0x0100;
const RID_B: u16 = 0x0101;
const VCPUS: u32 = 4;

/// A VM for `assigned` on `host`, and its route book.
fn vm(host: &ModelHost, assigned: &Assigned) -> (Vm, Arc<Mutex<RouteBook>>) {
    let routes = MemoryRoutes::kvm_like();
    let book = routes.book();
    let vm = host
        .create_vm(workload::vm_config(assigned, VCPUS), Box::new(routes))
        .unwrap();
    (vm, book)
}

/// What a further request gets: the quota left, an ALLOC of two MSI-X vectors on B (its
/// grants, indices and messages), the FREE of them, and an ALLOC over the quota (its
/// refusal). Leaves the VM as it found it.
#[derive(Debug, PartialEq, Eq)]
struct Probe {
    quota_remaining: u32,
    granted: Vec<Grant>,
    freed: u32,
    over_quota: Option<Refusal>,
}

fn probe(ch: &mut Channel) -> Probe {
    let quota_remaining = ch.driver().query(DEV_B).unwrap().quota_remaining;
    let t = [Target::new(2, 0x90), Target::new(3, 0x91)];
    let mut grants = [Grant::new(0, MsiMessage::default()); 2];
    let granted = ch
        .driver()
        .alloc(DEV_B, Alloc::any(Kind::MsiX, 2, &t), &mut grants)
        .unwrap()
        .grants
        .to_vec();
    let first = granted[0].index();
    assert_eq!(granted[1].index(), first + 1, "a run");
    let freed = ch
        .driver()
        .free(
            DEV_B,
            IndexRange {
                kind: Kind::MsiX,
                first,
                count: 2,
            },
        )
        .unwrap()
        .count;
    let many: Vec<Target> = (0..8).map(|i| Target::new(0, 0xA0 + i)).collect();
    let mut grants = [Grant::new(0, MsiMessage::default()); 8];
    let over = Alloc {
        kind: Kind::Ims,
        index: pvirq_proto::IndexSpec::Any,
        min: 8,
        max: 8,
        pasid: Some(workload::PASID),
        targeting: pvirq_proto::Targeting::PerVector,
        targets: &many,
    };
    let over_quota = ch
        .driver()
        .alloc(DEV_A, over, &mut grants)
        .unwrap_err()
        .refusal();
    Probe {
        quota_remaining,
        granted,
        freed,
        over_quota,
    }
}

#[test]
fn a_snapshot_restored_on_the_same_host_mid_workload_delivers_every_grant_with_exact_counts() {
    let host = host(256, 4);
    let devices = Devices::new();
    let assigned = devices.on(RID_A, RID_B);
    let (vm0, book0) = vm(&host, &assigned);
    let mut ch = Channel::for_vm(vm0, Options::default()).unwrap();
    let mut programmed: Vec<Programmed> = workload::run(&mut ch, &devices, VCPUS);
    assert_eq!(programmed.len(), 14);
    workload::check_delivery(&host, &assigned, &programmed, &book0);
    // The probe changes nothing it does not undo.
    let before = snapshot(&host, &[ch.vm()]);
    let probed = probe(&mut ch);
    assert_eq!(
        probed.over_quota,
        Some(Refusal::NoSpace {
            resource: Resource::VmQuota,
            available: workload::QUOTA - 14
        })
    );
    assert_eq!(snapshot(&host, &[ch.vm()]), before);
    let grants = ch.vm().snapshot();
    let held = ch.vm().occupancy();
    let host_held = host.occupancy();

    // The VMM pauses the VM; a vCPU had just asked to move two IMS vectors.
    let state = ch.pause_and_save();
    let moved = [Target::new(3, 0xB0), Target::new(0, 0xB1)];
    let range = IndexRange {
        kind: Kind::Ims,
        first: 4,
        count: 2,
    };
    let in_flight = ch
        .driver()
        .submit(DEV_A, Operation::Retarget(Retarget::run(range, &moved)))
        .unwrap();
    ch.driver().poll().unwrap();
    assert!(!ch.driver().is_complete(in_flight).unwrap(), "paused");
    let json = serde_json::to_string(&state).unwrap();
    // The source VMM exits: everything it held goes back to the host.
    let (guest, source) = ch.detach();
    drop(source);
    let empty = pvirq_tests::setup::host(256, 4).occupancy();
    assert_eq!(
        (host.occupancy().units, host.occupancy().vectors_used),
        (empty.units, 0)
    );

    // A new VMM on the same host restores the device on a new VM.
    let (vm1, book1) = vm(&host, &assigned);
    let state: ChannelState = serde_json::from_str(&json).unwrap();
    let (restored, report) = guest.restore(vm1, &state).unwrap();
    let mut ch = guest.attach(restored);
    assert_eq!(
        report.len(),
        programmed.len(),
        "one per vector, the MSI block's too"
    );
    assert!(
        report.iter().all(|r| r.outcome == Restored::Kept),
        "{report:?}"
    );
    assert_eq!(
        host.occupancy(),
        host_held,
        "the host holds exactly what it held"
    );
    assert_eq!(ch.vm().occupancy(), held, "and so does the VM");
    // The request the guest made before the snapshot is answered by the restored device.
    ch.driver().poll().unwrap();
    let mut reply = vec![0u8; ch.driver().max_reply_len()];
    let done = ch
        .driver()
        .take(in_flight, &mut reply)
        .unwrap()
        .expect("answered");
    assert!(
        matches!(done.outcome, Outcome::Retargeted { count: 2, .. }),
        "{done:?}"
    );
    workload::moved(&mut programmed, DEV_A, Kind::Ims, 4, &moved);
    let mut expected = grants.clone();
    for g in &mut expected.devices[DEV_A as usize].grants {
        if g.kind == Kind::Ims.to_wire() && (4..6).contains(&g.index) {
            let t = moved[(g.index - 4) as usize];
            g.dest = Some((t.vcpu(), t.vector()));
        }
    }
    assert_eq!(ch.vm().snapshot(), expected);

    // Every grant, fired from its device, reaches its target through the new VM's routes;
    // the old VM's routes see nothing.
    let old = book0.lock().unwrap().delivered();
    workload::check_delivery(&host, &assigned, &programmed, &book1);
    assert_eq!(book0.lock().unwrap().delivered(), old);
    assert_eq!(
        probe(&mut ch),
        probed,
        "a further ALLOC and FREE behave as before"
    );
    host.check_invariants().unwrap();
}
