//! What an ALLOC for a device could be granted now (QUERY's `available`, spec §4.4), and
//! the AVAILABLE events that wait for it (spec §12): armed by a NO_SPACE refusal, queued
//! once the device could be granted at least the refused `min_count`.

use super::sizing::{Slots, Supply};
use super::{table_size, usable};
use crate::config::VmConfig;
use crate::state::{DeviceState, VmState};
use pvirq_proto::{EventBody, Kind, feature};

/// The largest count an ALLOC for `dev` could be granted now over the kinds the driver can
/// use, capped at `max_batch` (advisory: the host's figures may change before an ALLOC).
pub(crate) fn available(config: &VmConfig, st: &VmState, dev: &DeviceState) -> u32 {
    let quota = config.quota.saturating_sub(st.held);
    let share = dev
        .spec
        .effective_share(config.quota)
        .saturating_sub(dev.grants.granted());
    let routes = st.routes.available();
    let posted = st.features & feature::POSTED != 0 && dev.backend.can_post();
    let mut available = 0;
    for kind in Kind::ALL.iter().copied() {
        if !usable(&dev.spec, st.features, kind) {
            continue;
        }
        let table = dev.grants.table(kind);
        let slots = match kind {
            Kind::Msi if table.granted() > 0 => 0,
            Kind::Msi => table_size(dev, kind),
            _ => table.free.free_count(),
        };
        let supply = Supply {
            quota,
            share,
            slots: Slots::exactly(slots),
            host: dev.backend.supply(kind),
            posted,
            routes,
        };
        available = available.max(supply.grantable(kind, u32::from(config.max_batch)));
    }
    available
}

/// Queues an AVAILABLE for each armed device that could now be granted at least the count
/// it waits for, and disarms it. Called whenever more may be available: this VM freed
/// vectors, its limits grew, or the host says other VMs released shared resources.
pub(crate) fn recheck_available(config: &VmConfig, st: &mut VmState) {
    for (device, min) in st.events.armed() {
        let count = match st.devices.get(device as usize) {
            Some(dev) => available(config, st, dev),
            None => {
                // Removed meanwhile: nothing will become available for it.
                st.events.disarm(device);
                continue;
            }
        };
        if count >= u32::from(min) {
            st.events.disarm(device);
            st.events.push(EventBody::Available { device, count });
        }
    }
}
