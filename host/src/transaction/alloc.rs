//! ALLOC (spec §4.5): check, size, stage the routes, have the backend back the vectors,
//! reply, commit, record.

use super::backed::Backed;
use super::reply::{Ctx, Handled};
use super::sizing::Supply;
use super::{backend_refusal, route_failure, route_refusal, table_size, usable};
use crate::backend::{EnableRequest, Enabled, GuestDest, VectorSetup};
use crate::config::VmConfig;
use crate::grants::GrantRecord;
use crate::routes::RouteBatch;
use crate::state::VmState;
use pvirq_proto::{
    Alloc, Field, Grant, GrantSlice, IndexSpec, Kind, Outcome, Refusal, Resource, Status, feature,
};

/// The destination of each target, or the INVALID_TARGET refusal for the first bad one.
pub(super) fn destinations(
    config: &VmConfig,
    targets: &[pvirq_proto::Target],
    out: &mut Vec<Option<GuestDest>>,
) -> Result<(), Refusal> {
    for (entry, t) in targets.iter().enumerate() {
        let apic_id = config.apic_ids.of_vcpu(t.vcpu(), config.num_vcpus);
        match apic_id {
            Some(apic_id) => out.push(Some(GuestDest {
                apic_id,
                vector: t.vector(),
            })),
            None => {
                return Err(Refusal::InvalidTarget {
                    field: Field::TargetVcpu,
                    entry: entry as u32,
                });
            }
        }
    }
    Ok(())
}

pub(super) fn alloc(
    ctx: &mut Ctx<'_>,
    config: &VmConfig,
    st: &mut VmState,
    handle: u32,
    a: &Alloc<'_>,
) -> Handled {
    let features = st.features;
    let VmState {
        routes,
        devices,
        held,
        ..
    } = st;
    let Some(dev) = devices.get_mut(handle as usize) else {
        return ctx.refuse(Refusal::NoDevice);
    };
    if !usable(&dev.spec, features, a.kind) {
        return ctx.refuse(Refusal::Unsupported { field: Field::Kind });
    }
    if a.pasid.is_some() && features & feature::PASID == 0 {
        return ctx.refuse(Refusal::Unsupported {
            field: Field::Pasid,
        });
    }
    let mut dests = Vec::with_capacity(a.targets.len());
    if let Err(refusal) = destinations(config, a.targets, &mut dests) {
        return ctx.refuse(refusal);
    }
    let (min, max) = (u32::from(a.min), u32::from(a.max));
    let msi = a.kind == Kind::Msi;
    let table = dev.grants.table(a.kind);
    let slots = match (msi, a.index) {
        (true, _) => {
            // One block per device: a second ALLOC while one is held is refused.
            if table.granted() > 0 {
                return ctx.refuse(Refusal::IndexInUse { index: 0 });
            }
            table_size(dev, Kind::Msi)
        }
        (false, IndexSpec::At(first)) => {
            let size = table.size();
            if u64::from(first) + u64::from(max) > u64::from(size) {
                return ctx.refuse(Refusal::IndexOutOfRange {
                    index: first.max(size),
                });
            }
            if let Some(index) = (first..first + max).find(|i| !table.free.is_free(*i)) {
                return ctx.refuse(Refusal::IndexInUse { index });
            }
            max
        }
        (false, IndexSpec::Any) => table.free.free_count(),
        // An extension this device does not offer (spec §4.5): an undefined flag.
        (false, IndexSpec::AnyContiguous) => {
            return ctx.refuse(Refusal::BadRequest {
                field: Field::Flags,
                entry: 0,
            });
        }
    };
    let supply = Supply {
        quota: config.quota.saturating_sub(*held),
        slots,
        host: dev.backend.supply(a.kind),
        posted: false,
        routes: routes.available(),
    };
    let n = match supply.size(a.kind, min, max) {
        Ok(n) => n,
        Err(refusal) => return ctx.refuse(refusal),
    };
    let indices: Vec<u32> = match (msi, a.index) {
        (true, _) => (0..n).collect(),
        (false, IndexSpec::At(first)) => (first..first + n).collect(),
        (false, IndexSpec::Any | IndexSpec::AnyContiguous) => table.lowest_free(n),
    };
    if indices.len() != n as usize {
        return ctx.refuse(Refusal::DeviceError {
            resource: Resource::DeviceSlots,
        });
    }

    // The guest routes first: each gives the trigger its host interrupt will signal.
    let mut batch = RouteBatch::new(routes.as_mut());
    let mut route_ids = Vec::with_capacity(indices.len());
    let mut setups = Vec::with_capacity(indices.len());
    for (i, (index, dest)) in indices.iter().zip(&dests).enumerate() {
        match batch.add(*dest) {
            Ok(route) => {
                route_ids.push(route.id);
                setups.push(VectorSetup {
                    index: *index,
                    trigger: route.trigger,
                    dest: *dest,
                    previous: None,
                });
            }
            Err(e) => return ctx.refuse(route_refusal(&e, i as u32)),
        }
    }
    // Then the host, through the device's backend: it backs a prefix of at least `min`.
    let mut enabled: Vec<Enabled> = Vec::with_capacity(setups.len());
    let request = EnableRequest {
        kind: a.kind,
        vectors: &setups,
        min: usize::from(a.min),
        pasid: a.pasid,
        allow_posted: false,
    };
    if let Err(e) = dev.backend.enable(&request, &mut enabled) {
        return ctx.refuse(backend_refusal(&e));
    }
    let granted = enabled.len();
    if granted < usize::from(a.min) || granted > setups.len() {
        // A backend that broke its promise: give back what it reports and refuse.
        if let Some(backed) = indices.get(..granted.min(indices.len())) {
            dev.backend.disable(a.kind, backed);
        }
        return ctx.refuse(Refusal::DeviceError {
            resource: Resource::Irte,
        });
    }
    let Some(backed) = indices.get(..granted) else {
        return ctx.dropped();
    };
    let backed = Backed::new(dev.backend.as_mut(), a.kind, backed);
    // Routes staged past what the host backed are taken back.
    for route in route_ids.iter().skip(granted) {
        if let Err(e) = batch.remove(*route) {
            return ctx.refuse(route_failure(&e));
        }
    }
    let grants: Vec<Grant> = indices
        .iter()
        .zip(&enabled)
        .map(|(index, e)| Grant::new(*index, e.message))
        .collect();
    let new_held = *held + granted as u32;
    let reply = ctx.send(Outcome::Allocated {
        grants: GrantSlice::Basic(&grants),
        quota_remaining: config.quota.saturating_sub(new_held),
    });
    let Ok(used) = reply else {
        return ctx.dropped(); // the batch aborts and the host disables as they drop
    };
    if let Err(e) = batch.commit() {
        drop(backed);
        return ctx.refuse(route_failure(&e));
    }
    backed.keep();

    // Acknowledged and live: the reservations become grants.
    let table = dev.grants.table_mut(a.kind);
    for (((index, route), setup), e) in indices.iter().zip(&route_ids).zip(&setups).zip(&enabled) {
        table.insert(
            *index,
            GrantRecord {
                route: *route,
                dest: setup.dest,
                message: e.message,
                mode: e.mode,
                pasid: a.pasid,
            },
        );
    }
    *held = new_held;
    ctx.handled(used, Status::Ok)
}
