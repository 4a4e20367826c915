//! Turning what a guest side reported into the report's records: grants with their
//! targets, QUERY's identity, events in words, a migration's fates.

use super::outcome::{EventView, GrantView};
use crate::report::{EventRecord, FateRecord, GrantRecord, MigrationRecord, QueryRecord};
use crate::scenario::{AllocStep, VmDecl, bdf_text};
use pvirq_host::snapshot::{Restored, RestoredGrant};
use pvirq_proto::{DeviceInfoExt, EventBody, feature};

/// The device's name in VM `decl`, or its handle.
pub(super) fn device_name(decl: &VmDecl, handle: u32) -> String {
    decl.devices
        .get(handle as usize)
        .map_or_else(|| format!("device {handle}"), |d| d.name.clone())
}

/// The grants of ALLOC `a` (`n` granted), each with where it goes.
pub(super) fn grant_records(
    decl: &VmDecl,
    a: &AllocStep,
    grants: &[GrantView],
) -> Vec<GrantRecord> {
    let n = grants.len();
    grants
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let dest = if g.parked { None } else { a.dest_of(i, n) };
            let apic_id = dest.and_then(|d| decl.delivery_apic_id(d.vcpu));
            GrantRecord {
                index: g.index,
                mode: g.mode.name().to_string(),
                parked: g.parked,
                pasid: g.pasid,
                vcpu: apic_id.and_then(|a| decl.vcpu_of_apic_id(a)),
                apic_id,
                vector: dest.map(|d| d.vector),
                address: g.message.address,
                data: g.message.data,
            }
        })
        .collect()
}

/// What QUERY with `INFO` said.
pub(super) fn query_record(ext: &DeviceInfoExt) -> QueryRecord {
    QueryRecord {
        bdf: bdf_text(&ext.identity),
        requester_id: ext.identity.requester_id,
        interface_pasid: ext.identity.pasid,
        format: ext.format.name().to_string(),
        can_post: ext.can_post,
        share: ext.share,
        msix_free_run: ext.msix_free_run,
        ims_free_run: ext.ims_free_run,
        parked_drops: ext.parked_drops,
    }
}

/// An event in words.
pub(super) fn event_record(decl: &VmDecl, view: &EventView) -> EventRecord {
    let name = |d: u32| device_name(decl, d);
    let text = match view.event.body {
        EventBody::Reprogram {
            device,
            kind,
            index,
            message,
            mode,
        } => format!(
            "{} {kind} {index} → {:#x}/{:#x} ({mode})",
            name(device),
            message.address,
            message.data
        ),
        EventBody::Revoke {
            device,
            kind,
            index,
            reason,
        } => format!("{} {kind} {index}: {reason}", name(device)),
        EventBody::Limits {
            device: None,
            limit,
        } => format!("VM quota {limit}"),
        EventBody::Limits {
            device: Some(d),
            limit,
        } => format!("{} share {limit}", name(d)),
        EventBody::Available { device, count } => format!("{} could get {count}", name(device)),
        EventBody::DeviceAdded { device } | EventBody::DeviceRemoved { device } => {
            format!("{} (handle {device})", name(device))
        }
    };
    EventRecord {
        sequence: view.event.sequence,
        kind: view.event.body.event_type().name().to_string(),
        text,
        applied: view.applied,
    }
}

/// A migration to `to` that happened: each grant's fate, counted.
pub(super) fn migration_record(
    decl: &VmDecl,
    to: String,
    fates: &[RestoredGrant],
    source_released: u32,
) -> MigrationRecord {
    let mut record = MigrationRecord {
        to,
        migrated: true,
        refused: None,
        kept: 0,
        reprogrammed: 0,
        revoked: 0,
        fates: Vec::with_capacity(fates.len()),
        source_released,
    };
    for f in fates {
        let (fate, reason) = match f.outcome {
            Restored::Kept => {
                record.kept += 1;
                ("kept", None)
            }
            Restored::Reprogrammed(_) => {
                record.reprogrammed += 1;
                ("reprogrammed", None)
            }
            Restored::Revoked(resource) => {
                record.revoked += 1;
                ("revoked", Some(resource.name().to_string()))
            }
        };
        record.fates.push(FateRecord {
            device: device_name(decl, f.device),
            kind: f.kind.name().to_string(),
            index: f.index,
            fate: fate.to_string(),
            reason,
        });
    }
    record
}

/// How targets are named in VM `decl`'s requests: `APIC` with `APIC_ID`, else `vCPU`.
pub(super) fn target_label(decl: &VmDecl) -> &'static str {
    if decl.asks(feature::APIC_ID) {
        "APIC"
    } else {
        "vCPU"
    }
}
