//! RETARGET (spec §4.7): stage the route updates, reply, commit, then tell the backend
//! (a posted IRTE follows its vCPU). The message and the device's table do not change.
//!
//! With targets it moves grants, and activates parked ones; with `PARK` it parks them
//! (spec §3.5). Either way every grant keeps everything it holds, so nothing new is
//! reserved and only the route layer can refuse.

use super::named::named_grants;
use super::reply::{Ctx, Handled};
use super::targets::destinations;
use super::{route_failure, usable};
use crate::config::VmConfig;
use crate::routes::RouteBatch;
use crate::state::VmState;
use pvirq_proto::{Field, Outcome, Refusal, Retarget, RetargetTo, Status, feature};

pub(super) fn retarget(
    ctx: &mut Ctx<'_>,
    config: &VmConfig,
    st: &mut VmState,
    handle: u32,
    r: &Retarget<'_>,
) -> Handled {
    let features = st.features;
    let VmState {
        routes,
        devices,
        held,
        apic_ids,
        ..
    } = st;
    let kind = r.indices.kind();
    // Spec §5.3: the handle (6), negotiation in its listed order, kind then the RETARGET
    // feature (7), every target's CPU (8), then the indices (9).
    let Some(dev) = devices.get_mut(handle as usize) else {
        return ctx.refuse(Refusal::NoDevice);
    };
    if !usable(&dev.spec, features, kind) {
        return ctx.refuse(Refusal::Unsupported { field: Field::Kind });
    }
    if features & feature::RETARGET == 0 {
        return ctx.refuse(Refusal::Unsupported {
            field: Field::Opcode,
        });
    }
    let mut dests = Vec::with_capacity(r.targets().len());
    if let Err(refusal) = destinations(config, apic_ids, features, r.targets(), &mut dests) {
        return ctx.refuse(refusal);
    }
    let named = match named_grants(dev.grants.table(kind), &r.indices) {
        Ok(named) => named,
        Err(refusal) => return ctx.refuse(refusal),
    };
    // Each index moves to the target at its position, or is parked.
    let moves: Vec<_> = match r.to {
        RetargetTo::Targets(_) => named
            .iter()
            .zip(&dests)
            .map(|((index, record), dest)| (*index, record.route, Some(*dest)))
            .collect(),
        RetargetTo::Park => named
            .iter()
            .map(|(index, record)| (*index, record.route, None))
            .collect(),
    };
    let mut batch = RouteBatch::new(routes.as_mut());
    for (_, route, dest) in &moves {
        if let Err(e) = batch.update(*route, *dest) {
            return ctx.refuse(route_failure(&e));
        }
    }
    let Ok(used) = ctx.send(Outcome::Retargeted {
        count: moves.len() as u32,
        quota_remaining: config.quota.saturating_sub(*held),
    }) else {
        return ctx.dropped();
    };
    if let Err(e) = batch.commit() {
        return ctx.refuse(route_failure(&e));
    }
    let table = dev.grants.table_mut(kind);
    for (index, _, dest) in moves {
        dev.backend.retarget(kind, index, dest);
        table.set_dest(index, dest);
    }
    ctx.handled(used, Status::Ok)
}
