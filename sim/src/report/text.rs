//! The readable rendering: the VMs and what their drivers negotiated, one table row per
//! step (with what the extensions add on lines under it: grants, QUERY's identity, events,
//! a migration's fates), then every host's occupancy.

use super::details::details;
use super::{Report, StepRecord, VmSummary};
use std::fmt::Write;

const HEADERS: [&str; 9] = [
    "#",
    "VM",
    "device",
    "request",
    "answer",
    "reason",
    "quota left",
    "host left",
    "expect",
];

fn row(s: &StepRecord) -> [String; 9] {
    let reason = match &s.refusal {
        Some(r) => {
            let what = match (&r.resource, r.available) {
                (Some(res), Some(avail)) => format!("{res}: {avail} available"),
                (Some(res), None) => res.clone(),
                _ => r.text.clone(),
            };
            if s.fallback {
                format!("{what} → retried")
            } else {
                what
            }
        }
        None => String::from("-"),
    };
    let met = s.checks.iter().filter(|c| c.met).count();
    let expect = match (s.checks.len(), met == s.checks.len()) {
        (0, _) => String::from("-"),
        (n, true) => format!("✓ {n}"),
        (n, false) => format!("✗ {}/{n}", n - met),
    };
    [
        s.step.to_string(),
        s.vm.clone(),
        s.device.clone().unwrap_or_else(|| String::from("-")),
        s.request.clone(),
        s.answer.clone(),
        reason,
        format!("{}/{}", s.quota_left, s.quota_left + s.vm_held),
        if s.host_name == "host" {
            format!("{} IRTE · {} vec", s.host.irtes_free, s.host.vectors_free)
        } else {
            format!(
                "{}: {} IRTE · {} vec",
                s.host_name, s.host.irtes_free, s.host.vectors_free
            )
        },
        expect,
    ]
}

fn width(text: &str) -> usize {
    text.chars().count()
}

/// The report as text for a terminal.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pvirq-sim · scenario {:?} · delivery: {}",
        report.scenario, report.backend
    );
    if let Some(d) = &report.description {
        for line in d.trim().lines() {
            let _ = writeln!(out, "  {}", line.trim());
        }
    }
    let h = &report.initial_host;
    let _ = writeln!(
        out,
        "host: {} IOMMU unit(s) × {} IRTEs, {} host vectors",
        h.irtes_capacity.len(),
        h.irtes_capacity.first().copied().unwrap_or(0),
        h.vectors_free + h.vectors_used
    );
    for d in &report.destinations {
        let i = &d.initial;
        let _ = writeln!(
            out,
            "destination {}: {} IOMMU unit(s) × {} IRTEs, {} host vectors; other tenants hold \
             {} ({})",
            d.name,
            i.irtes_capacity.len(),
            i.irtes_capacity.first().copied().unwrap_or(0),
            i.vectors_free + i.vectors_used,
            d.tenant_vectors,
            i.usage()
        );
    }
    for vm in &report.vms {
        let _ = writeln!(out, "{}", vm_line(vm));
    }
    out.push('\n');

    let rows: Vec<[String; 9]> = report.steps.iter().map(row).collect();
    let mut widths = HEADERS.map(width);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(width(cell));
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            if i + 1 < cells.len() {
                l.push_str(&" ".repeat(w - width(cell)));
            }
        }
        l
    };
    let headers = HEADERS.map(String::from);
    let _ = writeln!(out, "{}", line(&headers));
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    let _ = writeln!(out, "{}", "─".repeat(total));
    for (record, cells) in report.steps.iter().zip(&rows) {
        let _ = writeln!(out, "{}", line(cells));
        if let Some(note) = &record.note {
            let _ = writeln!(out, "{:>w$}  ↳ {note}", "", w = widths[0]);
        }
        let vm = report.vms.iter().find(|v| v.name == record.vm);
        for line in details(record, vm) {
            let _ = writeln!(out, "{:>w$}    {line}", "", w = widths[0]);
        }
        for c in record.checks.iter().filter(|c| !c.met) {
            let _ = writeln!(
                out,
                "{:>w$}  ✗ expected {} = {}, got {}",
                "",
                c.field,
                c.expected,
                c.actual,
                w = widths[0]
            );
        }
    }

    let _ = writeln!(out, "\nhost occupancy at the end:");
    let f = &report.final_host;
    for (unit, (used, cap)) in f.irtes_used.iter().zip(&f.irtes_capacity).enumerate() {
        let _ = writeln!(out, "  IOMMU unit {unit}: {used:>5} / {cap} IRTEs in use");
    }
    let _ = writeln!(
        out,
        "  host vectors:  {:>4} / {} in use",
        f.vectors_used,
        f.vectors_used + f.vectors_free
    );
    for d in &report.destinations {
        let _ = writeln!(out, "  destination {}: {}", d.name, d.final_host.usage());
    }
    for vm in &report.vms {
        let devices: Vec<String> = vm
            .devices
            .iter()
            .map(|(name, held)| format!("{name} {held}"))
            .collect();
        let _ = write!(
            out,
            "  VM {:<12} holds {:>3} / {:<3} ({})",
            vm.name,
            vm.held,
            vm.quota,
            devices.join(", ")
        );
        if vm.host != "host" {
            let _ = write!(out, " on {}", vm.host);
        }
        out.push('\n');
    }
    let t = &report.fire_totals;
    let _ = write!(
        out,
        "interrupts fired: {}, delivered {}, blocked {}, misrouted {}",
        t.fired, t.delivered, t.blocked, t.misrouted
    );
    if let Some(observed) = t.observed {
        let _ = write!(out, ", observed in guests {observed}");
    }
    let _ = writeln!(out, "; host faults recorded: {}", report.host_faults);
    for v in &report.invariant_violations {
        let _ = writeln!(out, "host invariant violated: {v}");
    }
    let _ = writeln!(
        out,
        "expectations: {} checked, {} failed — {}",
        report.expectations_checked,
        report.expectations_failed,
        if report.passed() { "PASS" } else { "FAIL" }
    );
    out
}

/// A VM in one line: vCPUs (and APIC IDs when sparse), quota, what its driver negotiated.
fn vm_line(vm: &VmSummary) -> String {
    let apic = vm.apic_ids.as_ref().map_or_else(String::new, |ids| {
        let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
        format!(" (APIC IDs {})", ids.join(" "))
    });
    let driver = if vm.features.is_empty() {
        String::from("version 1 (no extension bit)")
    } else {
        vm.features.join(" ")
    };
    format!(
        "VM {}: {} vCPUs{apic}, driver negotiated {driver}",
        vm.name, vm.vcpus
    )
}
