//! Checking a step's outcome against its `expect` fields.

use crate::report::{Check, HostSnapshot, StepRecord};
use crate::scenario::Expect;
use std::collections::HashMap;
use std::fmt::Display;

fn check(checks: &mut Vec<Check>, field: &str, expected: impl Display, actual: Option<String>) {
    let expected = expected.to_string();
    let actual = actual.unwrap_or_else(|| String::from("none"));
    checks.push(Check {
        field: field.to_string(),
        met: expected == actual,
        expected,
        actual,
    });
}

/// Host occupancy is "the same" when every unit's IRTEs in use and the host vectors in
/// use are.
fn same_host(a: &HostSnapshot, b: &HostSnapshot) -> bool {
    a.irtes_used == b.irtes_used && a.vectors_used == b.vectors_used
}

/// The checks of `expect` on `record`.
pub(super) fn checks(
    expect: &Expect,
    record: &StepRecord,
    snapshots: &HashMap<String, HostSnapshot>,
) -> Vec<Check> {
    let mut out = Vec::new();
    let refusal = record.refusal.as_ref();
    if let Some(s) = expect.status {
        check(&mut out, "status", s, Some(record.status.clone()));
    }
    if let Some(r) = expect.resource {
        check(
            &mut out,
            "resource",
            r,
            refusal.and_then(|r| r.resource.clone()),
        );
    }
    if let Some(a) = expect.available {
        let actual = record.available.or(refusal.and_then(|r| r.available));
        check(&mut out, "available", a, actual.map(|a| a.to_string()));
    }
    if let Some(g) = expect.granted {
        check(&mut out, "granted", g, record.count.map(|c| c.to_string()));
    }
    if let Some(f) = expect.fallback {
        check(&mut out, "fallback", f, Some(record.fallback.to_string()));
    }
    if let Some(q) = expect.quota_left {
        check(
            &mut out,
            "quota_left",
            q,
            Some(record.quota_left.to_string()),
        );
    }
    if let Some(h) = expect.vm_held {
        check(&mut out, "vm_held", h, Some(record.vm_held.to_string()));
    }
    if let Some(i) = expect.irtes_free {
        check(
            &mut out,
            "irtes_free",
            i,
            Some(record.host.irtes_free.to_string()),
        );
    }
    if let Some(v) = expect.vectors_free {
        check(
            &mut out,
            "vectors_free",
            v,
            Some(record.host.vectors_free.to_string()),
        );
    }
    if let Some(d) = expect.delivered {
        check(
            &mut out,
            "delivered",
            d,
            record.fire.map(|f| f.delivered.to_string()),
        );
    }
    if let Some(b) = expect.blocked {
        check(
            &mut out,
            "blocked",
            b,
            record.fire.map(|f| f.blocked.to_string()),
        );
    }
    if let Some(name) = &expect.host_equals {
        let met = snapshots
            .get(name)
            .is_some_and(|s| same_host(s, &record.host));
        let expected = snapshots.get(name).map_or_else(
            || format!("{name} (not taken)"),
            |s| format!("{name}: {}", s.usage()),
        );
        out.push(Check {
            field: String::from("host_equals"),
            expected,
            actual: record.host.usage(),
            met,
        });
    }
    out
}
