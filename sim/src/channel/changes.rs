//! What the VMM changes while the channel runs (spec §2.4, §12): the VM's quota, a device's
//! share, assigned devices plugged and unplugged, shared resources released elsewhere.
//! Each goes to the host device ([`pvirq_host::PvirqDevice`]'s methods of the same names),
//! which raises the configuration interrupt and writes the events the driver is owed.

use super::Channel;
use crate::error::SimError;
use pvirq_host::{DeviceSpec, InterruptBackend};

impl Channel {
    /// Sets the VM's quota. A lower quota revokes nothing.
    pub fn set_quota(&self, quota: u32) {
        self.with_device(|device| device.set_quota(quota));
    }

    /// Sets device `handle`'s share (`None`: the quota alone bounds it).
    pub fn set_device_share(&self, handle: u32, share: Option<u32>) -> Result<(), SimError> {
        self.with_device(|device| device.set_device_share(handle, share))
            .ok_or(SimError::Detached)?
            .map_err(SimError::from)
    }

    /// Assigns another device, with its backend; returns its handle.
    pub fn add_device(
        &self,
        spec: DeviceSpec,
        backend: Box<dyn InterruptBackend>,
    ) -> Result<u32, SimError> {
        self.with_device(|device| device.add_device(spec, backend))
            .ok_or(SimError::Detached)?
            .map_err(SimError::from)
    }

    /// Takes device `handle` away: every grant it had is released; returns its backend
    /// (dropping it gives the requester ID back to the host).
    pub fn remove_device(&self, handle: u32) -> Result<Box<dyn InterruptBackend>, SimError> {
        self.with_device(|device| device.remove_device(handle))
            .ok_or(SimError::Detached)?
            .map_err(SimError::from)
    }

    /// Other VMs released shared host resources: a device waiting may get AVAILABLE.
    pub fn resources_changed(&self) {
        self.with_device(|device| device.resources_changed());
    }
}
