//! What the VMM changes while a VM runs (spec §2.4, §12): the VM's quota, a device's
//! share, assigned devices added and removed, and shared resources other VMs released.
//!
//! A change the driver can be told about takes effect at once and queues its event; one
//! it cannot (a live driver without `PVIRQ_F_EVENTS`) waits for the next device reset,
//! except a removal, which the device cannot wait for: the driver sees it as a surprise
//! removal (NO_DEVICE). The device ([`crate::device::PvirqDevice`]'s methods of the same
//! names) raises the configuration interrupt when `config_generation` moved and writes the
//! events.

use super::Vm;
use crate::backend::{InterruptBackend, Unplugged};
use crate::config::DeviceSpec;
use crate::error::{ConfigError, HostError};
use crate::routes::RouteBatch;
use crate::state::{DeviceState, VmState, release};
use crate::transaction::recheck_available;
use pvirq_proto::{EventBody, wire::EVENT_DEVICE_VM};
use std::sync::Arc;

/// More may be available to the devices waiting for it.
fn recheck(st: &mut VmState) {
    let config = Arc::clone(&st.config);
    recheck_available(&config, st);
}

impl Vm {
    /// Sets the VM's quota. A lower quota revokes nothing: the VM keeps what it holds and
    /// new ALLOCs are refused until it is under the quota ([DEV-16]). With the event queue
    /// the driver is told (`vm_quota`, `config_generation`, LIMITS); a live driver without
    /// it sees the new quota after the next device reset.
    pub fn set_quota(&self, quota: u32) {
        let mut st = self.state();
        if !st.config_may_change() {
            st.staged_quota = Some(quota);
            return;
        }
        st.staged_quota = None;
        if st.config.quota == quota {
            return;
        }
        st.held_over_quota = if st.held > quota { st.held } else { 0 };
        let mut config = (*st.config).clone();
        config.quota = quota;
        st.set_config(config);
        st.events.push(EventBody::Limits {
            device: None,
            limit: quota,
        });
        recheck(&mut st);
    }

    /// Sets device `handle`'s share (spec §3.7), `None` for none (the quota bounds it).
    /// Shares are not in the configuration space: the change applies at once; with the
    /// event queue the driver is told (LIMITS for the device).
    pub fn set_device_share(&self, handle: u32, share: Option<u32>) -> Result<(), HostError> {
        let mut st = self.state();
        let quota = st.config.quota;
        let dev = st
            .devices
            .get_mut(handle as usize)
            .ok_or(HostError::NoSuchDevice(handle))?;
        // The device's own copy of its spec is what sizing, QUERY and the invariants read.
        if dev.spec.share == share {
            return Ok(());
        }
        dev.spec.share = share;
        let granted = dev.grants.granted();
        dev.granted_over_share = if granted > dev.spec.effective_share(quota) {
            granted
        } else {
            0
        };
        st.events.push(EventBody::Limits {
            device: Some(handle),
            limit: share.unwrap_or(quota),
        });
        recheck(&mut st);
        Ok(())
    }

    /// Adds an assigned device with its backend; returns its handle (the next one: handles
    /// are never reused). With the event queue, or before the driver is live, the device
    /// is in the configuration at once (`num_devices`, `config_generation`, DEVICE_ADDED);
    /// a live driver without the event queue sees it after the next device reset.
    pub fn add_device(
        &self,
        spec: DeviceSpec,
        backend: Box<dyn InterruptBackend>,
    ) -> Result<u32, HostError> {
        spec.validate()?;
        let mut st = self.state();
        if st
            .devices
            .iter()
            .any(|d| !d.removed && d.spec.requester_id == spec.requester_id)
        {
            return Err(HostError::SourceIdInUse(spec.requester_id));
        }
        // Handle 0xFFFF_FFFF is never assigned: LIMITS uses it for the VM (spec §2.4).
        let handle = u32::try_from(st.devices.len())
            .ok()
            .filter(|h| *h != EVENT_DEVICE_VM)
            .ok_or(ConfigError::DeviceHandles)?;
        let visible = st.config_may_change();
        st.devices.push(DeviceState::new(spec, backend), visible);
        if visible {
            let mut config = (*st.config).clone();
            config.devices.push(spec);
            st.set_config(config);
            st.events.push(EventBody::DeviceAdded { device: handle });
        }
        Ok(handle)
    }

    /// Removes assigned device `handle`: every grant it had is released (routes removed in
    /// one commit, then its backend stops backing them), its handle answers NO_DEVICE from
    /// now on, and the driver is told (DEVICE_REMOVED) if it negotiated the event queue.
    /// Returns the device's backend, holding nothing. If the route layer refuses the
    /// commit nothing changes ([`HostError::RouteCommit`]); the VMM may try again.
    pub fn remove_device(&self, handle: u32) -> Result<Box<dyn InterruptBackend>, HostError> {
        let mut st = self.state();
        let visible = (handle as usize) < st.devices.visible();
        let VmState {
            routes,
            devices,
            held,
            ..
        } = &mut *st;
        let dev = devices
            .present_mut(handle as usize)
            .ok_or(HostError::NoSuchDevice(handle))?;
        let grants = dev.grants.all();
        let mut batch = RouteBatch::new(routes.as_mut());
        grants
            .iter()
            .try_for_each(|(_, _, record)| batch.remove(record.route))
            .and_then(|()| batch.commit())
            .map_err(|_| HostError::RouteCommit)?;
        release(dev, &grants);
        *held = held.saturating_sub(grants.len() as u32);
        dev.removed = true;
        let backend = std::mem::replace(&mut dev.backend, Box::new(Unplugged));
        st.events.disarm(handle);
        if visible {
            st.events.push(EventBody::DeviceRemoved { device: handle });
        }
        recheck(&mut st);
        Ok(backend)
    }

    /// The host released shared resources (IRTEs, host vectors) another VM held: a device
    /// waiting for them may get an AVAILABLE event.
    pub fn resources_changed(&self) {
        recheck(&mut self.state());
    }
}
