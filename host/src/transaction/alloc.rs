//! ALLOC (spec §4.5): check, size, stage the routes, have the backend back the vectors,
//! settle the destinations on the count granted, reply, commit, record.

use super::backed::Backed;
use super::indices::{choose, slots};
use super::reply::{Ctx, Handled};
use super::sizing::Supply;
use super::targets::{destinations, grant_dests};
use super::{backend_refusal, route_failure, route_refusal, usable};
use crate::backend::{EnableRequest, Enabled, VectorSetup};
use crate::config::VmConfig;
use crate::grants::GrantRecord;
use crate::routes::RouteBatch;
use crate::state::VmState;
use pvirq_proto::{
    Alloc, Field, Grant, GrantInfo, GrantMode, GrantSlice, Kind, Outcome, Refusal, Resource,
    Status, feature,
};

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
        apic_ids,
        ..
    } = st;
    // Spec §5.3: the handle (6), negotiation (7), the targets' CPUs (8), the indices (9),
    // the resources (10).
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
    if let Err(refusal) = destinations(config, apic_ids, features, a.targets, &mut dests) {
        return ctx.refuse(refusal);
    }
    let (min, max) = (u32::from(a.min), u32::from(a.max));
    let slots = match slots(dev, a.kind, a.index, max) {
        Ok(slots) => slots,
        Err(refusal) => return ctx.refuse(refusal),
    };
    // Posted only for a driver that negotiated it, where the host can ([DEV-25]); a parked
    // grant too, which keeps that mode when activated (spec §3.4).
    let allow_posted = features & feature::POSTED != 0;
    let supply = Supply {
        quota: config.quota.saturating_sub(*held),
        share: dev
            .spec
            .effective_share(config.quota)
            .saturating_sub(dev.grants.granted()),
        slots,
        host: dev.backend.supply(a.kind),
        posted: allow_posted && dev.backend.can_post(),
        routes: routes.available(),
    };
    let n = match supply.size(a.kind, min, max) {
        Ok(n) => n,
        Err(refusal) => return ctx.refuse(refusal),
    };
    let indices = choose(dev.grants.table(a.kind), a.kind, a.index, n);
    if indices.len() != n as usize {
        return ctx.refuse(Refusal::DeviceError {
            resource: Resource::DeviceSlots,
        });
    }

    // The guest routes first: each gives the trigger its host interrupt will signal.
    let staged = grant_dests(a.targeting, &dests, indices.len());
    let mut batch = RouteBatch::new(routes.as_mut());
    let mut route_ids = Vec::with_capacity(indices.len());
    let mut setups = Vec::with_capacity(indices.len());
    for (i, (index, dest)) in indices.iter().zip(&staged).enumerate() {
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
        allow_posted,
    };
    if let Err(e) = dev.backend.enable(&request, &mut enabled) {
        return ctx.refuse(backend_refusal(&e));
    }
    // An MSI block is a power of two (spec §4.5). A backend may back another count (VFIO
    // halving a refused run keeps every part that fitted): the largest power of two of it
    // is granted and the rest given back.
    if a.kind == Kind::Msi && enabled.len() > 1 && enabled.len() <= setups.len() {
        let block = 1 << enabled.len().ilog2();
        if let Some(extra) = indices.get(block..enabled.len()) {
            dev.backend.disable(a.kind, extra);
        }
        enabled.truncate(block);
    }
    let granted = enabled.len();
    let posted_unasked = !allow_posted && enabled.iter().any(|e| e.mode == GrantMode::Posted);
    if granted < usize::from(a.min) || granted > setups.len() || posted_unasked {
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
    let mut backed = Backed::new(dev.backend.as_mut(), a.kind, backed);
    // Routes staged past what the host backed are taken back.
    for route in route_ids.iter().skip(granted) {
        if let Err(e) = batch.remove(*route) {
            return ctx.refuse(route_failure(&e));
        }
    }
    // A spread depends on the count granted: where the host backed fewer than were
    // staged, the vectors kept move to their places in the spread over that count.
    let dests = if granted < staged.len() {
        grant_dests(a.targeting, &dests, granted)
    } else {
        staged
    };
    for (((index, route), setup), dest) in indices.iter().zip(&route_ids).zip(&setups).zip(&dests) {
        if setup.dest != *dest {
            if let Err(e) = batch.update(*route, *dest) {
                return ctx.refuse(route_failure(&e));
            }
            backed.retarget(*index, *dest);
        }
    }

    let new_held = *held + granted as u32;
    let quota_remaining = config.quota.saturating_sub(new_held);
    let (mut basic, mut info) = (Vec::new(), Vec::new());
    let grants = if features & feature::INFO != 0 {
        info.extend(
            indices
                .iter()
                .zip(&enabled)
                .zip(&dests)
                .map(|((index, e), dest)| {
                    GrantInfo::new(*index, e.message, e.mode)
                        .with_parked(dest.is_none())
                        .with_pasid(a.pasid)
                }),
        );
        GrantSlice::Info(&info)
    } else {
        basic.extend(
            indices
                .iter()
                .zip(&enabled)
                .map(|(index, e)| Grant::new(*index, e.message)),
        );
        GrantSlice::Basic(&basic)
    };
    let reply = ctx.send(Outcome::Allocated {
        grants,
        quota_remaining,
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
    for (((index, route), dest), e) in indices.iter().zip(&route_ids).zip(&dests).zip(&enabled) {
        table.insert(
            *index,
            GrantRecord {
                route: *route,
                dest: *dest,
                message: e.message,
                mode: e.mode,
                pasid: a.pasid,
            },
        );
    }
    *held = new_held;
    ctx.handled(used, Status::Ok)
}
