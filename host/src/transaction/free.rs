//! FREE and RESET (spec §4.6, §4.8): stage the route removals, reply, commit, then the
//! grants are released ([`crate::state::release`]: the backend stops backing them).

use super::named::{named_grants, whole_msi_block};
use super::reply::{Ctx, Handled};
use super::{route_failure, usable};
use crate::config::VmConfig;
use crate::grants::GrantRecord;
use crate::routes::RouteBatch;
use crate::state::{DeviceState, VmState, release};
use pvirq_proto::{Field, Indices, Kind, Outcome, Refusal, Status};

/// The grants a FREE names (all of them, or the refusal), or every grant of the device for
/// RESET (`indices` = `None`).
fn select(
    dev: &DeviceState,
    indices: Option<&Indices<'_>>,
) -> Result<Vec<(Kind, u32, GrantRecord)>, Refusal> {
    let Some(indices) = indices else {
        return Ok(dev.grants.all());
    };
    let kind = indices.kind();
    let table = dev.grants.table(kind);
    if kind == Kind::Msi {
        whole_msi_block(table, indices)?;
    }
    Ok(named_grants(table, indices)?
        .into_iter()
        .map(|(i, r)| (kind, i, r))
        .collect())
}

pub(super) fn free(
    ctx: &mut Ctx<'_>,
    config: &VmConfig,
    st: &mut VmState,
    handle: u32,
    indices: Option<&Indices<'_>>,
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
    if let Some(indices) = indices
        && !usable(&dev.spec, features, indices.kind())
    {
        return ctx.refuse(Refusal::Unsupported { field: Field::Kind });
    }
    let grants = match select(dev, indices) {
        Ok(g) => g,
        Err(r) => return ctx.refuse(r),
    };
    let count = grants.len() as u32;
    let mut batch = RouteBatch::new(routes.as_mut());
    for (_, _, record) in &grants {
        if let Err(e) = batch.remove(record.route) {
            return ctx.refuse(route_failure(&e));
        }
    }
    let new_held = held.saturating_sub(count);
    let quota_remaining = config.quota.saturating_sub(new_held);
    let outcome = if indices.is_some() {
        Outcome::Freed {
            count,
            quota_remaining,
        }
    } else {
        Outcome::Reset {
            count,
            quota_remaining,
        }
    };
    let Ok(used) = ctx.send(outcome) else {
        return ctx.dropped();
    };
    if let Err(e) = batch.commit() {
        return ctx.refuse(route_failure(&e));
    }
    release(dev, &grants);
    *held = new_held;
    ctx.handled(used, Status::Ok)
}
