//! Device identity, feature bits, virtqueues and the configuration layout (spec §2).

use crate::le::{Le16, Le32};
use bytemuck::{Pod, Zeroable};

/// Provisional virtio device type ID of pvirq (spec §2.1).
///
/// No shipping VMM uses it: virtio assigns IDs counting up (to 47 in the virtio-spec tree
/// at the time of writing, 48 pending) and crosvm gives its own nonstandard devices IDs
/// counting down from 63 (63, 62, 61 taken, 60 used out of tree), so 56 sits in the middle
/// of the gap. It is below 64, so a modern virtio-pci function can carry it (PCI device ID
/// 0x1040 + 56 = 0x1078). A VMM may override it (`PvirqDevice::set_device_type` in
/// `pvirq-host`); a driver matches on whatever ID its platform assigns.
pub const VIRTIO_ID_PVIRQ: u32 = 56;

/// The protocol version this crate speaks, as found in [`Config::version`].
///
/// It stays 1 however the protocol grows: what a driver may use beyond version 1's bytes is
/// said by the feature bits it negotiated ([`crate::feature`]), never by the version
/// (spec §2.2).
pub const PROTOCOL_VERSION: u16 = 1;

/// Index of the request virtqueue (spec §2.3).
pub const REQUEST_QUEUE: u16 = 0;

/// Index of the event virtqueue (spec §2.3, §12). It exists on every device; a driver that
/// did not negotiate [`crate::feature::EVENTS`] leaves it unused.
pub const EVENT_QUEUE: u16 = 1;

/// Number of virtqueues the device offers: the request queue and the event queue.
pub const NUM_QUEUES: usize = 2;

/// The largest `max_batch` a device may advertise: counts travel as 16-bit values.
pub const MAX_BATCH_LIMIT: u16 = 4096;

/// The device configuration space (spec §2.4), read-only for the driver. 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Config {
    /// Protocol version of the wire format, 1 ([`PROTOCOL_VERSION`]). Feature bits, not this
    /// field, say which extensions a driver may use; a device sets another value only for a
    /// protocol a version-1 driver cannot speak, and a driver refuses a version it does not
    /// know (spec §2.2, [DRV-1]).
    pub version: Le16,
    /// Largest vector count in one request (ALLOC `max_count`, FREE/RETARGET `count`).
    pub max_batch: Le16,
    /// Number of devices behind this channel; device handles are `0..num_devices`. Grows
    /// while the device is live only with [`crate::feature::EVENTS`] (spec §2.4).
    pub num_devices: Le32,
    /// Total vectors this VM may hold at once across all its devices. Changes while the
    /// device is live only with [`crate::feature::EVENTS`] (spec §2.4).
    pub vm_quota: Le32,
    /// Number of vCPUs; a version-1 target names one of `0..num_vcpus` (with
    /// [`crate::feature::APIC_ID`], targets name x2APIC IDs instead).
    pub num_vcpus: Le32,
}

impl Config {
    /// Size of the configuration space in bytes.
    pub const SIZE: usize = core::mem::size_of::<Config>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_sixteen_bytes_with_fields_at_spec_offsets() {
        let config = Config {
            version: Le16::new(1),
            max_batch: Le16::new(0x0100),
            num_devices: Le32::new(2),
            vm_quota: Le32::new(0x40),
            num_vcpus: Le32::new(4),
        };
        assert_eq!(
            bytemuck::bytes_of(&config),
            &[1, 0, 0, 1, 2, 0, 0, 0, 0x40, 0, 0, 0, 4, 0, 0, 0]
        );
    }
}
