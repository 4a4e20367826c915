//! End to end on real KVM: routes from `pvirq_host::kvm` deliver to exactly the vCPU and
//! vector they name, move when retargeted, and survive route exhaustion.

use std::collections::BTreeMap;
use std::time::Duration;

use pvirq_host::GuestDest;
use pvirq_host::backend::Trigger;
use pvirq_host::kvm::{KvmRouteTable, KvmRoutes};
use pvirq_host::routes::{GuestRoutes, RouteError};
use pvirq_sim::kvm::{InterruptCounts, KvmGuest, require_kvm_or_skip};

/// Guard against hangs only; delivery normally takes microseconds.
const TIMEOUT: Duration = Duration::from_secs(5);
const MEM: usize = 1 << 20;
/// Sent to every vCPU after each delivery; no route uses it. It has the lowest priority, so
/// when each vCPU has counted it, anything sent before it has been counted too.
const BARRIER: u8 = 0x20;

fn to(vcpu: usize, vector: u8) -> Option<GuestDest> {
    Some(GuestDest {
        apic_id: vcpu as u32,
        vector,
    })
}

fn routes(guest: &KvmGuest, capacity: u32) -> KvmRoutes<KvmRouteTable> {
    KvmRoutes::new(guest.route_table(), guest.vm_fd(), capacity).unwrap()
}

/// Raises `trigger`, waits for `expected` (the whole table of counts, barrier aside), then
/// checks that nothing else arrives: after a barrier the counts are still exactly
/// `expected`.
fn fire_and_expect(guest: &KvmGuest, trigger: &Trigger, expected: &InterruptCounts) {
    trigger.raise().unwrap();
    let seen = guest.wait_until(|c| c.clone().without_vector(BARRIER) == *expected, TIMEOUT);
    assert!(seen.is_ok(), "{seen:?}");
    guest.barrier(BARRIER, TIMEOUT).unwrap();
    assert_eq!(guest.snapshot().without_vector(BARRIER), *expected);
}

#[test]
fn each_route_reaches_exactly_its_vcpu_and_vector_once() {
    if !require_kvm_or_skip() {
        return;
    }
    let guest = KvmGuest::new(2, MEM).unwrap();
    let mut routes = routes(&guest, 8);
    let targets: Vec<(usize, u8)> = [0x41, 0x62, 0xA3, 0xFE]
        .into_iter()
        .flat_map(|vector| [(0, vector), (1, vector + 1)])
        .collect();
    // The whole request in one batch: one KVM_SET_GSI_ROUTING for all eight routes.
    let staged: Vec<_> = targets
        .iter()
        .map(|&(vcpu, vector)| routes.stage_add(to(vcpu, vector)).unwrap())
        .collect();
    routes.commit().unwrap();
    assert_eq!(routes.owner().commits(), 1);

    let mut expected = BTreeMap::new();
    for (target, route) in targets.iter().zip(&staged) {
        expected.insert(*target, 1);
        let expected: InterruptCounts = expected.clone().into_iter().collect();
        fire_and_expect(&guest, &route.trigger, &expected);
    }

    // Removed routes deliver nothing; the one kept still does.
    for route in &staged[1..] {
        routes.stage_remove(route.id).unwrap();
    }
    routes.commit().unwrap();
    for route in &staged[1..] {
        route.trigger.raise().unwrap();
    }
    expected.insert(targets[0], 2);
    let expected: InterruptCounts = expected.into_iter().collect();
    fire_and_expect(&guest, &staged[0].trigger, &expected);
    guest.shutdown().unwrap();
}

#[test]
fn retargeting_a_route_moves_delivery() {
    if !require_kvm_or_skip() {
        return;
    }
    let guest = KvmGuest::new(2, MEM).unwrap();
    let mut routes = routes(&guest, 2);
    let route = routes.stage_add(to(0, 0x50)).unwrap();
    routes.commit().unwrap();
    fire_and_expect(
        &guest,
        &route.trigger,
        &[((0, 0x50), 1)].into_iter().collect(),
    );

    // Same GSI and eventfd, other vCPU.
    routes.stage_update(route.id, to(1, 0x50)).unwrap();
    routes.commit().unwrap();
    let expected = [((0, 0x50), 1), ((1, 0x50), 1)];
    fire_and_expect(&guest, &route.trigger, &expected.into_iter().collect());

    // A retarget aborted before commit changes nothing.
    routes.stage_update(route.id, to(0, 0x51)).unwrap();
    routes.abort();
    let expected = [((0, 0x50), 1), ((1, 0x50), 2)];
    fire_and_expect(&guest, &route.trigger, &expected.into_iter().collect());

    // Back to vCPU 0, on another vector.
    routes.stage_update(route.id, to(0, 0x51)).unwrap();
    routes.commit().unwrap();
    let expected = [((0, 0x50), 1), ((0, 0x51), 1), ((1, 0x50), 2)];
    fire_and_expect(&guest, &route.trigger, &expected.into_iter().collect());
    guest.shutdown().unwrap();
}

#[test]
fn exhausted_routes_are_a_typed_error_and_earlier_routes_still_deliver() {
    if !require_kvm_or_skip() {
        return;
    }
    let guest = KvmGuest::new(2, MEM).unwrap();
    // 4096 KVM entries - 40 irqchip routes: every GSI the table can give.
    let table = guest.route_table();
    assert_eq!(table.available(), 4056);
    assert!(KvmRoutes::new(guest.route_table(), guest.vm_fd(), 4057).is_err());
    let mut routes = KvmRoutes::new(table, guest.vm_fd(), 4056).unwrap();
    let a = routes.stage_add(to(0, 0x70)).unwrap();
    let b = routes.stage_add(to(1, 0x71)).unwrap();
    routes.commit().unwrap();
    let filler: Vec<_> = (0..4054)
        .map(|_| routes.stage_add(to(1, 0x90)).unwrap())
        .collect();
    assert!(matches!(
        routes.stage_add(to(0, 0x91)),
        Err(RouteError::Exhausted)
    ));
    routes.commit().unwrap();
    assert_eq!((routes.available(), routes.live()), (0, 4056));

    let mut expected = vec![((0, 0x70), 1)];
    fire_and_expect(&guest, &a.trigger, &expected.iter().copied().collect());
    expected.push(((1, 0x71), 1));
    fire_and_expect(&guest, &b.trigger, &expected.iter().copied().collect());
    expected.push(((1, 0x90), 1));
    fire_and_expect(
        &guest,
        &filler[4053].trigger,
        &expected.iter().copied().collect(),
    );
    guest.shutdown().unwrap();
}
