//! Snapshot and restore through whole VMs on the modelled host.

use crate::config::{DeviceSpec, VmConfig};
use crate::fault::{FaultPlan, Faulty};
use crate::model::{ModelConfig, ModelHost, RemapConfig};
use crate::routes::MemoryRoutes;
use crate::snapshot::{GrantSnapshot, RestoreError, Restored, RestoredGrant, VmSnapshot};
use crate::vm::Vm;
use pvirq_proto::{
    Alloc, IndexRange, IndexSpec, Kind, Operation, Outcome, Request, Resource, Response, Retarget,
    Target, Targeting, feature,
};

fn config(rid: u16) -> VmConfig {
    VmConfig {
        quota: 64,
        num_vcpus: 4,
        max_batch: 64,
        devices: vec![
            DeviceSpec {
                requester_id: rid,
                msi_max: 8,
                msix_table_size: 32,
                ims_slots: 16,
                ..DeviceSpec::default()
            },
            DeviceSpec {
                requester_id: rid + 1,
                msi_max: 0,
                msix_table_size: 8,
                ims_slots: 0,
                ..DeviceSpec::default()
            },
        ],
        ..VmConfig::default()
    }
}

fn host(irtes: u32) -> ModelHost {
    ModelHost::new(&ModelConfig {
        remap: RemapConfig {
            units: 1,
            entries_per_unit: irtes,
        },
        ..ModelConfig::default()
    })
    .unwrap()
}

fn vm(host: &ModelHost, rid: u16) -> Vm {
    host.create_vm(config(rid), Box::new(MemoryRoutes::kvm_like()))
        .unwrap()
}

fn ok(vm: &Vm, device: u32, op: Operation<'_>) {
    let reply = vm.call(&Request { device, tag: 0, op });
    let outcome = Response::decode(&reply, feature::V1).unwrap().outcome;
    assert!(!matches!(outcome, Outcome::Refused(_)), "{outcome:?}");
}

/// A workload: MSI-X 0..6 on device 0 (two of them retargeted), an MSI block of 4, IMS
/// 3..5 with a PASID, MSI-X 0..2 on device 1.
fn workload(vm: &Vm) {
    let t: Vec<Target> = (0..6).map(|i| Target::new(i % 4, 0x40 + i as u8)).collect();
    ok(vm, 0, Operation::Alloc(Alloc::any(Kind::MsiX, 6, &t)));
    ok(vm, 0, Operation::Alloc(Alloc::any(Kind::Msi, 4, &t[..4])));
    ok(
        vm,
        0,
        Operation::Alloc(Alloc {
            kind: Kind::Ims,
            index: IndexSpec::At(3),
            min: 3,
            max: 3,
            pasid: Some(0x77),
            targets: &t[..3],
            targeting: Targeting::PerVector,
        }),
    );
    ok(vm, 1, Operation::Alloc(Alloc::any(Kind::MsiX, 2, &t[..2])));
    let moved = [Target::new(3, 0x90), Target::new(2, 0x91)];
    ok(
        vm,
        0,
        Operation::Retarget(Retarget::run(
            IndexRange {
                kind: Kind::MsiX,
                first: 1,
                count: 2,
            },
            &moved,
        )),
    );
}

/// Fires every grant's message from its device; where each landed.
fn landings(host: &ModelHost, vm: &Vm) -> Vec<Option<(u32, u8)>> {
    (0..vm.config().devices.len() as u32)
        .flat_map(|d| {
            let rid = vm.config().devices[d as usize].requester_id;
            vm.grants(d)
                .into_iter()
                .map(move |(_, _, r)| (rid, r.message))
        })
        .map(|(rid, m)| host.fire(rid, m).ok().and_then(|d| d.to()))
        .collect()
}

fn through_json(s: &VmSnapshot) -> VmSnapshot {
    serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap()
}

/// Found by the `snapshot_restore` fuzz target (fuzz/regressions/snapshot_restore/): the
/// IMS grants of one device restored in one request took the first grant's PASID, so a
/// grant made without one (or with another) was backed with the wrong PASID.
#[test]
fn ims_grants_of_different_pasids_keep_their_own() {
    let host = host(256);
    let a = vm(&host, 0x100);
    let t = [Target::new(0, 0x40), Target::new(1, 0x41)];
    let ims = |first, pasid, targets| {
        Operation::Alloc(Alloc {
            kind: Kind::Ims,
            index: IndexSpec::At(first),
            min: 1,
            max: 1,
            pasid,
            targeting: Targeting::PerVector,
            targets,
        })
    };
    ok(&a, 0, ims(2, Some(9), &t[..1]));
    ok(&a, 0, ims(5, None, &t[1..]));
    ok(&a, 0, ims(7, Some(0x123), &t[..1]));
    let snapshot = through_json(&a.snapshot());
    drop(a);
    let b = vm(&host, 0x100);
    let report = b.restore(&snapshot, feature::ALL).unwrap();
    assert!(
        report.iter().all(|r| r.outcome == Restored::Kept),
        "{report:?}"
    );
    host.check_invariants().unwrap();
    let pasids: Vec<(u32, Option<u32>)> = b
        .grants(0)
        .into_iter()
        .map(|(_, index, r)| (index, r.pasid))
        .collect();
    assert_eq!(pasids, [(2, Some(9)), (5, None), (7, Some(0x123))]);
    assert_eq!(b.snapshot(), snapshot);
}

#[test]
fn restore_on_the_same_host_keeps_every_message_destination_and_count() {
    let host = host(256);
    let a = vm(&host, 0x100);
    workload(&a);
    let before = landings(&host, &a);
    assert_eq!(before.len(), 15);
    assert!(before.iter().all(Option::is_some));
    let snapshot = through_json(&a.snapshot());
    let occupancy = host.occupancy();
    let held = a.occupancy();
    drop(a);
    assert_eq!(host.occupancy().vectors_used, 0);
    let b = vm(&host, 0x100);
    let report = b.restore(&snapshot, feature::V1).unwrap();
    assert_eq!(report.len(), 15);
    assert!(
        report.iter().all(|r| r.outcome == Restored::Kept),
        "{report:?}"
    );
    assert_eq!(b.occupancy(), held);
    assert_eq!(host.occupancy(), occupancy);
    assert_eq!(landings(&host, &b), before);
    assert_eq!(b.snapshot(), snapshot);
    host.check_invariants().unwrap();
}

#[test]
fn another_hosts_occupancy_reprograms_what_collides_and_revokes_what_does_not_fit() {
    let source = host(256);
    let a = vm(&source, 0x100);
    workload(&a);
    let snapshot = a.snapshot();
    // The destination: a VM there already holds IRTEs 0..3.
    let dest = host(20);
    let other = vm(&dest, 0x300);
    let t = [Target::new(0, 0x30); 3];
    ok(&other, 0, Operation::Alloc(Alloc::any(Kind::MsiX, 3, &t)));
    let b = vm(&dest, 0x100);
    let report = b.restore(&snapshot, feature::V1).unwrap();
    let count = |f: fn(&RestoredGrant) -> bool| report.iter().filter(|r| f(r)).count();
    let kept = count(|r| r.outcome == Restored::Kept);
    let reprogrammed = count(|r| matches!(r.outcome, Restored::Reprogrammed(_)));
    let revoked = count(|r| matches!(r.outcome, Restored::Revoked(Resource::Irte)));
    // 17 IRTEs left for 15 grants, but the MSI block's aligned run at 8 collides: reprogrammed.
    assert_eq!(kept + reprogrammed + revoked, 15, "{report:?}");
    assert!(reprogrammed > 0, "{report:?}");
    assert_eq!(b.occupancy().held as usize, kept + reprogrammed);
    // Every grant the destination holds delivers where the snapshot said.
    for r in &report {
        let grant = b
            .grants(r.device)
            .into_iter()
            .find(|(k, i, _)| (*k, *i) == (r.kind, r.index));
        match r.outcome {
            Restored::Revoked(_) => assert!(grant.is_none()),
            Restored::Kept | Restored::Reprogrammed(_) => {
                let (_, _, record) = grant.unwrap();
                if let Restored::Reprogrammed(m) = r.outcome {
                    assert_eq!(record.message, m);
                }
                let rid = 0x100 + r.device as u16;
                let d = dest.fire(rid, record.message).unwrap();
                assert_eq!(d.dest, record.dest);
            }
        }
    }
    dest.check_invariants().unwrap();

    // Too small for all of it: the rest is revoked, never half-held.
    let tiny = host(4);
    let c = vm(&tiny, 0x100);
    let report = c.restore(&snapshot, feature::V1).unwrap();
    let held = report
        .iter()
        .filter(|r| !matches!(r.outcome, Restored::Revoked(_)))
        .count();
    assert_eq!(c.occupancy().held as usize, held);
    assert!(held <= 4);
    tiny.check_invariants().unwrap();
}

/// What a refused snapshot's error must be.
type Expect = fn(&RestoreError) -> bool;

#[test]
fn hostile_snapshots_are_refused_with_a_typed_error_and_nothing_held() {
    let host = host(256);
    let a = vm(&host, 0x100);
    workload(&a);
    let good = a.snapshot();
    drop(a);
    let b = vm(&host, 0x100);
    let grant = |f: fn(&mut GrantSnapshot)| {
        let mut s = good.clone();
        f(&mut s.devices[0].grants[0]);
        s
    };
    let cases: Vec<(VmSnapshot, Expect)> = vec![
        (
            VmSnapshot {
                version: 9,
                ..good.clone()
            },
            |e| matches!(e, RestoreError::UnsupportedVersion(9)),
        ),
        (
            VmSnapshot {
                features: 1 << 60,
                ..good.clone()
            },
            |e| matches!(e, RestoreError::FeaturesNotOffered(_)),
        ),
        (
            VmSnapshot {
                devices: vec![],
                ..good.clone()
            },
            |e| matches!(e, RestoreError::DeviceCount { .. }),
        ),
        (grant(|g| g.kind = 9), |e| {
            matches!(e, RestoreError::Kind { kind: 9, .. })
        }),
        (grant(|g| g.index = 1 << 30), |e| {
            matches!(e, RestoreError::IndexOutOfRange { .. })
        }),
        (grant(|g| g.dest = Some((99, 0x40))), |e| {
            matches!(e, RestoreError::Destination { .. })
        }),
        (grant(|g| g.dest = Some((0, 0x10))), |e| {
            matches!(e, RestoreError::Destination { .. })
        }),
        (grant(|g| g.mode = 7), |e| {
            matches!(e, RestoreError::Mode { mode: 7, .. })
        }),
        (grant(|g| g.pasid = Some(1)), |e| {
            matches!(e, RestoreError::Pasid { .. })
        }),
        (
            {
                let mut s = good.clone();
                let dup = s.devices[0].grants[0];
                s.devices[0].grants.push(dup);
                s
            },
            |e| matches!(e, RestoreError::DuplicateIndex { .. }),
        ),
        (
            {
                let mut s = good.clone();
                s.devices[0]
                    .grants
                    .retain(|g| !(g.kind == 1 && g.index == 3));
                s
            },
            |e| matches!(e, RestoreError::MsiBlock { .. }),
        ),
        (
            {
                let mut s = good.clone();
                let g = s.devices[1].grants[0];
                // Checked before anything else: a huge list costs no reservation.
                s.devices[1].grants = (0..100).map(|i| GrantSnapshot { index: i, ..g }).collect();
                s
            },
            |e| matches!(e, RestoreError::OverQuota { .. }),
        ),
    ];
    for (i, (snapshot, expected)) in cases.iter().enumerate() {
        let err = b.restore(snapshot, feature::V1).unwrap_err();
        assert!(expected(&err), "case {i}: {err}");
        assert_eq!(b.occupancy().held, 0, "case {i}");
        host.check_invariants().unwrap();
    }
    // A VM that already holds grants is not a restore target.
    b.restore(&good, feature::V1).unwrap();
    assert!(matches!(
        b.restore(&good, feature::V1),
        Err(RestoreError::NotFresh(15))
    ));
}

#[test]
fn a_snapshot_past_a_device_share_is_refused() {
    let host = host(256);
    let a = vm(&host, 0x100);
    workload(&a);
    let snapshot = a.snapshot();
    drop(a);
    // Device 0 holds 13 vectors; its share on the destination is 12.
    let mut config = config(0x100);
    config.devices[0].share = Some(12);
    let b = host
        .create_vm(config.clone(), Box::new(MemoryRoutes::kvm_like()))
        .unwrap();
    assert_eq!(
        b.restore(&snapshot, feature::V1),
        Err(RestoreError::OverShare {
            handle: 0,
            grants: 13,
            share: 12
        })
    );
    assert_eq!(b.occupancy().held, 0);
    drop(b);
    config.devices[0].share = Some(13);
    let c = host
        .create_vm(config, Box::new(MemoryRoutes::kvm_like()))
        .unwrap();
    c.restore(&snapshot, feature::V1).unwrap();
    c.check_invariants().unwrap();
}

#[test]
fn a_refused_route_commit_restores_nothing() {
    let host = host(256);
    let a = vm(&host, 0x100);
    workload(&a);
    let snapshot = a.snapshot();
    drop(a);
    let plan = FaultPlan::new();
    let b = host
        .create_vm(
            config(0x100),
            Box::new(Faulty::new(MemoryRoutes::kvm_like(), plan.clone())),
        )
        .unwrap();
    plan.fail_nth_commit(1);
    assert_eq!(b.restore(&snapshot, feature::V1), Err(RestoreError::Routes));
    assert_eq!(b.occupancy().held, 0);
    assert_eq!(host.occupancy().vectors_used, 0);
    host.check_invariants().unwrap();
}
