//! The extensions' commands, each done by the guest code in a KVM VM: parked grants
//! activated by list, spread grants, FREE by list and ANY_CONTIGUOUS, QUERY's identity,
//! targets by APIC ID on sparse APIC IDs.

use super::{alloc, decl, dest, device, side};
use pvirq_host::model::{ModelConfig, ModelHost};
use pvirq_proto::{
    GrantMode, IndexSpec, Kind, MessageFormat, Refusal, Resource, Target, Targeting, feature,
};
use pvirq_sim::kvm::require_kvm_or_skip;
use pvirq_sim::run::{GuestSide, StepError};

fn host() -> ModelHost {
    ModelHost::new(&ModelConfig::default()).unwrap()
}

fn indices(outcome: &pvirq_sim::run::AllocOutcome) -> Vec<u32> {
    outcome.grants.iter().map(|g| g.index).collect()
}

#[test]
fn parked_grants_deliver_nothing_until_activated_then_reach_the_activated_target() {
    if !require_kvm_or_skip() {
        return;
    }
    let host = host();
    let vm = decl(feature::ALL, 2, 16, vec![device("nic", 0x0100, 16, 0)]);
    let mut side = side(&host, &vm);
    assert!(side.features() & feature::PARKED != 0);
    let parked = alloc(
        0,
        Kind::MsiX,
        IndexSpec::Any,
        Targeting::Parked,
        (1, 4),
        vec![],
    );
    let got = side.alloc(&parked).unwrap();
    assert_eq!(got.refused, None);
    assert_eq!(got.grants.len(), 4);
    assert!(
        got.grants
            .iter()
            .all(|g| g.parked && g.mode == GrantMode::Remapped)
    );
    assert_eq!(
        side.vm().occupancy().held,
        4,
        "a parked grant holds everything"
    );
    // Parked: masked and not rung, nothing arrives.
    let fire = side.fire(0, false).unwrap();
    assert_eq!((fire.fired, fire.delivered), (0, 0));

    // Activated on vCPU 1 once the count is known, in any order: the guest sorts the list.
    let mut listed = indices(&got);
    listed.reverse();
    let targets: Vec<Target> = (0..4).map(|i| Target::new(1, 0x50 + i as u8)).collect();
    let moved = side
        .retarget_list(0, Kind::MsiX, &listed, Some(&targets))
        .unwrap();
    assert_eq!(moved, 4);
    let fire = side.fire(0, false).unwrap();
    assert_eq!(
        (fire.fired, fire.delivered, fire.misrouted, fire.blocked),
        (4, 4, 0, 0)
    );
    for i in 0..4u8 {
        assert_eq!(side.guest().count(1, 0x50 + i), 1, "vector {:#x}", 0x50 + i);
        assert_eq!(side.guest().count(0, 0x50 + i), 0);
    }

    // Parked again (Linux's deactivate): masked first, nothing rung, grants kept.
    let parked_again = side.retarget_list(0, Kind::MsiX, &listed, None).unwrap();
    assert_eq!(parked_again, 4);
    assert_eq!(side.fire(0, false).unwrap().fired, 0);
    assert_eq!(side.vm().occupancy().held, 4);
}

#[test]
fn a_short_spread_grant_lands_evenly_on_every_target() {
    if !require_kvm_or_skip() {
        return;
    }
    let host = host();
    // A quota of 4: up to 8 asked, 4 granted, spread over the two targets two each.
    let vm = decl(feature::ALL, 2, 4, vec![device("nvme", 0x0200, 16, 0)]);
    let mut side = side(&host, &vm);
    let spread = alloc(
        0,
        Kind::MsiX,
        IndexSpec::Any,
        Targeting::Spread,
        (1, 8),
        vec![dest(0, 0x60), dest(1, 0x61)],
    );
    let got = side.alloc(&spread).unwrap();
    assert_eq!(got.grants.len(), 4);
    assert!(got.grants.iter().all(|g| !g.parked));
    let fire = side.fire(0, false).unwrap();
    assert_eq!((fire.fired, fire.delivered, fire.misrouted), (4, 4, 0));
    assert_eq!(side.guest().count(0, 0x60), 2);
    assert_eq!(side.guest().count(1, 0x61), 2);
}

#[test]
fn free_by_list_is_one_request_with_index_lists_and_one_per_run_without() {
    if !require_kvm_or_skip() {
        return;
    }
    for (features, requests) in [(feature::ALL, 1), (feature::V1, 3)] {
        let host = host();
        let vm = decl(features, 2, 16, vec![device("nic", 0x0100, 8, 0)]);
        let mut side = side(&host, &vm);
        let targets = (0..6).map(|i| dest(i % 2, 0x40 + i as u8)).collect();
        let any = alloc(
            0,
            Kind::MsiX,
            IndexSpec::Any,
            Targeting::PerVector,
            (6, 6),
            targets,
        );
        let got = indices(&side.alloc(&any).unwrap());
        assert_eq!(got.len(), 6);
        // Three scattered indices, unordered.
        let freed: Vec<u32> = [5, 1, 3].iter().map(|i| got[*i]).collect();
        let exits = side.guest().exits();
        assert_eq!(side.free_list(0, Kind::MsiX, &freed).unwrap(), 3);
        assert_eq!(
            side.guest().exits().since(&exits).pvirq,
            requests,
            "features {features:#x}"
        );
        assert_eq!(side.vm().occupancy().held, 3);
        // The guest no longer rings what it freed; what it kept still delivers.
        let fire = side.fire(0, false).unwrap();
        assert_eq!((fire.fired, fire.delivered, fire.blocked), (3, 3, 0));
        // Rung anyway with the stale messages: the host blocks all three.
        let faults = host.faults().count;
        let stale = side.fire(0, true).unwrap();
        assert_eq!((stale.fired, stale.delivered), (6, 3));
        assert_eq!(host.faults().count, faults + 3);
    }
}

#[test]
fn any_contiguous_is_refused_fragmented_until_a_free_by_list_joins_a_run() {
    if !require_kvm_or_skip() {
        return;
    }
    let host = host();
    let vm = decl(feature::ALL, 2, 16, vec![device("nic", 0x0100, 8, 0)]);
    let mut side = side(&host, &vm);
    let targets = (0..8).map(|i| dest(0, 0x40 + i as u8)).collect();
    let all = alloc(
        0,
        Kind::MsiX,
        IndexSpec::Any,
        Targeting::PerVector,
        (8, 8),
        targets,
    );
    assert_eq!(side.alloc(&all).unwrap().grants.len(), 8);
    // Every other entry free: four free, no two adjacent.
    assert_eq!(side.free_list(0, Kind::MsiX, &[7, 1, 5, 3]).unwrap(), 4);
    let q = side.query_ext(0).unwrap();
    assert_eq!(q.ext.map(|e| e.msix_free_run), Some(1));
    let two = alloc(
        0,
        Kind::MsiX,
        IndexSpec::AnyContiguous,
        Targeting::Spread,
        (2, 2),
        vec![dest(1, 0x70)],
    );
    let refused = side.alloc(&two).unwrap();
    assert_eq!(
        refused.refused,
        Some(Refusal::NoSpace {
            resource: Resource::SlotsFragmented,
            available: 1,
        })
    );
    assert_eq!(side.free_list(0, Kind::MsiX, &[2]).unwrap(), 1);
    let got = side.alloc(&two).unwrap();
    assert_eq!(indices(&got), vec![1, 2]);
    let fire = side.fire(0, false).unwrap();
    assert_eq!((fire.fired, fire.delivered, fire.misrouted), (5, 5, 0));
    assert_eq!(side.guest().count(1, 0x70), 2);
}

#[test]
fn query_tells_an_extended_guest_which_function_and_format_and_a_v1_guest_nothing_new() {
    if !require_kvm_or_skip() {
        return;
    }
    let host = host();
    let vm = decl(feature::ALL, 2, 16, vec![device("nic", 0x3a19, 16, 0)]);
    let mut side = side(&host, &vm);
    let q = side.query_ext(0).unwrap();
    assert_eq!((q.granted, q.available), (0, 16));
    let ext = q.ext.expect("INFO negotiated");
    let id = ext.identity;
    assert_eq!(
        (id.segment, id.bus, id.devfn, id.requester_id, id.pasid),
        (0, 0x3a, 0x19, 0x3a19, None)
    );
    assert_eq!(ext.format, MessageFormat::VtdRemappable);
    assert_eq!(
        (ext.share, ext.msix_free_run, ext.parked_drops),
        (16, 16, 0)
    );
    let three = alloc(
        0,
        Kind::MsiX,
        IndexSpec::At(0),
        Targeting::Spread,
        (3, 3),
        vec![dest(0, 0x40)],
    );
    assert_eq!(side.alloc(&three).unwrap().grants.len(), 3);
    let q = side.query_ext(0).unwrap();
    assert_eq!((q.granted, q.ext.map(|e| e.msix_free_run)), (3, Some(13)));

    let host = self::host();
    let v1 = decl(feature::V1, 2, 16, vec![device("nic", 0x3a19, 16, 0)]);
    let mut v1 = GuestSide::new(&host, &v1).unwrap();
    assert_eq!(v1.features() & !feature::V1, 0);
    let q = v1.query_ext(0).unwrap();
    assert_eq!((q.granted, q.available, q.ext), (0, 16, None));
}

#[test]
fn sparse_apic_ids_are_targets_with_apic_id_and_vcpu_indices_without() {
    if !require_kvm_or_skip() {
        return;
    }
    for (features, target) in [(feature::ALL, 6), (feature::V1, 1)] {
        let host = host();
        let mut vm = decl(features, 2, 16, vec![device("nic", 0x0100, 16, 0)]);
        vm.apic_ids = Some(vec![0, 6]);
        let mut side = side(&host, &vm);
        let one = alloc(
            0,
            Kind::MsiX,
            IndexSpec::Any,
            Targeting::PerVector,
            (1, 1),
            vec![dest(target, 0x44)],
        );
        assert_eq!(side.alloc(&one).unwrap().grants.len(), 1);
        let fire = side.fire(0, false).unwrap();
        assert_eq!((fire.fired, fire.delivered, fire.misrouted), (1, 1, 0));
        // vCPU 1, whose APIC ID is 6, took it.
        assert_eq!(side.guest().count(1, 0x44), 1, "features {features:#x}");
    }
    // With APIC_ID, an ID that is none of the VM's is refused.
    let host = host();
    let mut vm = decl(feature::ALL, 2, 16, vec![device("nic", 0x0100, 16, 0)]);
    vm.apic_ids = Some(vec![0, 6]);
    let mut side = side(&host, &vm);
    let bad = alloc(
        0,
        Kind::MsiX,
        IndexSpec::Any,
        Targeting::PerVector,
        (1, 1),
        vec![dest(1, 0x44)],
    );
    let refused = side.alloc(&bad).unwrap().refused;
    assert!(
        matches!(refused, Some(Refusal::InvalidTarget { .. })),
        "{refused:?}"
    );
    // Asking the guest for a list it cannot make sense of is no refusal.
    let err = side.retarget_list(0, Kind::MsiX, &[0, 1], Some(&[Target::new(0, 0x40)]));
    assert!(matches!(err, Err(StepError::Failed(_))));
}
