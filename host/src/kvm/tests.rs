//! KVM routes against a real VM: what arrives in the local APICs after each commit.

use super::test_vm::{LapicVm, set};
use super::*;
use crate::backend::GuestDest;
use crate::routes::{GuestRoutes, RouteError, RouteState};
use std::sync::{Arc, Mutex};

fn dest(apic_id: u32, vector: u8) -> Option<GuestDest> {
    Some(GuestDest { apic_id, vector })
}

#[test]
fn route_messages_use_the_extended_destination_id_above_255() {
    let low = route_message(GuestDest {
        apic_id: 3,
        vector: 0x41,
    });
    assert_eq!((low.address, low.data), (0xFEE0_3000, 0x41));
    let high = route_message(GuestDest {
        apic_id: 0x1_05,
        vector: 0x42,
    });
    // Destination bits 7:0 in address 19:12, bits 31:8 in address 63:40 (KVM's convention).
    assert_eq!((high.address, high.data), (0x100 << 32 | 0xFEE0_5000, 0x42));
}

#[test]
fn irqfds_are_registered_at_setup_and_a_request_is_one_commit() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(2);
    let mut routes = KvmRoutes::new(KvmRouteTable::new(vm.vm.clone()), vm.vm.clone(), 8).unwrap();
    assert_eq!((routes.capacity(), routes.available()), (8, 8));
    let a = routes.stage_add(dest(0, 0x40)).unwrap();
    let b = routes.stage_add(dest(1, 0x41)).unwrap();
    assert!(a.trigger.eventfd().is_some());
    // Signalled before the commit: KVM has no route for the GSI yet and drops it.
    a.trigger.raise().unwrap();
    assert_eq!(vm.wait_pending(&set(&[])), set(&[]));
    routes.commit().unwrap();
    assert_eq!(routes.owner().commits(), 1);
    assert_eq!(
        routes.route(a.id),
        Some(RouteState::Live(GuestDest {
            apic_id: 0,
            vector: 0x40
        }))
    );
    a.trigger.raise().unwrap();
    b.trigger.raise().unwrap();
    assert_eq!(
        vm.wait_pending(&set(&[(0, 0x40), (1, 0x41)])),
        set(&[(0, 0x40), (1, 0x41)])
    );
    assert_eq!((routes.live(), routes.available()), (2, 6));
    let counters = routes.counters();
    assert_eq!(counters.commits(), 1);
}

#[test]
fn parked_routes_drop_retargets_move_and_removals_stop_delivery() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(2);
    let mut routes = KvmRoutes::new(KvmRouteTable::new(vm.vm.clone()), vm.vm.clone(), 4).unwrap();
    let parked = routes.stage_add(None).unwrap();
    let live = routes.stage_add(dest(0, 0x50)).unwrap();
    routes.commit().unwrap();
    assert_eq!(routes.route(parked.id), Some(RouteState::Parked));
    parked.trigger.raise().unwrap();
    assert_eq!(vm.wait_pending(&set(&[])), set(&[]));
    // Activate the parked route and move the live one: one commit.
    routes.stage_update(parked.id, dest(1, 0x51)).unwrap();
    routes.stage_update(live.id, dest(1, 0x52)).unwrap();
    routes.commit().unwrap();
    parked.trigger.raise().unwrap();
    live.trigger.raise().unwrap();
    assert_eq!(
        vm.wait_pending(&set(&[(1, 0x51), (1, 0x52)])),
        set(&[(1, 0x51), (1, 0x52)])
    );
    routes.stage_remove(live.id).unwrap();
    routes.commit().unwrap();
    assert_eq!(routes.route(live.id), None);
    assert_eq!(routes.available(), 3);
    assert!(matches!(
        routes.stage_remove(live.id),
        Err(RouteError::NoSuchRoute(_))
    ));
}

#[test]
fn an_unadded_route_is_free_at_once_and_an_aborted_batch_leaves_nothing() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(1);
    let mut routes = KvmRoutes::new(KvmRouteTable::new(vm.vm.clone()), vm.vm.clone(), 2).unwrap();
    let a = routes.stage_add(dest(0, 0x40)).unwrap();
    let b = routes.stage_add(dest(0, 0x41)).unwrap();
    assert!(matches!(routes.stage_add(None), Err(RouteError::Exhausted)));
    routes.stage_remove(b.id).unwrap();
    assert_eq!(routes.available(), 1);
    routes.commit().unwrap();
    assert_eq!(
        (routes.route(a.id).is_some(), routes.route(b.id)),
        (true, None)
    );
    routes.stage_add(dest(0, 0x42)).unwrap();
    routes.stage_remove(a.id).unwrap();
    routes.abort();
    assert_eq!((routes.live(), routes.available()), (1, 1));
    assert_eq!(routes.owner().len(), 1);
}

/// An owner that refuses commits while `refuse` is set, as KVM would on ENOMEM.
struct Refusing {
    table: KvmRouteTable,
    refuse: Arc<std::sync::atomic::AtomicBool>,
}

impl RouteOwner for Refusing {
    fn reserve_gsi(&mut self) -> Result<Gsi, KvmRouteError> {
        self.table.reserve_gsi()
    }
    fn release_gsi(&mut self, gsi: Gsi) {
        self.table.release_gsi(gsi)
    }
    fn commit(
        &mut self,
        changes: &[(Gsi, Option<pvirq_proto::MsiMessage>)],
    ) -> Result<(), KvmRouteError> {
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(KvmRouteError::TooManyEntries {
                entries: changes.len(),
            });
        }
        self.table.commit(changes)
    }
}

#[test]
fn a_refused_commit_changes_nothing_and_clear_still_forgets_everything() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(1);
    // GSIs 4094..: the third is 4096, which KVM's KVM_SET_GSI_ROUTING refuses.
    let table = KvmRouteTable::with_unchecked_config(
        vm.vm.clone(),
        RouteTableConfig {
            gsi_range: 4094..4100,
            irqchip_routes: IrqchipRoutes::Keep,
        },
    );
    let mut routes = KvmRoutes::new(table, vm.vm.clone(), 3).unwrap();
    let a = routes.stage_add(dest(0, 0x40)).unwrap();
    routes.commit().unwrap();
    routes.stage_update(a.id, dest(0, 0x60)).unwrap();
    routes.stage_add(dest(0, 0x41)).unwrap();
    let c = routes.stage_add(dest(0, 0x42)).unwrap();
    assert_eq!(c.id, 4096);
    // The core sees a hypervisor-neutral refusal: EINVAL's kind, the KVM error inside.
    let Err(RouteError::Hypervisor(err)) = routes.commit() else {
        panic!("KVM accepted GSI 4096");
    };
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(matches!(
        err.get_ref()
            .and_then(|e| e.downcast_ref::<KvmRouteError>()),
        Some(KvmRouteError::SetGsiRouting { .. })
    ));
    assert_eq!(routes.counters().failed_commits(), 1);
    // As before the batch: a still goes to 0x40, the two others are free again.
    assert_eq!(
        routes.route(a.id),
        Some(RouteState::Live(GuestDest {
            apic_id: 0,
            vector: 0x40
        }))
    );
    assert_eq!((routes.live(), routes.available()), (1, 2));
    assert_eq!(routes.owner().len(), 1);
    a.trigger.raise().unwrap();
    assert_eq!(vm.wait_pending(&set(&[(0, 0x40)])), set(&[(0, 0x40)]));

    // clear() when the owner refuses: the routes are forgotten at once and their GSIs
    // held back until a later commit gets the removal to KVM.
    let vm = LapicVm::new(1);
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let owner = Refusing {
        table: KvmRouteTable::new(vm.vm.clone()),
        refuse: Arc::clone(&refuse),
    };
    let mut routes = KvmRoutes::new(owner, vm.vm.clone(), 2).unwrap();
    routes.stage_add(dest(0, 0x40)).unwrap();
    routes.commit().unwrap();
    refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    routes.clear();
    assert_eq!((routes.live(), routes.available()), (0, 1));
    assert_eq!(routes.owner().table.len(), 1, "KVM still has the route");
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    routes.stage_add(dest(0, 0x41)).unwrap();
    routes.commit().unwrap();
    assert_eq!((routes.live(), routes.available()), (1, 1));
    assert_eq!(
        routes.owner().table.len(),
        1,
        "the stale route went with that commit"
    );
}

#[test]
fn a_shared_owner_keeps_the_vmms_other_routes() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(2);
    let owner = Arc::new(Mutex::new(KvmRouteTable::new(vm.vm.clone())));
    // The VMM's own device: a route on a GSI of its own, with its own irqfd.
    let other_gsi = owner.lock().unwrap().reserve_gsi().unwrap();
    let other_msg = route_message(GuestDest {
        apic_id: 1,
        vector: 0x70,
    });
    owner
        .lock()
        .unwrap()
        .commit(&[(other_gsi, Some(other_msg))])
        .unwrap();
    let other_fd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    vm.vm.register_irqfd(&other_fd, other_gsi.raw()).unwrap();
    let mut routes = KvmRoutes::new(Arc::clone(&owner), vm.vm.clone(), 4).unwrap();
    let a = routes.stage_add(dest(0, 0x40)).unwrap();
    routes.commit().unwrap();
    assert_ne!(Gsi::new(a.id), other_gsi);
    a.trigger.raise().unwrap();
    other_fd.write(1).unwrap();
    assert_eq!(
        vm.wait_pending(&set(&[(0, 0x40), (1, 0x70)])),
        set(&[(0, 0x40), (1, 0x70)])
    );
    drop(routes);
    // pvirq's routes and GSIs are gone from the shared table; the VMM's route stays.
    let table = owner.lock().unwrap();
    assert_eq!(table.routes().collect::<Vec<_>>(), [(other_gsi, other_msg)]);
}

#[test]
fn setup_fails_cleanly_when_the_owner_runs_out() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(1);
    let table = KvmRouteTable::with_config(
        vm.vm.clone(),
        RouteTableConfig {
            gsi_range: 24..28,
            irqchip_routes: IrqchipRoutes::Keep,
        },
    )
    .unwrap();
    let owner = Arc::new(Mutex::new(table));
    let err = KvmRoutes::new(Arc::clone(&owner), vm.vm.clone(), 5).unwrap_err();
    assert!(matches!(err, KvmRouteError::Exhausted { .. }), "{err}");
    // Every GSI reserved on the way was given back.
    assert_eq!(owner.lock().unwrap().available(), 4);
}
