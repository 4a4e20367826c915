//! `KvmRoutes` against real KVM (skipped without `/dev/kvm`): alone through the
//! `RouteLayer` trait, and as a VM's route layer under the host's transactions. Delivery is
//! observed in the IRR of vCPUs that never run.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::test_vm::{LapicVm, set};
use super::*;
use crate::layers::{GuestDest, RouteLayer};
use crate::{DeviceSpec, Host, HostConfig, LayerError, Vm, VmConfig};
use pvirq_proto::{
    Alloc, Grant, IndexRange, IndexSpec, Kind, Operation, Outcome, Refusal, Request, Resource,
    Response, Retarget, Target,
};

const SOURCE: u16 = 0x0100;

fn dest(vcpu: u32, vector: u8) -> GuestDest {
    GuestDest { vcpu, vector }
}

fn vm_with(host: &Host, routes: KvmRoutes) -> Vm {
    let config = VmConfig {
        quota: 64,
        num_vcpus: 2,
        max_batch: 64,
        devices: vec![DeviceSpec {
            requester_id: SOURCE,
            unit: 0,
            msi_max: 0,
            msix_table_size: 64,
            ims_slots: 0,
        }],
    };
    host.create_vm(config, Box::new(routes)).unwrap()
}

fn call(vm: &Vm, op: Operation<'_>) -> Outcome<'static> {
    let reply = vm.call(&Request {
        device: 0,
        tag: 7,
        op,
    });
    // Leak the reply so the outcome can borrow it for the rest of the test.
    let reply: &'static [u8] = Box::leak(reply.into_boxed_slice());
    Response::decode(reply).unwrap().outcome
}

fn alloc(vm: &Vm, targets: &[Target]) -> Outcome<'static> {
    call(
        vm,
        Operation::Alloc(Alloc {
            kind: Kind::MsiX,
            index: IndexSpec::Any,
            min: targets.len() as u16,
            max: targets.len() as u16,
            pasid: None,
            targets,
        }),
    )
}

fn granted(outcome: Outcome<'static>) -> Vec<Grant> {
    match outcome {
        Outcome::Allocated { grants, .. } => grants.to_vec(),
        other => panic!("not granted: {other:?}"),
    }
}

#[test]
fn staged_routes_go_live_at_commit_and_abort_recycles_their_eventfds() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(2);
    let mut routes = KvmRoutes::new(KvmRouteTable::new(vm.vm.clone()));
    let available = routes.available();
    let a = routes.stage_add(dest(0, 0x40)).unwrap();
    let b = routes.stage_add(dest(1, 0x41)).unwrap();
    assert_eq!((a, b), (24, 25), "route ids are the GSIs");
    assert_eq!(routes.route(a), None, "staged is not live");
    assert!(routes.fire(a).is_err());
    assert_eq!(routes.eventfds(), 2);
    routes.abort();
    assert_eq!(
        (routes.eventfds(), routes.spare_eventfds()),
        (0, 2),
        "the aborted batch's eventfds are detached and kept for reuse"
    );
    assert_eq!((routes.available(), routes.table().len()), (available, 0));
    assert_eq!(routes.counters().aborts(), 1);

    let a = routes.stage_add(dest(0, 0x40)).unwrap();
    let b = routes.stage_add(dest(1, 0x41)).unwrap();
    assert_eq!(
        routes.spare_eventfds(),
        0,
        "the spares were used, none created"
    );
    routes.commit().unwrap();
    assert_eq!(routes.route(b), Some(dest(1, 0x41)));
    routes.fire(a).unwrap();
    routes.fire(b).unwrap();
    let expected = set(&[(0, 0x40), (1, 0x41)]);
    assert_eq!(vm.wait_pending(&expected), expected);

    // Retarget and remove: invisible until the commit, then the removed eventfd is dropped.
    routes.stage_update(a, dest(1, 0x42)).unwrap();
    routes.stage_remove(b).unwrap();
    assert_eq!(routes.route(a), Some(dest(0, 0x40)));
    assert_eq!(routes.live(), 2);
    assert_eq!(
        routes.stage_remove(b),
        Err(LayerError::NoEntry(Resource::GuestRoute)),
        "a route is removed once"
    );
    routes.commit().unwrap();
    assert_eq!(routes.route(a), Some(dest(1, 0x42)));
    assert_eq!(
        (routes.live(), routes.eventfds(), routes.spare_eventfds()),
        (1, 1, 1)
    );
    assert_eq!(
        routes.fire(b),
        Err(LayerError::NoEntry(Resource::GuestRoute))
    );
    routes.fire(a).unwrap();
    let expected = set(&[(0, 0x40), (1, 0x41), (1, 0x42)]);
    assert_eq!(vm.wait_pending(&expected), expected);
    assert_eq!(routes.available(), available - 1);
    assert_eq!(routes.counters().commits(), 2);
    assert_eq!(routes.counters().fired(), 3);
    assert_eq!(
        routes.stage_update(999, dest(0, 0x40)),
        Err(LayerError::NoEntry(Resource::GuestRoute))
    );
}

#[test]
fn each_request_commits_once_and_grants_deliver_where_the_guest_asked() {
    if !require_kvm_or_skip() {
        return;
    }
    let lapics = LapicVm::new(2);
    let routes = KvmRoutes::new(KvmRouteTable::new(lapics.vm.clone()));
    let counters = routes.counters();
    let host = Host::new(&HostConfig::default()).unwrap();
    let vm = vm_with(&host, routes);
    let targets: Vec<Target> = (0..8u8)
        .map(|i| Target::new(u32::from(i % 2), 0x50 + i))
        .collect();
    let grants = granted(alloc(&vm, &targets));
    assert_eq!(
        counters.commits(),
        1,
        "eight routes, one KVM_SET_GSI_ROUTING"
    );
    for (grant, target) in grants.iter().zip(&targets) {
        let delivery = host.fire(SOURCE, grant.message()).unwrap();
        assert_eq!(
            (delivery.vcpu, delivery.vector),
            (target.vcpu(), target.vector())
        );
    }
    let mut expected: BTreeSet<_> = targets
        .iter()
        .map(|t| (t.vcpu() as usize, t.vector()))
        .collect();
    assert_eq!(lapics.wait_pending(&expected), expected);

    // Retarget four vectors: one commit; the same messages now reach the new targets.
    let moved: Vec<Target> = (0..4u8).map(|i| Target::new(1, 0x70 + i)).collect();
    let outcome = call(
        &vm,
        Operation::Retarget(Retarget {
            range: IndexRange {
                kind: Kind::MsiX,
                first: grants[0].index(),
                count: 4,
            },
            targets: &moved,
        }),
    );
    assert!(matches!(outcome, Outcome::Retargeted { count: 4, .. }));
    assert_eq!(counters.commits(), 2);
    for grant in &grants[..4] {
        host.fire(SOURCE, grant.message()).unwrap();
    }
    expected.extend(moved.iter().map(|t| (1, t.vector())));
    assert_eq!(lapics.wait_pending(&expected), expected);

    // Free two, then reset the rest: one commit each, and the routes are gone.
    let outcome = call(
        &vm,
        Operation::Free(IndexRange {
            kind: Kind::MsiX,
            first: grants[6].index(),
            count: 2,
        }),
    );
    assert!(matches!(outcome, Outcome::Freed { count: 2, .. }));
    assert_eq!(counters.commits(), 3);
    assert!(host.fire(SOURCE, grants[6].message()).is_err());
    assert!(matches!(
        call(&vm, Operation::Reset),
        Outcome::Reset { count: 6, .. }
    ));
    assert_eq!(counters.commits(), 4);
    vm.with_routes(|r| {
        assert_eq!(r.live(), 0);
        assert_eq!(r.available(), 4056);
    });
    assert_eq!(counters.fired(), 12);
}

#[test]
fn a_refused_commit_rolls_back_the_batch() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(2);
    // GSIs 4090..4100: routes past 4095 make KVM refuse the whole table.
    let config = RouteTableConfig {
        gsi_range: 4090..4100,
        irqchip_routes: IrqchipRoutes::Omit,
    };
    let table = KvmRouteTable::with_unchecked_config(vm.vm.clone(), config);
    let mut routes = KvmRoutes::new(table);
    let a = routes.stage_add(dest(0, 0x40)).unwrap();
    let b = routes.stage_add(dest(0, 0x41)).unwrap();
    routes.commit().unwrap();
    let before: Vec<_> = routes.table().routes().collect();
    let available = routes.available();

    routes.stage_update(a, dest(1, 0x50)).unwrap();
    routes.stage_remove(b).unwrap();
    let added: Vec<_> = (0..6)
        .map(|i| routes.stage_add(dest(1, 0x60 + i)).unwrap())
        .collect();
    assert_eq!(added.last(), Some(&4097));
    let err = routes.commit().unwrap_err();
    assert!(
        matches!(
            &err,
            LayerError::Failed {
                resource: Resource::GuestRoute,
                ..
            }
        ),
        "{err:?}"
    );
    // Nothing of the batch is live, in the layer or in the table; its eventfds are detached
    // and spare.
    assert_eq!(routes.table().routes().collect::<Vec<_>>(), before);
    assert_eq!(routes.available(), available);
    assert_eq!(
        (routes.live(), routes.eventfds(), routes.spare_eventfds()),
        (2, 2, 6)
    );
    assert_eq!(routes.route(a), Some(dest(0, 0x40)));
    assert!(added.iter().all(|id| routes.route(*id).is_none()));
    let counters = routes.counters();
    assert_eq!((counters.commits(), counters.failed_commits()), (1, 1));
    // KVM kept the old table: both routes still deliver where they did.
    routes.fire(a).unwrap();
    routes.fire(b).unwrap();
    let expected = set(&[(0, 0x40), (0, 0x41)]);
    assert_eq!(vm.wait_pending(&expected), expected);
}

#[test]
fn a_refused_commit_under_a_request_refuses_it_and_releases_the_host_side() {
    if !require_kvm_or_skip() {
        return;
    }
    let lapics = LapicVm::new(2);
    let config = RouteTableConfig {
        gsi_range: 4094..4100,
        irqchip_routes: IrqchipRoutes::Omit,
    };
    let table = KvmRouteTable::with_unchecked_config(lapics.vm.clone(), config);
    let host = Host::new(&HostConfig::default()).unwrap();
    let vm = vm_with(&host, KvmRoutes::new(table));
    let before = host.occupancy();

    // Four routes reach GSI 4097: KVM refuses, the guest gets DEVICE_ERROR(GuestRoute).
    let targets = [0x40, 0x41, 0x42, 0x43].map(|v| Target::new(0, v));
    let outcome = alloc(&vm, &targets);
    assert_eq!(
        outcome,
        Outcome::Refused(Refusal::DeviceError {
            resource: Resource::GuestRoute
        })
    );
    assert_eq!(host.occupancy(), before, "IRTEs and host vectors released");
    assert_eq!(vm.occupancy().held, 0);
    vm.with_routes(|r| assert_eq!((r.live(), r.available()), (0, 6)));

    // The GSIs came back: two routes fit below 4096 and deliver.
    let targets = [Target::new(1, 0x44), Target::new(0, 0x45)];
    let grants = granted(alloc(&vm, &targets));
    for grant in &grants {
        host.fire(SOURCE, grant.message()).unwrap();
    }
    let expected = set(&[(1, 0x44), (0, 0x45)]);
    assert_eq!(lapics.wait_pending(&expected), expected);
    host.check_invariants().unwrap();
}

#[test]
fn exhausted_routes_are_a_typed_refusal() {
    if !require_kvm_or_skip() {
        return;
    }
    let lapics = LapicVm::new(2);
    let config = RouteTableConfig {
        gsi_range: 24..27,
        ..RouteTableConfig::default()
    };
    let mut routes = KvmRoutes::new(KvmRouteTable::with_config(lapics.vm.clone(), config).unwrap());
    for vector in 0x40..0x43 {
        routes.stage_add(dest(0, vector)).unwrap();
    }
    assert_eq!(
        routes.stage_add(dest(0, 0x43)),
        Err(LayerError::Exhausted(Resource::GuestRoute))
    );
    routes.abort();

    let host = Host::new(&HostConfig::default()).unwrap();
    let vm = vm_with(&host, routes);
    let targets = [0x40, 0x41, 0x42, 0x43].map(|v| Target::new(1, v));
    assert_eq!(
        alloc(&vm, &targets),
        Outcome::Refused(Refusal::NoSpace {
            resource: Resource::GuestRoute,
            available: 3
        })
    );
    let grants = granted(alloc(&vm, &targets[..3]));
    host.fire(SOURCE, grants[2].message()).unwrap();
    assert_eq!(lapics.wait_pending(&set(&[(1, 0x42)])), set(&[(1, 0x42)]));
}

#[test]
fn apic_ids_map_vcpus_to_message_destinations() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(2);
    let table = KvmRouteTable::new(Arc::clone(&vm.vm));
    let mut routes = KvmRoutes::with_apic_ids(table, ApicIds::Table(vec![1, 0]));
    let a = routes.stage_add(dest(0, 0x40)).unwrap();
    routes.commit().unwrap();
    assert!(matches!(
        routes.stage_add(dest(2, 0x41)),
        Err(LayerError::Failed {
            resource: Resource::GuestRoute,
            ..
        })
    ));
    routes.abort();
    routes.fire(a).unwrap();
    // vCPU 0 of the guest is the vCPU with APIC ID 1.
    assert_eq!(vm.wait_pending(&set(&[(1, 0x40)])), set(&[(1, 0x40)]));
}

#[test]
fn a_refused_irqfd_fails_the_request_and_leaves_nothing_staged() {
    if !require_kvm_or_skip() {
        return;
    }
    // Without an in-kernel irqchip KVM refuses every KVM_IRQFD, after the route was staged.
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let vm = Arc::new(kvm.create_vm().unwrap());
    let mut routes = KvmRoutes::new(KvmRouteTable::new(Arc::clone(&vm)));
    let available = routes.available();
    let err = routes.stage_add(dest(0, 0x40)).unwrap_err();
    assert!(
        matches!(
            err,
            LayerError::Failed {
                resource: Resource::GuestRoute,
                ..
            }
        ),
        "{err:?}"
    );
    // The half-staged route poisons the batch: a commit rolls it back instead.
    assert!(routes.commit().is_err());
    assert_eq!((routes.available(), routes.table().len()), (available, 0));
    assert_eq!((routes.live(), routes.eventfds()), (0, 0));
    assert_eq!(routes.spare_eventfds(), 1, "the refused eventfd came back");
    let counters = routes.counters();
    assert_eq!(counters.commits(), 0);
    assert_eq!(
        (counters.failed_commits(), counters.aborts()),
        (0, 1),
        "KVM is never sent a table with the half-staged route"
    );

    // Under a request: DEVICE_ERROR naming the guest routes, and the host side released.
    let host = Host::new(&HostConfig::default()).unwrap();
    let vm = vm_with(&host, routes);
    let before = host.occupancy();
    let targets = [Target::new(0, 0x40), Target::new(1, 0x41)];
    assert_eq!(
        alloc(&vm, &targets),
        Outcome::Refused(Refusal::DeviceError {
            resource: Resource::GuestRoute
        })
    );
    assert_eq!(host.occupancy(), before);
    vm.with_routes(|r| assert_eq!((r.live(), r.available()), (0, available)));
}

#[test]
fn reserved_eventfds_serve_new_routes_and_removed_routes_return_theirs() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(2);
    let mut routes = KvmRoutes::new(KvmRouteTable::new(vm.vm.clone()));
    routes.reserve_eventfds(8).unwrap();
    routes.reserve_eventfds(3).unwrap();
    assert_eq!(
        routes.spare_eventfds(),
        8,
        "reserving fewer than held creates none"
    );

    let first: Vec<_> = (0..6)
        .map(|i| routes.stage_add(dest(1, 0x50 + i)).unwrap())
        .collect();
    routes.commit().unwrap();
    assert_eq!((routes.eventfds(), routes.spare_eventfds()), (6, 2));
    for &id in &first[..4] {
        routes.stage_remove(id).unwrap();
    }
    routes.commit().unwrap();
    assert_eq!((routes.eventfds(), routes.spare_eventfds()), (2, 6));

    // The removed routes' eventfds serve the next batch, and deliver to the new routes.
    let again: Vec<_> = (0..4)
        .map(|i| routes.stage_add(dest(0, 0x70 + i)).unwrap())
        .collect();
    assert_eq!(routes.spare_eventfds(), 2, "no eventfd created");
    routes.commit().unwrap();
    for &id in again.iter().chain(&first[4..]) {
        routes.fire(id).unwrap();
    }
    let expected = set(&[
        (0, 0x70),
        (0, 0x71),
        (0, 0x72),
        (0, 0x73),
        (1, 0x54),
        (1, 0x55),
    ]);
    assert_eq!(vm.wait_pending(&expected), expected);
    assert_eq!(routes.counters().commits(), 3);
}
