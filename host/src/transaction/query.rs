//! QUERY (spec §4.4): a device's limits, what an ALLOC could be granted now and, with
//! `INFO`, the extended body (identity, format, share, free runs, parked drops).

use super::available::available;
use super::reply::{Ctx, Handled};
use super::{table_size, usable};
use crate::config::VmConfig;
use crate::routes::GuestRoutes;
use crate::state::{DeviceState, VmState};
use pvirq_proto::{DeviceInfo, DeviceInfoExt, Kind, KindSet, Outcome, Refusal, Status, feature};

pub(super) fn query(ctx: &mut Ctx<'_>, config: &VmConfig, st: &VmState, handle: u32) -> Handled {
    let Some(dev) = st.devices.get(handle as usize) else {
        return ctx.refuse(Refusal::NoDevice);
    };
    let quota = config.quota.saturating_sub(st.held);
    let mut kinds = KindSet::EMPTY;
    for kind in Kind::ALL.iter().copied() {
        if usable(&dev.spec, st.features, kind) {
            kinds = kinds.with(kind);
        }
    }
    let available = available(config, st, dev);
    let size = |kind: Kind| {
        if kinds.contains(kind) {
            table_size(dev, kind)
        } else {
            0
        }
    };
    let info = DeviceInfo {
        kinds,
        msi_max: size(Kind::Msi) as u16,
        msix_table_size: size(Kind::MsiX) as u16,
        ims_slots: size(Kind::Ims),
        granted: dev.grants.granted(),
        vm_quota: config.quota,
        available,
        // Version 1's 24-byte body unless the driver negotiated the extended one.
        ext: (st.features & feature::INFO != 0)
            .then(|| extended(config, dev, st.routes.as_ref(), kinds)),
    };
    match ctx.send(Outcome::Queried {
        info,
        quota_remaining: quota,
    }) {
        Ok(len) => ctx.handled(len, Status::Ok),
        Err(_) => ctx.dropped(),
    }
}

/// The extended body (spec §4.4, offsets 24–63) of device `dev`, whose usable kinds are
/// `kinds`.
fn extended(
    config: &VmConfig,
    dev: &DeviceState,
    routes: &dyn GuestRoutes,
    kinds: KindSet,
) -> DeviceInfoExt {
    let free_run = |kind: Kind| {
        if kinds.contains(kind) {
            dev.grants.table(kind).longest_free_run()
        } else {
            0
        }
    };
    // Advisory (spec §3.5): only what the route layer sees, summed over the grants that
    // are parked now.
    let parked_drops: u64 = Kind::ALL
        .iter()
        .flat_map(|kind| dev.grants.table(*kind).records.iter())
        .filter(|(_, record)| record.dest.is_none())
        .map(|(_, record)| routes.drops(record.route))
        .fold(0, u64::saturating_add);
    DeviceInfoExt {
        identity: dev.spec.identity(),
        format: dev.backend.format(),
        can_post: dev.backend.can_post(),
        share: dev.spec.effective_share(config.quota),
        msix_free_run: u16::try_from(free_run(Kind::MsiX)).unwrap_or(u16::MAX),
        ims_free_run: free_run(Kind::Ims),
        parked_drops: u32::try_from(parked_drops).unwrap_or(u32::MAX),
    }
}
