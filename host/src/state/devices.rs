//! A VM's assigned devices by handle, as the guest may address them.
//!
//! Handles are never reused (spec §2.4): a removed device keeps its slot, holding nothing,
//! and its handle answers NO_DEVICE from then on. A device the host added while the
//! driver could not be told (no `PVIRQ_F_EVENTS`) has a slot too, hidden until the next
//! device reset. [`Devices::get`] and [`Devices::get_mut`] give only the devices a request
//! may name; the slice the collection dereferences to has every slot, in handle order, for
//! code that walks them all (releasing, snapshots, invariants).

use super::DeviceState;
use std::ops::{Deref, DerefMut};

/// The devices, in handle order, and how many of them the driver can see.
#[derive(Default)]
pub(crate) struct Devices {
    slots: Vec<DeviceState>,
    /// Handles `0..visible` are in the driver's configuration (`num_devices`).
    visible: usize,
}

impl Devices {
    /// Devices the driver sees from the start.
    pub(crate) fn new(slots: Vec<DeviceState>) -> Self {
        Devices {
            visible: slots.len(),
            slots,
        }
    }

    /// The device `handle` names, if a request may name it: visible and not removed.
    pub(crate) fn get(&self, handle: usize) -> Option<&DeviceState> {
        self.slots
            .get(handle)
            .filter(|d| handle < self.visible && !d.removed)
    }

    /// As [`Devices::get`], mutable.
    pub(crate) fn get_mut(&mut self, handle: usize) -> Option<&mut DeviceState> {
        let visible = self.visible;
        self.slots
            .get_mut(handle)
            .filter(|d| handle < visible && !d.removed)
    }

    /// The device in slot `handle`, visible or not, unless removed.
    pub(crate) fn present_mut(&mut self, handle: usize) -> Option<&mut DeviceState> {
        self.slots.get_mut(handle).filter(|d| !d.removed)
    }

    /// Adds a device in the next slot; it is visible at once if `visible`, else from the
    /// next [`Devices::show_all`]. Returns its handle.
    pub(crate) fn push(&mut self, device: DeviceState, visible: bool) -> usize {
        let all_visible = self.visible == self.slots.len();
        self.slots.push(device);
        if visible && all_visible {
            self.visible = self.slots.len();
        }
        self.slots.len() - 1
    }

    /// Handles the driver sees (`num_devices`).
    pub(crate) fn visible(&self) -> usize {
        self.visible
    }

    /// Makes every slot visible (a device reset, where the configuration may change).
    /// Returns the slots that were hidden.
    pub(crate) fn show_all(&mut self) -> &[DeviceState] {
        let from = self.visible;
        self.visible = self.slots.len();
        self.slots.get(from..).unwrap_or_default()
    }
}

impl Deref for Devices {
    type Target = [DeviceState];

    fn deref(&self) -> &[DeviceState] {
        &self.slots
    }
}

impl DerefMut for Devices {
    fn deref_mut(&mut self) -> &mut [DeviceState] {
        &mut self.slots
    }
}
