//! Parked grants (spec §3.5): ALLOC PARKED holds everything a grant holds, interrupts to
//! it are dropped and counted, RETARGET activates it without reserving anything, and
//! RETARGET PARK parks it again, all or nothing.

use super::*;
use crate::routes::RouteState;
use pvirq_proto::GrantMode;

fn park<'a>(indices: Indices<'a>) -> Operation<'a> {
    Operation::Retarget(Retarget {
        indices,
        to: RetargetTo::Park,
    })
}

fn activate<'a>(indices: Indices<'a>, targets: &'a [Target]) -> Operation<'a> {
    Operation::Retarget(Retarget {
        indices,
        to: RetargetTo::Targets(targets),
    })
}

fn parked_drops(vm: &Vm) -> u32 {
    query(vm, 0).ext.unwrap().parked_drops
}

#[test]
fn a_parked_grant_holds_everything_and_activation_needs_nothing_new() {
    // 8 IRTEs and 8 host vectors; a remapped grant holds one of each and a route.
    let host = host(8, 8, false);
    let vm = vm(
        &host,
        config(16, vec![dev(0x100, 0, 16, 0)]),
        info(feature::PARKED),
    );
    let parked = alloc(Kind::MsiX, IndexSpec::Any, (4, 4), Targeting::Parked, &[]);
    let g = grants(&vm, 0, parked).unwrap();
    assert!(
        g.iter()
            .all(|g| g.parked() && g.mode() == GrantMode::Remapped)
    );
    for (_, _, record) in vm.grants(0) {
        assert_eq!(record.dest, None);
        assert_eq!(vm.route(record.route), Some(RouteState::Parked));
    }
    let occ = host.occupancy();
    assert_eq!(
        (occ.vectors_used, occ.units[0].used, vm.occupancy().held),
        (4, 4, 4)
    );
    // Its message is final, and interrupts sent with it are dropped and counted.
    for i in [0, 0, 1] {
        assert_eq!(host.fire(0x100, g[i].message()).unwrap().dest, None);
    }
    assert_eq!(parked_drops(&vm), 3);
    // Another VM takes every IRTE and host vector left.
    let other = super::vm(&host, config(16, vec![dev(0x200, 0, 16, 0)]), feature::V1);
    let t = targets(4);
    grants(
        &other,
        0,
        alloc(Kind::MsiX, IndexSpec::Any, (4, 4), Targeting::PerVector, &t),
    )
    .unwrap();
    assert_eq!(host.occupancy().vectors_free, 0);
    // Activation needs nothing new: it succeeds with the host full.
    assert_eq!(counted(&vm, 0, activate(run(Kind::MsiX, 0, 4), &t)), Ok(4));
    for (i, g) in g.iter().enumerate() {
        let d = host.fire(0x100, g.message()).unwrap();
        assert_eq!(d.to(), Some((i as u32, 0x40 + i as u8)));
    }
    assert_eq!(parked_drops(&vm), 0, "no grant is parked now");
    // PARK (Linux's deactivate) is all or nothing.
    assert_eq!(
        counted(&vm, 0, park(run(Kind::MsiX, 1, 4))),
        Err(Refusal::NotGranted { index: 4 })
    );
    assert!(dests(&vm, 0, Kind::MsiX).iter().all(|(_, d)| d.is_some()));
    assert_eq!(counted(&vm, 0, park(run(Kind::MsiX, 1, 2))), Ok(2));
    assert_eq!(
        dests(&vm, 0, Kind::MsiX),
        [(0, Some(0)), (1, None), (2, None), (3, Some(3))]
    );
    assert_eq!(host.fire(0x100, g[2].message()).unwrap().dest, None);
    assert_eq!(parked_drops(&vm), 1);
    assert_eq!(
        host.occupancy().vectors_free,
        0,
        "parking gave nothing back"
    );
    vm.check_invariants().unwrap();
    host.check_invariants().unwrap();
}

#[test]
fn a_parked_grant_on_a_posting_host_is_posted_and_keeps_its_mode() {
    // Two host vectors only: six posted grants need none.
    let host = host(64, 2, true);
    let features = info(feature::PARKED | feature::POSTED);
    let vm = vm(&host, config(16, vec![dev(0x100, 0, 16, 0)]), features);
    let parked = alloc(Kind::MsiX, IndexSpec::Any, (6, 6), Targeting::Parked, &[]);
    let g = grants(&vm, 0, parked).unwrap();
    assert!(
        g.iter()
            .all(|g| g.parked() && g.mode() == GrantMode::Posted)
    );
    assert_eq!(host.occupancy().vectors_used, 0);
    assert_eq!(host.fire(0x100, g[5].message()).unwrap().dest, None);
    host.check_invariants().unwrap();
    let t = targets(6);
    assert_eq!(counted(&vm, 0, activate(run(Kind::MsiX, 0, 6), &t)), Ok(6));
    // Parked and activated again: still posted, delivered straight to the vCPU.
    assert_eq!(counted(&vm, 0, park(run(Kind::MsiX, 5, 1))), Ok(1));
    let to = [Target::new(1, 0x99)];
    assert_eq!(counted(&vm, 0, activate(run(Kind::MsiX, 5, 1), &to)), Ok(1));
    let d = host.fire(0x100, g[5].message()).unwrap();
    assert_eq!((d.to(), d.mode), (Some((1, 0x99)), GrantMode::Posted));
    assert!(
        vm.grants(0)
            .iter()
            .all(|(_, _, r)| r.mode == GrantMode::Posted)
    );
    assert_eq!(host.occupancy().vectors_used, 0);
    vm.check_invariants().unwrap();
    host.check_invariants().unwrap();
}

#[test]
fn a_parked_msi_block_and_pasid_grant_activate_like_any_other() {
    let host = host(64, 64, false);
    let vm = vm(
        &host,
        config(16, vec![dev(0x100, 4, 0, 8)]),
        info(feature::PARKED),
    );
    let block = alloc(Kind::Msi, IndexSpec::Any, (4, 4), Targeting::Parked, &[]);
    assert_eq!(grants(&vm, 0, block).unwrap().len(), 4);
    let ims = Operation::Alloc(Alloc {
        kind: Kind::Ims,
        index: IndexSpec::At(6),
        min: 2,
        max: 2,
        pasid: Some(0x99),
        targeting: Targeting::Parked,
        targets: &[],
    });
    let g = grants(&vm, 0, ims).unwrap();
    assert!(g.iter().all(|g| g.parked() && g.pasid() == Some(0x99)));
    // Part of the block is activated; the rest stays parked.
    let t = targets(2);
    assert_eq!(counted(&vm, 0, activate(run(Kind::Msi, 2, 2), &t)), Ok(2));
    assert_eq!(
        dests(&vm, 0, Kind::Msi),
        [(0, None), (1, None), (2, Some(0)), (3, Some(1))]
    );
    assert_eq!(counted(&vm, 0, activate(run(Kind::Ims, 6, 2), &t)), Ok(2));
    let d = host.fire_tagged(0x100, Some(0x99), g[1].message()).unwrap();
    assert_eq!(d.to(), Some((1, 0x41)));
    vm.check_invariants().unwrap();
}
