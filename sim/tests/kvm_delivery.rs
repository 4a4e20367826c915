//! End to end on real KVM: routes from `pvirq_host::kvm` deliver to exactly the vCPU and
//! vector they name, move when retargeted, and survive route exhaustion.

use std::collections::BTreeMap;
use std::time::Duration;

use pvirq_host::kvm::{Gsi, KvmRouteError, KvmRouteTable};
use pvirq_sim::kvm::{InterruptCounts, KvmGuest, require_kvm_or_skip};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Guard against hangs only; delivery normally takes microseconds.
const TIMEOUT: Duration = Duration::from_secs(5);
const MEM: usize = 1 << 20;
/// Sent to every vCPU after each delivery; no route uses it. It has the lowest priority, so
/// when each vCPU has counted it, anything sent before it has been counted too.
const BARRIER: u8 = 0x20;

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

/// The route table takes the eventfd it attaches; tests keep a duplicate to write.
fn dup(fd: &EventFd) -> EventFd {
    fd.try_clone().unwrap()
}

/// Writes `fd`, waits for `expected` (the whole table of counts, barrier aside), then
/// checks that nothing else arrives: after a barrier the counts are still exactly
/// `expected`.
fn fire_and_expect(guest: &KvmGuest, fd: &EventFd, expected: &InterruptCounts) {
    fd.write(1).unwrap();
    let seen = guest.wait_until(|c| c.clone().without_vector(BARRIER) == *expected, TIMEOUT);
    assert!(seen.is_ok(), "{seen:?}");
    guest.barrier(BARRIER, TIMEOUT).unwrap();
    assert_eq!(guest.snapshot().without_vector(BARRIER), *expected);
}

/// One committed route with an irqfd to (`vcpu`, `vector`).
fn route(table: &mut KvmRouteTable, guest: &KvmGuest, vcpu: usize, vector: u8) -> (Gsi, EventFd) {
    let fd = eventfd();
    let mut batch = table.batch();
    let gsi = batch.add(guest.msi(vcpu, vector).unwrap()).unwrap();
    batch.register_irqfd(gsi, dup(&fd)).unwrap();
    batch.commit().unwrap();
    (gsi, fd)
}

#[test]
fn each_route_reaches_exactly_its_vcpu_and_vector_once() {
    if !require_kvm_or_skip() {
        return;
    }
    let guest = KvmGuest::new(2, MEM).unwrap();
    let mut table = guest.route_table();
    let targets: Vec<(usize, u8)> = [0x41, 0x62, 0xA3, 0xFE]
        .into_iter()
        .flat_map(|vector| [(0, vector), (1, vector + 1)])
        .collect();
    let msis: Vec<_> = targets
        .iter()
        .map(|&(vcpu, vector)| guest.msi(vcpu, vector).unwrap())
        .collect();
    let fds: Vec<_> = targets.iter().map(|_| eventfd()).collect();
    // The whole request in one batch: one KVM_SET_GSI_ROUTING for all eight routes.
    let mut batch = table.batch();
    let gsis = batch.add_all(&msis).unwrap();
    for (gsi, fd) in gsis.iter().zip(&fds) {
        batch.register_irqfd(*gsi, dup(fd)).unwrap();
    }
    batch.commit().unwrap();

    let mut expected = BTreeMap::new();
    for (target, fd) in targets.iter().zip(&fds) {
        expected.insert(*target, 1);
        let expected: InterruptCounts = expected.clone().into_iter().collect();
        fire_and_expect(&guest, fd, &expected);
    }

    // Released routes deliver nothing; the one kept still does.
    table.release(&gsis[1..]).unwrap();
    for fd in &fds[1..] {
        fd.write(1).unwrap();
    }
    expected.insert(targets[0], 2);
    let expected: InterruptCounts = expected.into_iter().collect();
    fire_and_expect(&guest, &fds[0], &expected);
    guest.shutdown().unwrap();
}

#[test]
fn retargeting_a_route_moves_delivery() {
    if !require_kvm_or_skip() {
        return;
    }
    let guest = KvmGuest::new(2, MEM).unwrap();
    let mut table = guest.route_table();
    let (gsi, fd) = route(&mut table, &guest, 0, 0x50);
    fire_and_expect(&guest, &fd, &[((0, 0x50), 1)].into_iter().collect());

    // Same GSI and eventfd, other vCPU.
    let mut batch = table.batch();
    batch.update(gsi, guest.msi(1, 0x50).unwrap()).unwrap();
    batch.commit().unwrap();
    let expected = [((0, 0x50), 1), ((1, 0x50), 1)];
    fire_and_expect(&guest, &fd, &expected.into_iter().collect());

    // A retarget that is dropped before commit changes nothing.
    let mut batch = table.batch();
    batch.update(gsi, guest.msi(0, 0x51).unwrap()).unwrap();
    drop(batch);
    let expected = [((0, 0x50), 1), ((1, 0x50), 2)];
    fire_and_expect(&guest, &fd, &expected.into_iter().collect());

    // Back to vCPU 0, on another vector.
    let mut batch = table.batch();
    batch.update(gsi, guest.msi(0, 0x51).unwrap()).unwrap();
    batch.commit().unwrap();
    let expected = [((0, 0x50), 1), ((0, 0x51), 1), ((1, 0x50), 2)];
    fire_and_expect(&guest, &fd, &expected.into_iter().collect());
    guest.shutdown().unwrap();
}

#[test]
fn exhausted_routes_are_a_typed_error_and_earlier_routes_still_deliver() {
    if !require_kvm_or_skip() {
        return;
    }
    let guest = KvmGuest::new(2, MEM).unwrap();
    let mut table = guest.route_table();
    let (_, fd0) = route(&mut table, &guest, 0, 0x70);
    let (_, fd1) = route(&mut table, &guest, 1, 0x71);
    // 4096 KVM entries - 40 irqchip routes - the 2 above.
    assert_eq!(table.available(), 4054);

    let filler = vec![guest.msi(1, 0x90).unwrap(); 4055];
    let last_fd = eventfd();
    let mut batch = table.batch();
    let err = batch.add_all(&filler).unwrap_err();
    assert!(
        matches!(
            err,
            KvmRouteError::Exhausted {
                requested: 4055,
                available: 4054
            }
        ),
        "{err:?}"
    );
    let gsis = batch.add_all(&filler[1..]).unwrap();
    let err = batch.add(guest.msi(0, 0x91).unwrap()).unwrap_err();
    assert!(
        matches!(
            err,
            KvmRouteError::Exhausted {
                requested: 1,
                available: 0
            }
        ),
        "{err:?}"
    );
    let last = *gsis.last().unwrap();
    // KVM's entry limit, not the GSI range (24..4096), is what ran out.
    assert_eq!(last, Gsi::new(24 + 4056 - 1));
    batch.register_irqfd(last, dup(&last_fd)).unwrap();
    batch.commit().unwrap();
    assert_eq!(table.available(), 0);

    let mut expected = vec![((0, 0x70), 1)];
    fire_and_expect(&guest, &fd0, &expected.iter().copied().collect());
    expected.push(((1, 0x71), 1));
    fire_and_expect(&guest, &fd1, &expected.iter().copied().collect());
    expected.push(((1, 0x90), 1));
    fire_and_expect(&guest, &last_fd, &expected.iter().copied().collect());
    guest.shutdown().unwrap();
}
