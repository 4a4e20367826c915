//! RETARGET (spec §4.7): stage the route updates, reply, commit, then tell the backend
//! (a posted IRTE follows its vCPU). The message and the device's table do not change.

use super::alloc::destinations;
use super::reply::{Ctx, Handled};
use super::{route_failure, usable};
use crate::config::VmConfig;
use crate::routes::RouteBatch;
use crate::state::VmState;
use pvirq_proto::{Field, IndexRange, Outcome, Refusal, Status, Target, feature};

pub(super) fn retarget(
    ctx: &mut Ctx<'_>,
    config: &VmConfig,
    st: &mut VmState,
    handle: u32,
    range: &IndexRange,
    targets: &[Target],
) -> Handled {
    let features = st.features;
    let VmState {
        routes,
        devices,
        held,
        ..
    } = st;
    // Spec §5.3: the handle (6), negotiation in its listed order, kind then the RETARGET
    // feature (7), every target's vCPU (8), then the indices (9).
    let Some(dev) = devices.get_mut(handle as usize) else {
        return ctx.refuse(Refusal::NoDevice);
    };
    if !usable(&dev.spec, features, range.kind) {
        return ctx.refuse(Refusal::Unsupported { field: Field::Kind });
    }
    if features & feature::RETARGET == 0 {
        return ctx.refuse(Refusal::Unsupported {
            field: Field::Opcode,
        });
    }
    let mut dests = Vec::with_capacity(targets.len());
    if let Err(refusal) = destinations(config, targets, &mut dests) {
        return ctx.refuse(refusal);
    }
    let table = dev.grants.table(range.kind);
    let mut moves = Vec::with_capacity(usize::from(range.count));
    for (index, dest) in range.indices().zip(&dests) {
        match table.records.get(&index) {
            Some(record) => moves.push((index, record.route, *dest)),
            None => return ctx.refuse(Refusal::NotGranted { index }),
        }
    }
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
    let table = dev.grants.table_mut(range.kind);
    for (index, _, dest) in moves {
        dev.backend.retarget(range.kind, index, dest);
        table.set_dest(index, dest);
    }
    ctx.handled(used, Status::Ok)
}
