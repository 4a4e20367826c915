//! The VM core's data, kept behind the lock of the [`crate::Vm`] handle: the configuration
//! the driver sees, the negotiated features, the guest routes, each assigned device (what
//! the VMM said about it, its backend, its grant tables), the count of vectors held, and
//! the pending events.
//!
//! The transactions ([`crate::transaction`]) change it; [`release`] is the one path that
//! gives grants back after their routes are gone, and [`release_all`] the one that gives
//! back everything a VM holds (virtio reset, and the VM's end).

mod devices;
mod events;
mod release;

pub(crate) use devices::Devices;
pub(crate) use events::EventLog;
pub(crate) use release::{release, release_all};

use crate::backend::InterruptBackend;
use crate::config::{ApicIdSet, DeviceSpec, VmConfig};
use crate::grants::DeviceGrants;
use crate::routes::GuestRoutes;
use pvirq_proto::{Kind, feature};
use std::sync::Arc;

/// One assigned device: what the VMM said about it, its backend, its grants.
pub(crate) struct DeviceState {
    pub(crate) spec: DeviceSpec,
    pub(crate) backend: Box<dyn InterruptBackend>,
    pub(crate) grants: DeviceGrants,
    /// The device is gone: its handle answers NO_DEVICE, and it holds nothing.
    pub(crate) removed: bool,
    /// What the device held when its share was last lowered below it: a lower limit
    /// revokes nothing, so it may hold more than its share until it frees (never by
    /// growing).
    pub(crate) granted_over_share: u32,
}

impl DeviceState {
    /// A device holding nothing yet.
    pub(crate) fn new(spec: DeviceSpec, backend: Box<dyn InterruptBackend>) -> Self {
        DeviceState {
            spec,
            backend,
            grants: DeviceGrants::new([
                spec.table_size(Kind::Msi),
                spec.table_size(Kind::MsiX),
                spec.table_size(Kind::Ims),
            ]),
            removed: false,
            granted_over_share: 0,
        }
    }
}

/// One VM's core state.
pub(crate) struct VmState {
    /// The configuration the driver sees and the transactions enforce. Replaced, never
    /// changed in place, when the VMM changes the quota or adds a device, so a request
    /// holds one consistent copy.
    pub(crate) config: Arc<VmConfig>,
    /// Moves each time `config` does (the virtio `config_generation`).
    pub(crate) config_generation: u32,
    /// A quota the VMM set while the driver could not be told (live, no
    /// `PVIRQ_F_EVENTS`): the configuration changes at the next device reset (spec §2.4).
    pub(crate) staged_quota: Option<u32>,
    /// The held count when the quota was last lowered below it: a lower limit revokes
    /// nothing, so the VM may hold more than its quota until it frees (never by growing).
    pub(crate) held_over_quota: u32,
    /// Feature bits the driver acknowledged (all defined ones until a driver negotiates).
    pub(crate) features: u64,
    /// Whether the driver set DRIVER_OK (and no reset followed).
    pub(crate) live: bool,
    pub(crate) routes: Box<dyn GuestRoutes>,
    pub(crate) devices: Devices,
    /// Vectors held over all devices.
    pub(crate) held: u32,
    /// The VM's APIC IDs, for targets named by APIC ID (from the configuration, which
    /// does not change).
    pub(crate) apic_ids: ApicIdSet,
    /// Events for the driver, when it negotiated the event queue.
    pub(crate) events: EventLog,
}

impl VmState {
    /// Whether a configuration change reaches the driver now: always before DRIVER_OK
    /// (it reads the configuration then), and while live only with `PVIRQ_F_EVENTS`.
    pub(crate) fn config_may_change(&self) -> bool {
        !self.live || self.features & feature::EVENTS != 0
    }

    /// Replaces the configuration the driver sees and moves `config_generation`.
    pub(crate) fn set_config(&mut self, config: VmConfig) {
        self.config = Arc::new(config);
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}

impl Drop for VmState {
    fn drop(&mut self) {
        // The VM is gone: its grants go by the same path as a virtio reset's.
        release_all(self);
    }
}
