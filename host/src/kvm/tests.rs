//! Route-table tests against real KVM (skipped without `/dev/kvm`, see
//! [`require_kvm_or_skip`]). Delivery is observed in the IRR of vCPUs that never run.

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::test_vm::{LapicVm, set};
use super::*;
use pvirq_proto::{CompatMsi, MsiMessage};

/// A fixed, edge, physical-mode message to APIC ID `dest`.
fn compat(dest: u32, vector: u8) -> MsiMessage {
    CompatMsi::fixed(dest, vector).message()
}

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

/// The table takes the eventfd it attaches; tests keep a duplicate (the same file) to write.
fn dup(fd: &EventFd) -> EventFd {
    fd.try_clone().unwrap()
}

/// Everything observable about a table, to compare before and after a rollback.
fn state(table: &KvmRouteTable) -> (Vec<(Gsi, MsiMessage)>, Vec<bool>, usize) {
    let routes: Vec<_> = table.routes().collect();
    let irqfds = routes
        .iter()
        .map(|(gsi, _)| table.has_irqfd(*gsi))
        .collect();
    (routes, irqfds, table.available())
}

#[test]
fn committed_routes_deliver_to_their_vcpu_and_vector() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(2);
    let mut table = KvmRouteTable::new(vm.vm.clone());
    let targets: Vec<(usize, u8)> = (0..8).map(|i| (i % 2, 0x40 + i as u8)).collect();
    let msis: Vec<_> = targets
        .iter()
        .map(|&(cpu, vector)| compat(cpu as u32, vector))
        .collect();
    let fds: Vec<_> = targets.iter().map(|_| eventfd()).collect();

    let mut batch = table.batch();
    let gsis = batch.add_all(&msis).unwrap();
    for (gsi, fd) in gsis.iter().zip(&fds) {
        batch.register_irqfd(*gsi, dup(fd)).unwrap();
    }
    batch.commit().unwrap();

    let expected_gsis: Vec<_> = (24..32).map(Gsi::new).collect();
    assert_eq!(gsis, expected_gsis, "lowest free GSIs, above the irqchip's");
    assert_eq!(table.len(), 8);
    assert_eq!(table.available(), 4096 - 40 - 8);
    assert!(vm.pending().is_empty());
    for fd in &fds {
        fd.write(1).unwrap();
    }
    assert_eq!(vm.wait_pending(&set(&targets)), set(&targets));
}

#[test]
fn retarget_moves_delivery_to_the_new_vcpu() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(2);
    let mut table = KvmRouteTable::new(vm.vm.clone());
    let fd = eventfd();
    let mut batch = table.batch();
    let gsi = batch.add(compat(0, 0x70)).unwrap();
    batch.register_irqfd(gsi, dup(&fd)).unwrap();
    batch.commit().unwrap();
    fd.write(1).unwrap();
    assert_eq!(vm.wait_pending(&set(&[(0, 0x70)])), set(&[(0, 0x70)]));

    let mut batch = table.batch();
    batch.update(gsi, compat(1, 0x71)).unwrap();
    batch.commit().unwrap();
    assert_eq!(table.route(gsi), Some(compat(1, 0x71)));
    fd.write(1).unwrap();
    let expected = set(&[(0, 0x70), (1, 0x71)]);
    assert_eq!(vm.wait_pending(&expected), expected);
}

#[test]
fn failed_commit_rolls_back_table_and_irqfds() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(2);
    // GSIs 4090..4100: the batch below reaches GSI 4096, which KVM rejects.
    let config = RouteTableConfig {
        gsi_range: 4090..4100,
        irqchip_routes: IrqchipRoutes::Omit,
    };
    let mut table = KvmRouteTable::with_unchecked_config(vm.vm.clone(), config);
    let (fd_a, fd_b, fd_x) = (eventfd(), eventfd(), eventfd());
    let mut batch = table.batch();
    let gsis = batch
        .add_all(&[0x50, 0x51, 0x52].map(|v| compat(0, v)))
        .unwrap();
    batch.register_irqfd(gsis[0], dup(&fd_a)).unwrap();
    batch.register_irqfd(gsis[1], dup(&fd_b)).unwrap();
    batch.commit().unwrap();
    let before = state(&table);

    let mut batch = table.batch();
    batch.update(gsis[0], compat(1, 0x60)).unwrap();
    batch.remove(gsis[1]).unwrap();
    batch.register_irqfd(gsis[2], dup(&fd_x)).unwrap();
    let added = batch.add_all(&[compat(1, 0x61); 4]).unwrap();
    assert_eq!(added.last(), Some(&Gsi::new(4096)));
    let err = batch.commit().unwrap_err();
    assert!(
        matches!(err, KvmRouteError::SetGsiRouting { entries: 6, .. }),
        "{err:?}"
    );

    assert_eq!(state(&table), before);
    // KVM kept its table (GSI 4090 still goes to vCPU 0, 4091 still routed) and fd_x was
    // detached: were it attached, its write would mark (0, 0x52) before returning.
    fd_x.write(1).unwrap();
    fd_a.write(1).unwrap();
    fd_b.write(1).unwrap();
    let expected = set(&[(0, 0x50), (0, 0x51)]);
    assert_eq!(vm.wait_pending(&expected), expected);
    // KVM refuses an eventfd attached twice, so this also proves the rollback detached it.
    let mut batch = table.batch();
    batch.register_irqfd(gsis[2], dup(&fd_x)).unwrap();
    batch.commit().unwrap();
    fd_x.write(1).unwrap();
    let expected = set(&[(0, 0x50), (0, 0x51), (0, 0x52)]);
    assert_eq!(vm.wait_pending(&expected), expected);
}

#[test]
fn dropped_batch_is_undone() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(1);
    let mut table = KvmRouteTable::new(vm.vm.clone());
    let fd = eventfd();
    let mut batch = table.batch();
    let kept = batch.add(compat(0, 0x30)).unwrap();
    batch.commit().unwrap();
    let before = state(&table);

    let mut batch = table.batch();
    let gsi = batch.add(compat(0, 0x31)).unwrap();
    batch.register_irqfd(gsi, dup(&fd)).unwrap();
    batch.update(kept, compat(0, 0x32)).unwrap();
    batch.remove(kept).unwrap();
    assert_eq!(batch.table().len(), 1);
    drop(batch);

    assert_eq!(state(&table), before);
    // The GSI went back to the pool, and the eventfd was detached from KVM.
    let mut batch = table.batch();
    assert_eq!(batch.add(compat(0, 0x33)).unwrap(), gsi);
    batch.register_irqfd(gsi, dup(&fd)).unwrap();
    batch.commit().unwrap();
    fd.write(1).unwrap();
    assert_eq!(vm.wait_pending(&set(&[(0, 0x33)])), set(&[(0, 0x33)]));
}

#[test]
fn exhaustion_reports_what_is_available_and_keeps_earlier_routes() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(1);
    let mut table = KvmRouteTable::new(vm.vm.clone());
    // 4096 KVM entries minus the 40 irqchip routes, although the range has 4072 GSIs.
    assert_eq!(table.available(), 4056);
    let fd = eventfd();
    let mut batch = table.batch();
    let first = batch.add(compat(0, 0x80)).unwrap();
    batch.register_irqfd(first, dup(&fd)).unwrap();
    batch.commit().unwrap();

    let msis = vec![compat(0, 0x81); 4056];
    let mut batch = table.batch();
    let err = batch.add_all(&msis).unwrap_err();
    assert!(
        matches!(
            err,
            KvmRouteError::Exhausted {
                requested: 4056,
                available: 4055
            }
        ),
        "{err:?}"
    );
    assert_eq!(batch.table().len(), 1, "a refused request stages nothing");
    batch.add_all(&msis[1..]).unwrap();
    let err = batch.add(compat(0, 0x82)).unwrap_err();
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
    // All 4096 entries fit in one KVM_SET_GSI_ROUTING.
    batch.commit().unwrap();
    assert_eq!((table.len(), table.available()), (4056, 0));

    fd.write(1).unwrap();
    assert_eq!(vm.wait_pending(&set(&[(0, 0x80)])), set(&[(0, 0x80)]));
}

#[test]
fn omitting_irqchip_routes_frees_their_entries() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(1);
    let config = RouteTableConfig {
        irqchip_routes: IrqchipRoutes::Omit,
        ..RouteTableConfig::default()
    };
    let mut table = KvmRouteTable::with_config(vm.vm.clone(), config).unwrap();
    assert_eq!(table.available(), 4072);
    let mut batch = table.batch();
    let gsis = batch.add_all(&[compat(0, 0x90); 4072]).unwrap();
    assert_eq!(gsis.last(), Some(&Gsi::new(4095)));
    batch.commit().unwrap();
    assert_eq!(table.available(), 0);
}

#[test]
fn gsi_ranges_outside_24_to_4096_are_rejected() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(1);
    for range in [0..100, 23..100, 24..4097, 100..100] {
        let config = RouteTableConfig {
            gsi_range: range.clone(),
            ..RouteTableConfig::default()
        };
        let err = KvmRouteTable::with_config(vm.vm.clone(), config).unwrap_err();
        assert!(
            matches!(err, KvmRouteError::InvalidGsiRange { start, end } if (start..end) == range),
            "{err:?}"
        );
    }
    let config = RouteTableConfig {
        gsi_range: 100..110,
        ..RouteTableConfig::default()
    };
    let mut table = KvmRouteTable::with_config(vm.vm.clone(), config).unwrap();
    let err = table.batch().add_all(&[compat(0, 0x40); 11]).unwrap_err();
    assert!(
        matches!(
            err,
            KvmRouteError::Exhausted {
                requested: 11,
                available: 10
            }
        ),
        "{err:?}"
    );
}

#[test]
fn release_detaches_irqfds_and_frees_gsis() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(1);
    let mut table = KvmRouteTable::new(vm.vm.clone());
    let (fd_a, fd_b) = (eventfd(), eventfd());
    let mut batch = table.batch();
    let a = batch.add(compat(0, 0xA0)).unwrap();
    let b = batch.add(compat(0, 0xA1)).unwrap();
    batch.register_irqfd(a, dup(&fd_a)).unwrap();
    batch.register_irqfd(b, dup(&fd_b)).unwrap();
    batch.commit().unwrap();
    let available = table.available();

    let err = table.release(&[a, Gsi::new(999)]).unwrap_err();
    assert!(matches!(err, KvmRouteError::UnknownGsi(g) if g == Gsi::new(999)));
    assert_eq!(table.len(), 2, "a failed release removes nothing");

    table.release(&[a]).unwrap();
    assert_eq!((table.len(), table.available()), (1, available + 1));
    assert_eq!(table.route(a), None);
    fd_a.write(1).unwrap();
    fd_b.write(1).unwrap();
    assert_eq!(vm.wait_pending(&set(&[(0, 0xA1)])), set(&[(0, 0xA1)]));
    // The freed GSI is handed out again, and its old eventfd is no longer attached.
    let mut batch = table.batch();
    assert_eq!(batch.add(compat(0, 0xA2)).unwrap(), a);
    batch.register_irqfd(a, dup(&fd_a)).unwrap();
    batch.commit().unwrap();
    fd_a.write(1).unwrap();
    let expected = set(&[(0, 0xA1), (0, 0xA2)]);
    assert_eq!(vm.wait_pending(&expected), expected);
}

#[test]
fn dropping_the_table_detaches_its_irqfds() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(1);
    let fd = eventfd();
    let mut table = KvmRouteTable::new(vm.vm.clone());
    let mut batch = table.batch();
    let gsi = batch.add(compat(0, 0xB0)).unwrap();
    batch.register_irqfd(gsi, dup(&fd)).unwrap();
    assert!(matches!(
        batch.register_irqfd(gsi, dup(&fd)),
        Err(KvmRouteError::IrqfdAlreadyRegistered(g)) if g == gsi
    ));
    batch.commit().unwrap();
    drop(table);

    // KVM refuses an eventfd that is still attached; a new table can take it.
    let mut table = KvmRouteTable::new(vm.vm.clone());
    let mut batch = table.batch();
    let gsi = batch.add(compat(0, 0xB1)).unwrap();
    batch.register_irqfd(gsi, dup(&fd)).unwrap();
    batch.commit().unwrap();
    fd.write(1).unwrap();
    assert_eq!(vm.wait_pending(&set(&[(0, 0xB1)])), set(&[(0, 0xB1)]));
}

#[test]
fn staging_on_the_table_spans_calls_and_aborts_like_a_batch() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(2);
    let mut table = KvmRouteTable::new(vm.vm.clone());
    let (fd_a, fd_b) = (eventfd(), eventfd());
    let a = table.stage_add(compat(0, 0x40)).unwrap();
    table.stage_irqfd(a, dup(&fd_a)).unwrap();
    table.commit().unwrap();
    assert!(!table.has_staged());
    let before = state(&table);

    // Several separate calls, as a layer staging one vector at a time would make them.
    let b = table.stage_add(compat(1, 0x41)).unwrap();
    table.stage_irqfd(b, dup(&fd_b)).unwrap();
    table.stage_update(a, compat(1, 0x42)).unwrap();
    assert!(table.has_staged());
    table.abort();
    assert_eq!(state(&table), before);

    // The committed route still delivers where it did before the aborted retarget.
    fd_a.write(1).unwrap();
    assert_eq!(vm.wait_pending(&set(&[(0, 0x40)])), set(&[(0, 0x40)]));
    // Dropping a table with staged changes undoes them before tearing down.
    let c = table.stage_add(compat(1, 0x43)).unwrap();
    table.stage_irqfd(c, dup(&fd_b)).unwrap();
    drop(table);
    let mut again = KvmRouteTable::new(vm.vm.clone());
    let d = again.stage_add(compat(1, 0x44)).unwrap();
    // The eventfd was detached with the dropped table, so it can be attached again.
    again.stage_irqfd(d, dup(&fd_b)).unwrap();
    again.commit().unwrap();
}

#[test]
fn trigger_writes_the_tables_own_eventfd_and_release_gives_it_back() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(2);
    let mut table = KvmRouteTable::new(vm.vm.clone());
    let mut batch = table.batch();
    let a = batch.add(compat(1, 0x48)).unwrap();
    let bare = batch.add(compat(0, 0x49)).unwrap();
    batch.register_irqfd(a, eventfd()).unwrap();
    batch.commit().unwrap();
    assert_eq!(table.take_detached().count(), 0);

    table.trigger(a).unwrap();
    assert_eq!(vm.wait_pending(&set(&[(1, 0x48)])), set(&[(1, 0x48)]));
    assert!(matches!(table.trigger(bare), Err(KvmRouteError::NoIrqfd(g)) if g == bare));
    let unknown = Gsi::new(999);
    assert!(matches!(table.trigger(unknown), Err(KvmRouteError::UnknownGsi(g)) if g == unknown));

    // Refused attachments give the eventfd back too: every eventfd handed over returns.
    assert!(table.stage_irqfd(unknown, eventfd()).is_err());
    assert_eq!(table.take_detached().count(), 1);
    table.release(&[a, bare]).unwrap();
    let back: Vec<_> = table.take_detached().collect();
    assert_eq!(back.len(), 1, "one route had an irqfd");
    // It is detached: KVM accepts it on another GSI, and writing it delivers there.
    let mut batch = table.batch();
    let b = batch.add(compat(0, 0x4A)).unwrap();
    let fd = back.into_iter().next().unwrap();
    let keep = dup(&fd);
    batch.register_irqfd(b, fd).unwrap();
    batch.commit().unwrap();
    keep.write(1).unwrap();
    let expected = set(&[(1, 0x48), (0, 0x4A)]);
    assert_eq!(vm.wait_pending(&expected), expected);
}

#[test]
fn a_stale_count_does_not_follow_a_recycled_eventfd_to_its_next_gsi() {
    if !require_kvm_or_skip() {
        return;
    }
    let vm = LapicVm::new(1);
    let mut table = KvmRouteTable::new(vm.vm.clone());
    let mut batch = table.batch();
    let quiet: Vec<_> = (0..2)
        .map(|i| batch.add(compat(0, 0x60 + i)).unwrap())
        .collect();
    let loud = batch.add(compat(0, 0x62)).unwrap();
    let barrier = batch.add(compat(0, 0x63)).unwrap();
    batch.register_irqfd(barrier, eventfd()).unwrap();
    batch.commit().unwrap();

    // The hazard: KVM injects at assign time when the eventfd is already signalled.
    let signalled = eventfd();
    signalled.write(1).unwrap();
    table.stage_irqfd(loud, signalled).unwrap();
    table.commit().unwrap();
    assert_eq!(vm.wait_pending(&set(&[(0, 0x62)])), set(&[(0, 0x62)]));

    // Detached by a rollback: a signalled eventfd attached to a GSI KVM has no route for
    // yet keeps its count until detached, and comes back with none.
    let fd = eventfd();
    fd.write(3).unwrap();
    let staged = table.stage_add(compat(0, 0x64)).unwrap();
    table.stage_irqfd(staged, fd).unwrap();
    table.abort();
    let detached = table.take_detached().next().unwrap();
    // Refused (that GSI has an irqfd), so never attached: the table drains it itself.
    let fd = eventfd();
    fd.write(5).unwrap();
    let err = table.stage_irqfd(loud, fd).unwrap_err();
    assert!(matches!(err, KvmRouteError::IrqfdAlreadyRegistered(g) if g == loud));
    let refused = table.take_detached().next().unwrap();
    for fd in [&detached, &refused] {
        let err = fd.read().unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::WouldBlock,
            "given back drained"
        );
    }

    // Attached to live routes, they fire nothing until written.
    table.stage_irqfd(quiet[0], detached).unwrap();
    table.stage_irqfd(quiet[1], refused).unwrap();
    table.commit().unwrap();
    table.trigger(barrier).unwrap();
    let expected = set(&[(0, 0x62), (0, 0x63)]);
    assert_eq!(vm.wait_pending(&expected), expected);
    table.trigger(quiet[0]).unwrap();
    table.trigger(quiet[1]).unwrap();
    let expected = set(&[(0, 0x60), (0, 0x61), (0, 0x62), (0, 0x63)]);
    assert_eq!(vm.wait_pending(&expected), expected);
}
