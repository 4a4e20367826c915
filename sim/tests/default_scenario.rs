//! The default scenario in-process: every expectation it states is met, and each part of
//! issues 13 and 14 it is meant to show is there in the report, checked from what the
//! guests reported rather than from the scenario's own expectations.

mod common;

use common::{assert_passed, run_text};
use pvirq_sim::report::{Report, StepRecord};
use pvirq_sim::scenario::DEFAULT;

fn steps<'r>(report: &'r Report, vm: &str, op: &str) -> Vec<&'r StepRecord> {
    report
        .steps
        .iter()
        .filter(|s| s.vm == vm && s.op == op)
        .collect()
}

#[test]
fn every_expectation_of_the_default_scenario_is_met() {
    let report = run_text(DEFAULT);
    assert_passed(&report);
    assert!(report.passed());
    assert!(report.expectations_checked >= 150, "it states its outcomes");
    assert_eq!(report.fire_totals.misrouted, 0);
    assert_eq!(
        report.fire_totals.delivered + report.fire_totals.blocked,
        report.fire_totals.fired
    );
}

#[test]
fn version_1_drivers_run_beside_extended_ones_with_what_each_negotiated() {
    let report = run_text(DEFAULT);
    let features = |vm: &str| {
        report
            .vms
            .iter()
            .find(|v| v.name == vm)
            .map(|v| v.features.join(" "))
            .unwrap()
    };
    for v1 in ["db", "analytics", "greedy", "web", "late"] {
        assert_eq!(features(v1), "", "{v1} negotiates no extension bit");
    }
    assert_eq!(features("hpc"), "apic-id info events spread");
    assert_eq!(features("storage"), "info posted events");
    assert_eq!(
        features("edge"),
        "info posted parked events contiguous index-list"
    );
    // The text report says so for each VM before the steps.
    let text = pvirq_sim::report::render(&report);
    assert!(text.contains("VM db: 4 vCPUs, driver negotiated version 1 (no extension bit)"));
    assert!(text.contains("VM hpc: 4 vCPUs (APIC IDs 0 2 4 6), driver negotiated apic-id"));
}

#[test]
fn sparse_apic_ids_spread_and_identity_are_shown() {
    let report = run_text(DEFAULT);
    let allocs = steps(&report, "hpc", "alloc");
    // The admin queue goes to vCPU 3, which is APIC ID 6.
    let admin = &allocs[0].grants[0];
    assert_eq!((admin.vcpu, admin.apic_id), (Some(3), Some(6)));
    // A short grant (the share) is spread over all four vCPUs.
    let spread: Vec<Option<u32>> = allocs[1].grants.iter().map(|g| g.apic_id).collect();
    assert_eq!(
        spread,
        [Some(0), Some(0), Some(2), Some(4), Some(4), Some(6)]
    );
    // An APIC ID that is not the VM's is refused.
    assert_eq!(allocs[2].status, "invalid-target");
    let queries = steps(&report, "hpc", "query");
    let nvme = queries[0].query.as_ref().unwrap();
    assert_eq!(
        (nvme.bdf.as_str(), nvme.format.as_str(), nvme.share),
        ("0000:03:00.0", "vtd-remappable", 7)
    );
    let wq = queries[1].query.as_ref().unwrap();
    assert_eq!(
        (wq.bdf.as_str(), wq.interface_pasid),
        ("0000:6a:01.0", Some(5))
    );
    let storage = steps(&report, "storage", "query")[0].query.clone().unwrap();
    assert_eq!(
        (storage.format.as_str(), storage.can_post),
        ("amd-remapped", true)
    );
}

#[test]
fn the_amd_table_runs_out_on_its_own_and_posted_grants_take_no_host_vector() {
    let report = run_text(DEFAULT);
    let allocs = steps(&report, "storage", "alloc");
    let big = allocs[0];
    assert_eq!(big.count, Some(512));
    assert!(big.grants.iter().all(|g| g.mode == "posted"));
    let before = &report.steps[big.step - 2];
    assert_eq!(
        big.host, before.host,
        "no IRTE of the VT-d units, no host vector"
    );
    let full = allocs[1];
    let refusal = full.refusal.as_ref().unwrap();
    assert_eq!(
        (refusal.resource.as_deref(), refusal.available),
        (Some("irte"), Some(0))
    );
    assert!(
        full.host.irtes_free > 0,
        "the VT-d units still have entries"
    );
    let fire = steps(&report, "storage", "fire")[0].fire.unwrap();
    assert_eq!(fire.delivered, 512);
}

#[test]
fn parked_grants_are_activated_and_fragmentation_is_told_apart() {
    let report = run_text(DEFAULT);
    let allocs = steps(&report, "edge", "alloc");
    assert!(
        allocs[0]
            .grants
            .iter()
            .all(|g| g.parked && g.vcpu.is_none())
    );
    let fires = steps(&report, "edge", "fire");
    assert_eq!(
        fires[0].fire.unwrap().fired,
        0,
        "parked: masked, nothing sent"
    );
    assert_eq!(fires[1].fire.unwrap().delivered, 8, "after activate");
    let fragmented = allocs
        .iter()
        .find(|s| s.status == "no-space")
        .expect("ANY_CONTIGUOUS refused");
    assert_eq!(
        fragmented.refusal.as_ref().unwrap().resource.as_deref(),
        Some("slots-fragmented")
    );
    let frees: Vec<&str> = steps(&report, "edge", "free")
        .iter()
        .map(|s| s.request.as_str())
        .collect();
    assert_eq!(frees, ["free msix list 9,11,13,15", "free msix list 8,10"]);
    let satisfied = allocs
        .iter()
        .find(|s| s.step > fragmented.step && s.request.contains("any-contiguous"))
        .unwrap();
    assert_eq!(satisfied.answer, "granted 4 @8-11, posted");
}

#[test]
fn quota_shares_hotplug_and_available_arrive_as_events() {
    let report = run_text(DEFAULT);
    let kinds = |vm: &str| -> Vec<String> {
        steps(&report, vm, "events")
            .iter()
            .flat_map(|s| s.events.iter().map(|e| e.kind.clone()))
            .collect()
    };
    assert_eq!(kinds("hpc"), ["limits"]);
    assert_eq!(
        kinds("storage"),
        ["limits", "device-added", "device-removed"]
    );
    assert_eq!(kinds("batch"), ["available"]);
    // The guest that fell back got what it missed once told.
    let batch = steps(&report, "batch", "alloc");
    assert!(batch[0].fallback);
    assert_eq!(batch[1].status, "no-space");
    assert_eq!(batch[2].status, "ok");
    assert_eq!(
        batch[2].count,
        batch[1]
            .request
            .split('×')
            .nth(1)
            .and_then(|n| n.parse().ok())
    );
    // A version-1 driver cannot be told of a quota change: it waits for a reset.
    let staged = steps(&report, "greedy", "set_quota")[0];
    assert!(staged.answer.starts_with("staged"), "{}", staged.answer);
}

#[test]
fn the_migration_keeps_reprograms_and_revokes_and_every_grant_left_fires_on_the_destination() {
    let report = run_text(DEFAULT);
    let migrate = steps(&report, "edge", "migrate")[0];
    let m = migrate.migration.as_ref().unwrap();
    assert!(m.migrated);
    assert!(m.kept > 0 && m.reprogrammed > 0 && m.revoked > 0, "{m:?}");
    assert_eq!(m.source_released, m.kept + m.reprogrammed + m.revoked);
    assert_eq!(migrate.host_name, "host-b");
    let events = &steps(&report, "edge", "events")[0].events;
    let reprogrammed = events.iter().filter(|e| e.kind == "reprogram").count();
    let revoked = events.iter().filter(|e| e.kind == "revoke").count();
    assert_eq!(
        (reprogrammed, revoked),
        (m.reprogrammed as usize, m.revoked as usize)
    );
    assert!(
        events
            .iter()
            .filter(|e| e.kind == "reprogram" || e.kind == "revoke")
            .all(|e| e.applied)
    );
    // Every grant left fires on host-b, each to its target.
    let after: u64 = steps(&report, "edge", "fire")
        .iter()
        .filter(|s| s.step > migrate.step)
        .map(|s| {
            let f = s.fire.unwrap();
            assert_eq!((f.blocked, f.misrouted), (0, 0), "step {}", s.step);
            assert_eq!(s.host_name, "host-b");
            f.delivered
        })
        .sum();
    assert_eq!(after, u64::from(m.kept + m.reprogrammed));
    let edge = report.vms.iter().find(|v| v.name == "edge").unwrap();
    assert_eq!(
        (edge.host.as_str(), edge.held),
        ("host-b", m.kept + m.reprogrammed)
    );
    let b = &report.destinations[0];
    assert_eq!(b.name, "host-b");
    assert!(b.final_host.irtes_used.iter().sum::<u32>() > b.initial.irtes_used.iter().sum());
}
