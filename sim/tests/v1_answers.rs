//! A version-1-only scenario is answered exactly as before the extensions: the report of
//! `v1.toml` (the five tenants of the default scenario before issue 13) and of `small.toml`
//! match, field by field, the reports the simulator gave before issue 13, stored in
//! `tests/golden/` (every step's request, answer, refusal, counts, quota and host
//! occupancy, fire counts and expectations; the totals at the end).

use pvirq_sim::run::{MemoryBackend, run};
use pvirq_sim::scenario::parse;
use serde_json::Value;

/// The fields of a step that version 1's report had.
const STEP_FIELDS: [&str; 19] = [
    "step",
    "line",
    "op",
    "vm",
    "device",
    "request",
    "status",
    "answer",
    "refusal",
    "fallback",
    "attempts",
    "count",
    "available",
    "quota_left",
    "vm_held",
    "host",
    "fire",
    "note",
    "checks",
];

/// The report's fields version 1's report had, besides the steps and the VMs.
const REPORT_FIELDS: [&str; 7] = [
    "initial_host",
    "final_host",
    "fire_totals",
    "host_faults",
    "invariant_violations",
    "expectations_checked",
    "expectations_failed",
];

fn answered_as_before(scenario: &str, golden: &str) {
    let scenario = parse(scenario, "v1.toml").unwrap();
    let report = run(&scenario, &mut MemoryBackend).unwrap();
    let now: Value = serde_json::from_str(&report.to_json()).unwrap();
    let before: Value = serde_json::from_str(golden).unwrap();
    let (now_steps, before_steps) = (
        now["steps"].as_array().unwrap(),
        before["steps"].as_array().unwrap(),
    );
    assert_eq!(now_steps.len(), before_steps.len());
    for (n, b) in now_steps.iter().zip(before_steps) {
        for field in STEP_FIELDS {
            assert_eq!(n[field], b[field], "step {}: {field}", b["step"]);
        }
        // Nothing the extensions add appears for a version-1 driver.
        assert_eq!(n["events"], Value::Array(Vec::new()));
        assert_eq!(n["query"], Value::Null);
        assert_eq!(n["migration"], Value::Null);
        assert!(
            n["grants"]
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["mode"] == "remapped" && g["parked"] == false && g["pasid"].is_null())
        );
    }
    for field in REPORT_FIELDS {
        assert_eq!(now[field], before[field], "{field}");
    }
    let vms = |r: &Value| -> Vec<(Value, Value, Value, Value)> {
        r["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].clone(),
                    v["held"].clone(),
                    v["quota"].clone(),
                    v["devices"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(vms(&now), vms(&before));
    assert!(
        now["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["features"] == Value::Array(Vec::new()))
    );
}

#[test]
fn the_five_tenants_of_version_1_are_answered_as_before() {
    answered_as_before(
        include_str!("../scenarios/v1.toml"),
        include_str!("golden/v1.json"),
    );
}

#[test]
fn the_small_scenario_is_answered_as_before() {
    answered_as_before(
        include_str!("../scenarios/small.toml"),
        include_str!("golden/small.json"),
    );
}

#[test]
fn the_default_scenario_opens_with_the_five_tenants_of_version_1_unchanged() {
    // Act 1 of the default scenario is v1.toml's steps, answered the same.
    let default = parse(pvirq_sim::scenario::DEFAULT, "default.toml").unwrap();
    let v1 = parse(include_str!("../scenarios/v1.toml"), "v1.toml").unwrap();
    let default = run(&default, &mut MemoryBackend).unwrap();
    let v1 = run(&v1, &mut MemoryBackend).unwrap();
    for (d, v) in default.steps.iter().zip(&v1.steps) {
        assert_eq!(
            (
                &d.vm, &d.request, &d.answer, &d.refusal, d.count, &d.host, d.fire, &d.checks
            ),
            (
                &v.vm, &v.request, &v.answer, &v.refusal, v.count, &v.host, v.fire, &v.checks
            ),
            "step {}",
            v.step
        );
    }
}
