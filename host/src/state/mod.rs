//! The VM core's data, kept behind the lock of the [`crate::Vm`] handle: the negotiated
//! features, the guest routes, each assigned device (what the VMM said about it, its
//! backend, its grant tables) and the count of vectors held.
//!
//! The transactions ([`crate::transaction`]) change it; [`release`] is the one path that
//! gives grants back after their routes are gone, and [`release_all`] the one that gives
//! back everything a VM holds (virtio reset, and the VM's end).

mod release;

pub(crate) use release::{release, release_all};

use crate::backend::InterruptBackend;
use crate::config::{ApicIdSet, DeviceSpec};
use crate::grants::DeviceGrants;
use crate::routes::GuestRoutes;

/// One assigned device: what the VMM said about it, its backend, its grants.
pub(crate) struct DeviceState {
    pub(crate) spec: DeviceSpec,
    pub(crate) backend: Box<dyn InterruptBackend>,
    pub(crate) grants: DeviceGrants,
}

/// One VM's core state.
pub(crate) struct VmState {
    /// Feature bits the driver acknowledged (all defined ones until a driver negotiates).
    pub(crate) features: u64,
    pub(crate) routes: Box<dyn GuestRoutes>,
    pub(crate) devices: Vec<DeviceState>,
    /// Vectors held over all devices.
    pub(crate) held: u32,
    /// The VM's APIC IDs, for targets named by APIC ID (from the configuration, which
    /// does not change).
    pub(crate) apic_ids: ApicIdSet,
}

impl Drop for VmState {
    fn drop(&mut self) {
        // The VM is gone: its grants go by the same path as a virtio reset's.
        release_all(self);
    }
}
