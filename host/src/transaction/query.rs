//! QUERY (spec §4.4): a device's limits and what an ALLOC could be granted now.

use super::available::available;
use super::reply::{Ctx, Handled};
use super::{table_size, usable};
use crate::config::VmConfig;
use crate::state::VmState;
use pvirq_proto::{DeviceInfo, Kind, KindSet, Outcome, Refusal, Status};

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
        // Version 1's body: this device offers no `INFO` (spec §4.4).
        ext: None,
    };
    match ctx.send(Outcome::Queried {
        info,
        quota_remaining: quota,
    }) {
        Ok(len) => ctx.handled(len, Status::Ok),
        Err(_) => ctx.dropped(),
    }
}
