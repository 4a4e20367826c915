//! FREE and RESET (spec §4.6, §4.8): stage the route removals, reply, commit, then the
//! grants are released ([`crate::state::release`]: the backend stops backing them).

use super::reply::{Ctx, Handled};
use super::{route_failure, usable};
use crate::config::VmConfig;
use crate::grants::GrantRecord;
use crate::routes::RouteBatch;
use crate::state::{DeviceState, VmState, release};
use pvirq_proto::{Field, IndexRange, Kind, Outcome, Refusal, Status};

/// The grants a FREE names (all of them, or the refusal), or every grant of the device for
/// RESET (`range` = `None`).
fn select(
    dev: &DeviceState,
    range: Option<&IndexRange>,
) -> Result<Vec<(Kind, u32, GrantRecord)>, Refusal> {
    let Some(range) = range else {
        return Ok(dev.grants.all());
    };
    let table = dev.grants.table(range.kind);
    if range.kind == Kind::Msi {
        // The block is freed whole or not at all.
        let size = table.granted();
        let count = u32::from(range.count);
        if size == 0 || range.first != 0 || count < size {
            return Err(Refusal::NotGranted { index: range.first });
        }
        if count > size {
            return Err(Refusal::NotGranted { index: size });
        }
    }
    range
        .indices()
        .map(|i| {
            table
                .records
                .get(&i)
                .map(|r| (range.kind, i, *r))
                .ok_or(Refusal::NotGranted { index: i })
        })
        .collect()
}

pub(super) fn free(
    ctx: &mut Ctx<'_>,
    config: &VmConfig,
    st: &mut VmState,
    handle: u32,
    range: Option<&IndexRange>,
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
    if let Some(range) = range
        && !usable(&dev.spec, features, range.kind)
    {
        return ctx.refuse(Refusal::Unsupported { field: Field::Kind });
    }
    let grants = match select(dev, range) {
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
    let outcome = if range.is_some() {
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
