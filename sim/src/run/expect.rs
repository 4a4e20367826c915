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
    if let Some(q) = expect.vm_quota {
        check(&mut out, "vm_quota", q, Some(record.vm_quota.to_string()));
    }
    grant_checks(&mut out, expect, record);
    event_checks(&mut out, expect, record);
    query_checks(&mut out, expect, record);
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

/// `mode`, `parked`, `grant_vcpus`: the ALLOC's grants.
fn grant_checks(out: &mut Vec<Check>, expect: &Expect, record: &StepRecord) {
    let grants = &record.grants;
    if let Some(m) = expect.mode {
        let mut modes: Vec<&str> = grants.iter().map(|g| g.mode.as_str()).collect();
        modes.dedup();
        let actual = match modes.as_slice() {
            [] => None,
            [one] => Some(one.to_string()),
            several => Some(several.join("+")),
        };
        check(out, "mode", m, actual);
    }
    if let Some(p) = expect.parked {
        let actual = match grants.iter().filter(|g| g.parked).count() {
            0 if grants.is_empty() => None,
            0 => Some(String::from("false")),
            n if n == grants.len() => Some(String::from("true")),
            n => Some(format!("{n} of {}", grants.len())),
        };
        check(out, "parked", p, actual);
    }
    if let Some(vcpus) = &expect.grant_vcpus {
        let shown = |v: Option<u32>| v.map_or_else(|| String::from("-"), |v| v.to_string());
        let actual: Vec<String> = grants.iter().map(|g| shown(g.vcpu)).collect();
        let expected: Vec<String> = vcpus.iter().map(|v| v.to_string()).collect();
        check(
            out,
            "grant_vcpus",
            format!("[{}]", expected.join(", ")),
            Some(format!("[{}]", actual.join(", "))),
        );
    }
}

/// `events`, `applied`, and a migration's `kept`, `reprogrammed`, `revoked`, `migrated`.
fn event_checks(out: &mut Vec<Check>, expect: &Expect, record: &StepRecord) {
    if let Some(types) = &expect.events {
        let expected: Vec<&str> = types.iter().map(|t| t.name()).collect();
        let actual: Vec<&str> = record.events.iter().map(|e| e.kind.as_str()).collect();
        check(
            out,
            "events",
            format!("[{}]", expected.join(", ")),
            Some(format!("[{}]", actual.join(", "))),
        );
    }
    if let Some(a) = expect.applied {
        let applied = record.events.iter().filter(|e| e.applied).count();
        check(out, "applied", a, Some(applied.to_string()));
    }
    let migration = record.migration.as_ref();
    let fates = &expect.fates;
    for (field, want, got) in [
        ("kept", fates.kept, migration.map(|m| m.kept)),
        (
            "reprogrammed",
            fates.reprogrammed,
            migration.map(|m| m.reprogrammed),
        ),
        ("revoked", fates.revoked, migration.map(|m| m.revoked)),
    ] {
        if let Some(want) = want {
            check(out, field, want, got.map(|g| g.to_string()));
        }
    }
    if let Some(m) = expect.migrated {
        check(
            out,
            "migrated",
            m,
            migration.map(|r| r.migrated.to_string()),
        );
    }
}

/// QUERY with `INFO`: `format`, `bdf`, `interface_pasid`, `share`, `can_post`, free runs.
fn query_checks(out: &mut Vec<Check>, expect: &Expect, record: &StepRecord) {
    let q = record.query.as_ref();
    if let Some(f) = expect.format {
        check(out, "format", f, q.map(|q| q.format.clone()));
    }
    if let Some(b) = &expect.bdf {
        check(out, "bdf", b, q.map(|q| q.bdf.clone()));
    }
    if let Some(p) = expect.interface_pasid {
        let actual = q.map(|q| {
            q.interface_pasid
                .map_or_else(|| String::from("none"), |p| p.to_string())
        });
        check(out, "interface_pasid", p, actual);
    }
    if let Some(s) = expect.share {
        check(out, "share", s, q.map(|q| q.share.to_string()));
    }
    if let Some(c) = expect.can_post {
        check(out, "can_post", c, q.map(|q| q.can_post.to_string()));
    }
    if let Some(r) = expect.msix_free_run {
        check(
            out,
            "msix_free_run",
            r,
            q.map(|q| q.msix_free_run.to_string()),
        );
    }
    if let Some(r) = expect.ims_free_run {
        check(
            out,
            "ims_free_run",
            r,
            q.map(|q| q.ims_free_run.to_string()),
        );
    }
}
