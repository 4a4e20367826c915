//! What the VMM changes while the device runs (spec §2.4, §12): the VM's quota, a device's
//! share, assigned devices added and removed, shared resources released by other VMs.
//!
//! Each method makes the change in the VM core ([`crate::Vm`]'s methods of the same
//! names, which decide whether the driver can be told now), then does the device's part:
//! a configuration-change interrupt when `config_generation` moved while the device is
//! live, and the events written into the event queue's buffers.

use super::device::{InterruptType, PvirqDevice};
use crate::backend::InterruptBackend;
use crate::config::DeviceSpec;
use crate::error::HostError;
use std::sync::atomic::Ordering;
use vm_memory::GuestAddressSpace;

impl<M: GuestAddressSpace> PvirqDevice<M> {
    /// Sets the VM's quota ([`crate::Vm::set_quota`]). A lower quota revokes nothing.
    pub fn set_quota(&mut self, quota: u32) {
        let generation = self.config_generation();
        self.vm.set_quota(quota);
        self.after_change(generation);
    }

    /// Sets device `handle`'s share, `None` for none ([`crate::Vm::set_device_share`]).
    pub fn set_device_share(&mut self, handle: u32, share: Option<u32>) -> Result<(), HostError> {
        let generation = self.config_generation();
        let set = self.vm.set_device_share(handle, share);
        self.after_change(generation);
        set
    }

    /// Adds an assigned device with its backend; returns its handle
    /// ([`crate::Vm::add_device`]). A live driver without the event queue sees it after the
    /// next device reset.
    pub fn add_device(
        &mut self,
        spec: DeviceSpec,
        backend: Box<dyn InterruptBackend>,
    ) -> Result<u32, HostError> {
        let generation = self.config_generation();
        let added = self.vm.add_device(spec, backend);
        self.after_change(generation);
        added
    }

    /// Removes assigned device `handle`, releasing every grant it had, and returns its
    /// backend ([`crate::Vm::remove_device`]). Its handle answers NO_DEVICE from now on.
    pub fn remove_device(&mut self, handle: u32) -> Result<Box<dyn InterruptBackend>, HostError> {
        let generation = self.config_generation();
        let removed = self.vm.remove_device(handle);
        self.after_change(generation);
        removed
    }

    /// Other VMs released shared host resources: a device whose ALLOC was refused may now
    /// get an AVAILABLE event ([`crate::Vm::resources_changed`]).
    pub fn resources_changed(&mut self) {
        self.vm.resources_changed();
        self.deliver_events();
    }

    /// The device's part of a change: the configuration interrupt if the configuration
    /// moved while live, then the events.
    fn after_change(&mut self, generation: u32) {
        if self.config_generation() != generation
            && let Some(active) = &self.active
            && active.interrupt.trigger(InterruptType::Config).is_err()
        {
            self.metrics
                .interrupt_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        self.deliver_events();
    }
}
