//! The scenario runner through the library API: the default multi-tenant scenario's
//! outcome, checked from what the guests were answered (not only from the scenario's own
//! expectations); failing expectations; and errors naming line and field.

use pvirq_sim::report::{Report, StepRecord};
use pvirq_sim::run::{MemoryBackend, run};
use pvirq_sim::scenario::{self, DEFAULT};

fn run_text(text: &str) -> Report {
    let scenario = scenario::parse(text, "test.toml").expect("scenario parses");
    run(&scenario, &mut MemoryBackend).expect("scenario runs")
}

fn refused_for(step: &StepRecord) -> Option<(&str, u32)> {
    let r = step.refusal.as_ref()?;
    Some((r.resource.as_deref()?, r.available?))
}

#[test]
fn the_default_scenario_meets_every_expectation_it_states() {
    let report = run_text(DEFAULT);
    assert!(
        report.expectations_checked >= 40,
        "the scenario states its outcomes"
    );
    let failures: Vec<_> = report.failures().collect();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(report.invariant_violations.is_empty());
    assert!(report.passed());
}

#[test]
fn the_pool_runs_dry_and_later_guests_get_typed_refusals_and_fall_back() {
    let report = run_text(DEFAULT);
    // Fallbacks: the guest retried with exactly what the refusal said was available, and
    // got it.
    let fallbacks: Vec<_> = report.steps.iter().filter(|s| s.fallback).collect();
    let resources: Vec<_> = fallbacks.iter().filter_map(|s| refused_for(s)).collect();
    assert!(
        resources.iter().any(|(r, _)| *r == "vm-quota"),
        "{resources:?}"
    );
    assert!(resources.iter().any(|(r, _)| *r == "irte"), "{resources:?}");
    for s in &fallbacks {
        let (_, available) = refused_for(s).expect("a fallback answers a NO_SPACE");
        assert_eq!(s.status, "ok");
        assert_eq!(s.count, Some(available), "step {}", s.step);
        assert!(s.attempts >= 2);
    }
    // The quota fallback got exactly the quota; the IRTE fallback drained its unit.
    let quota = fallbacks
        .iter()
        .find(|s| refused_for(s).is_some_and(|(r, _)| r == "vm-quota"))
        .unwrap();
    assert_eq!(quota.quota_left, 0);
    let irte = fallbacks
        .iter()
        .find(|s| refused_for(s).is_some_and(|(r, _)| r == "irte"))
        .unwrap();
    assert!(irte.host.irtes_used.contains(&48), "{:?}", irte.host);
    // With the pool dry, a refusal with nothing to fall back to: the host had no vector.
    let dry = report
        .steps
        .iter()
        .find(|s| s.status == "no-space")
        .expect("a request is refused");
    assert_eq!(refused_for(dry), Some(("host-vector", 0)));
    assert_eq!(dry.host.vectors_free, 0);
    assert!(!dry.fallback);
    // A refused request changed nothing on the host.
    let before = &report.steps[dry.step - 2];
    assert_eq!(before.host, dry.host);
}

#[test]
fn a_reset_vm_returns_everything_it_held_to_the_host() {
    let report = run_text(DEFAULT);
    let reset = report
        .steps
        .iter()
        .find(|s| s.op == "reset_vm")
        .expect("a VM is reset");
    let first = report
        .steps
        .iter()
        .find(|s| s.vm == reset.vm && s.op == "alloc")
        .expect("the reset VM allocated");
    let held = report.steps[reset.step - 2].vm_held;
    assert!(held > 0);
    assert_eq!(reset.count, Some(held));
    assert_eq!(reset.vm_held, 0);
    // Between the VM's first allocation and its reset, the other VMs' holdings did not
    // change in the default scenario (their later requests were refused), so the host is
    // back where it was before the VM allocated.
    let before = &report.steps[first.step - 2].host;
    assert_eq!(reset.host.irtes_used, before.irtes_used);
    assert_eq!(reset.host.vectors_used, before.vectors_used);
    // Its stale messages are blocked by the remapping unit, never delivered.
    let stale = report
        .steps
        .iter()
        .find(|s| s.vm == reset.vm && s.op == "fire" && s.step > reset.step)
        .and_then(|s| s.fire)
        .expect("the reset VM's device fires again");
    assert_eq!(stale.delivered, 0);
    assert_eq!(stale.blocked, u64::from(held));
}

#[test]
fn every_fired_vector_reaches_the_destination_its_guest_asked_for() {
    let report = run_text(DEFAULT);
    let t = report.fire_totals;
    assert!(t.delivered > 0);
    assert_eq!(t.misrouted, 0);
    assert_eq!(t.delivered + t.blocked, t.fired);
    assert_eq!(report.host_faults, t.blocked);
    // The retargeted vector is among those delivered (fired after the retarget).
    let retarget = report.steps.iter().find(|s| s.op == "retarget").unwrap();
    assert_eq!(retarget.status, "ok");
    assert!(
        report
            .steps
            .iter()
            .any(|s| s.op == "fire" && s.vm == retarget.vm && s.step > retarget.step)
    );
}

#[test]
fn quota_and_host_columns_agree_with_the_vms() {
    // Quotas change during the default scenario (a set_quota step): each step says the
    // quota it was checked against.
    let report = run_text(DEFAULT);
    for s in &report.steps {
        assert_eq!(
            s.quota_left,
            s.vm_quota.saturating_sub(s.vm_held),
            "step {}",
            s.step
        );
        let total: u32 = s.host.irtes_capacity.iter().sum();
        let used: u32 = s.host.irtes_used.iter().sum();
        assert_eq!(s.host.irtes_free, total - used);
    }
    let quota = |vm: &str| report.vms.iter().find(|v| v.name == vm).unwrap().quota;
    let last = |vm: &str| report.steps.iter().rev().find(|s| s.vm == vm).unwrap();
    for vm in &report.vms {
        assert_eq!(last(&vm.name).vm_quota, quota(&vm.name), "{}", vm.name);
    }
    // With every VM on one host and every grant remapped (version 1), the host's vectors
    // are exactly the VMs' (posted grants take none; a migrated VM's are elsewhere).
    let v1 = run_text(include_str!("../../sim/scenarios/v1.toml"));
    assert_eq!(v1.steps.last().unwrap().host, v1.final_host);
    let held: u32 = v1.vms.iter().map(|v| v.held).sum();
    assert_eq!(v1.final_host.vectors_used, held);
}

#[test]
fn a_wrong_expectation_fails_the_run_and_says_which() {
    let text = DEFAULT.replace("granted = 17,", "granted = 18,");
    assert_ne!(text, DEFAULT);
    let report = run_text(&text);
    assert!(!report.passed());
    let failures: Vec<_> = report.failures().collect();
    assert_eq!(failures.len(), 1);
    let (step, check) = failures[0];
    assert_eq!(check.field, "granted");
    assert_eq!(
        (check.expected.as_str(), check.actual.as_str()),
        ("18", "17")
    );
    assert!(
        DEFAULT
            .lines()
            .nth(step.line - 1)
            .unwrap()
            .contains("[[step]]")
    );
}

#[test]
fn a_host_snapshot_that_differs_fails_host_equals() {
    // Snapshot before db's first allocation: after web's reset the host still holds db's.
    let text = DEFAULT.replace("snapshot = \"before-web\"\n", "").replacen(
        "expect = { status = \"ok\", granted = 1, quota_left = 15 }",
        "snapshot = \"before-web\"\nexpect = { status = \"ok\", granted = 1, quota_left = 15 }",
        1,
    );
    let report = run_text(&text);
    let failures: Vec<_> = report.failures().map(|(_, c)| c.field.clone()).collect();
    assert_eq!(failures, ["host_equals"]);
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn bad_files_are_refused_with_line_and_field() {
    let cases = [
        // (edit, field, line marker in the edited text)
        (("count = \"1..4\"", "cuont = \"1..4\""), "cuont", "cuont"),
        (("quota = 16", "quota = \"sixteen\""), "quota", "sixteen"),
        (
            ("count = \"1..4\"", "count = \"4..1\""),
            "count",
            "\"4..1\"",
        ),
        (
            ("first = 1\n", "first = 1\npasid = 7\n"),
            "pasid",
            "pasid = 7",
        ),
        (("op = \"query\"", "op = \"qeury\""), "op", "qeury"),
        (
            (
                "device = \"nvme1\"\nexpect = { delivered",
                "device = \"nvme9\"\nexpect = { delivered",
            ),
            "device",
            "nvme9",
        ),
        (
            ("\"host-vector\"", "\"host-vectors\""),
            "expect.resource",
            "host-vectors",
        ),
        (
            (
                "host_equals = \"before-web\"",
                "host_equals = \"before-db\"",
            ),
            "expect.host_equals",
            "before-db",
        ),
        (
            ("requester_id = 0x0500", "requester_id = 0x0100"),
            "requester_id",
            "requester_id = 0x0100\nunit = 1",
        ),
    ];
    for ((from, to), field, marker) in cases {
        let text = DEFAULT.replacen(from, to, 1);
        assert_ne!(text, DEFAULT, "edit {from:?} applies");
        let err = scenario::parse(&text, "bad.toml").expect_err(to);
        assert_eq!(err.field.as_deref(), Some(field), "{err}");
        let marker_line = marker.lines().next().unwrap();
        let expected = if marker.contains('\n') {
            // Several lines match the first; take the one followed by the second.
            let lines: Vec<&str> = text.lines().collect();
            let second = marker.lines().nth(1).unwrap();
            lines
                .windows(2)
                .position(|w| w[0].contains(marker_line) && w[1].contains(second))
                .unwrap()
                + 1
        } else {
            line_of(&text, marker_line)
        };
        assert_eq!(err.line(), Some(expected), "{err}");
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("bad.toml:{expected}:")),
            "{shown}"
        );
        assert!(shown.contains(&format!("field `{field}`")), "{shown}");
    }
}
