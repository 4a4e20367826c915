//! The lines under a step's row for what the extensions add: an ALLOC's grants (mode,
//! parked, where they go), QUERY's identity and format, each event the guest handled, a
//! migration's fates. A version-1 driver's steps get none: their rows say everything.

use super::{FateRecord, GrantRecord, StepRecord, VmSummary};

/// Distinct targets listed before the rest are counted.
const TARGETS_SHOWN: usize = 8;

/// The detail lines of `record`, whose VM is `vm`.
pub(super) fn details(record: &StepRecord, vm: Option<&VmSummary>) -> Vec<String> {
    let extended = vm.is_some_and(|v| !v.features.is_empty() || v.apic_ids.is_some());
    let mut lines = Vec::new();
    if extended && !record.grants.is_empty() {
        lines.push(grants(
            &record.grants,
            vm.and_then(|v| v.apic_ids.as_ref()).is_some(),
        ));
    }
    if let Some(q) = &record.query {
        let pasid = q
            .interface_pasid
            .map_or_else(String::new, |p| format!(" pasid {p}"));
        lines.push(format!(
            "· {}{pasid} (rid {:#06x}) · {} · share {} · {} · free runs: msix {}, ims {} · \
             parked drops {}",
            q.bdf,
            q.requester_id,
            q.format,
            q.share,
            if q.can_post {
                "can post"
            } else {
                "cannot post"
            },
            q.msix_free_run,
            q.ims_free_run,
            q.parked_drops
        ));
    }
    for e in &record.events {
        let applied = match (e.kind.as_str(), e.applied) {
            ("reprogram", true) => " · reprogrammed in the table",
            ("revoke", true) => " · masked and forgotten",
            ("reprogram" | "revoke", false) => " · not held: ignored",
            _ => "",
        };
        lines.push(format!("· #{} {}: {}{applied}", e.sequence, e.kind, e.text));
    }
    if let Some(m) = &record.migration {
        match &m.refused {
            Some(why) => lines.push(format!("· {} refused: {why}", m.to)),
            None => {
                lines.push(format!(
                    "· on {}: {}; the source released {} once the destination ran",
                    m.to,
                    fates(&m.fates),
                    m.source_released
                ));
            }
        }
    }
    lines
}

/// `@0-5 remapped → vCPU0:0x40 ×2, vCPU1:0x41, ...` (`sparse`: show APIC IDs too).
fn grants(grants: &[GrantRecord], sparse: bool) -> String {
    let indices: Vec<u32> = grants.iter().map(|g| g.index).collect();
    let mut modes: Vec<&str> = grants.iter().map(|g| g.mode.as_str()).collect();
    modes.sort_unstable();
    modes.dedup();
    let mut text = format!("· @{} {}", runs(&indices), modes.join("+"));
    if grants.iter().any(|g| g.parked) {
        text.push_str(", parked: no target yet, programmed masked");
        return text;
    }
    let mut targets: Vec<(String, usize)> = Vec::new();
    for g in grants {
        let cpu = match (g.vcpu, g.apic_id) {
            (Some(v), Some(a)) if sparse => format!("vCPU{v}/APIC{a}"),
            (Some(v), _) => format!("vCPU{v}"),
            (None, Some(a)) => format!("APIC{a}"),
            (None, None) => String::from("?"),
        };
        let t = format!("{cpu}:{:#x}", g.vector.unwrap_or(0));
        match targets.last_mut() {
            Some((last, n)) if *last == t => *n += 1,
            _ => targets.push((t, 1)),
        }
    }
    let shown: Vec<String> = targets
        .iter()
        .take(TARGETS_SHOWN)
        .map(|(t, n)| {
            if *n > 1 {
                format!("{t} ×{n}")
            } else {
                t.clone()
            }
        })
        .collect();
    text.push_str(" → ");
    text.push_str(&shown.join(", "));
    if targets.len() > TARGETS_SHOWN {
        text.push_str(&format!(", … ({} targets)", targets.len()));
    }
    text
}

/// Fates grouped: `nic msix @0-2 kept, nic msix @3 reprogrammed, nic msix @4-5 revoked
/// (host-vector)`.
fn fates(fates: &[FateRecord]) -> String {
    let mut groups: Vec<(&FateRecord, Vec<u32>)> = Vec::new();
    for f in fates {
        let same = |g: &FateRecord| {
            (&g.device, &g.kind, &g.fate, &g.reason) == (&f.device, &f.kind, &f.fate, &f.reason)
        };
        match groups.last_mut() {
            Some((first, indices)) if same(first) => indices.push(f.index),
            _ => groups.push((f, vec![f.index])),
        }
    }
    if groups.is_empty() {
        return String::from("no grants to move");
    }
    groups
        .iter()
        .map(|(f, indices)| {
            let reason = f
                .reason
                .as_ref()
                .map_or_else(String::new, |r| format!(" ({r})"));
            format!(
                "{} {} @{} {}{reason}",
                f.device,
                f.kind,
                runs(indices),
                f.fate
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Indices as compact runs: `0-3,8`.
pub fn runs(indices: &[u32]) -> String {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<String> = Vec::new();
    let mut iter = sorted.into_iter().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_join_consecutive_indices() {
        assert_eq!(runs(&[3, 0, 1, 2, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(runs(&[]), "");
    }

    fn fate(index: u32, fate: &str, reason: Option<&str>) -> FateRecord {
        FateRecord {
            device: String::from("nic"),
            kind: String::from("msix"),
            index,
            fate: fate.to_string(),
            reason: reason.map(String::from),
        }
    }

    #[test]
    fn fates_are_grouped_by_device_kind_fate_and_reason() {
        let list = [
            fate(0, "reprogrammed", None),
            fate(1, "reprogrammed", None),
            fate(2, "kept", None),
            fate(3, "revoked", Some("host-vector")),
            fate(4, "revoked", Some("irte")),
        ];
        assert_eq!(
            fates(&list),
            "nic msix @0-1 reprogrammed, nic msix @2 kept, nic msix @3 revoked (host-vector), \
             nic msix @4 revoked (irte)"
        );
        assert_eq!(fates(&[]), "no grants to move");
    }
}
