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
pub const PROTOCOL_VERSION: u16 = 1;

/// Index of the request virtqueue, the only virtqueue of protocol version 1.
pub const REQUEST_QUEUE: u16 = 0;

/// Number of virtqueues the device offers.
pub const NUM_QUEUES: usize = 1;

/// The largest `max_batch` a device may advertise: counts travel as 16-bit values.
pub const MAX_BATCH_LIMIT: u16 = 4096;

/// Feature bits (spec §2.2). Device-specific bits are 0–23; `VERSION_1` is virtio's bit 32.
pub mod feature {
    /// The device can grant multi-message MSI blocks.
    pub const MSI: u64 = 1 << 0;
    /// The device can grant MSI-X table entries.
    pub const MSIX: u64 = 1 << 1;
    /// The device can grant IMS (Interrupt Message Store) slots.
    pub const IMS: u64 = 1 << 2;
    /// IMS requests may carry a PASID. Offered only together with [`IMS`].
    pub const PASID: u64 = 1 << 3;
    /// The RETARGET operation is available.
    pub const RETARGET: u64 = 1 << 4;
    /// virtio 1.x device (required).
    pub const VERSION_1: u64 = 1 << 32;

    /// Every feature bit defined by protocol version 1.
    pub const ALL: u64 = MSI | MSIX | IMS | PASID | RETARGET | VERSION_1;
}

/// The device configuration space (spec §2.4), read-only for the driver. 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Config {
    /// Protocol version the device speaks; a driver refuses a version it does not know.
    pub version: Le16,
    /// Largest vector count in one request (ALLOC `max_count`, FREE/RETARGET `count`).
    pub max_batch: Le16,
    /// Number of devices behind this channel; device handles are `0..num_devices`.
    pub num_devices: Le32,
    /// Total vectors this VM may hold at once across all its devices.
    pub vm_quota: Le32,
    /// Number of vCPUs; valid destination vCPUs are `0..num_vcpus`.
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

    #[test]
    fn pasid_feature_is_distinct_from_every_other_bit() {
        let bits = [
            feature::MSI,
            feature::MSIX,
            feature::IMS,
            feature::PASID,
            feature::RETARGET,
        ];
        assert_eq!(bits.iter().fold(0, |acc, b| acc | b).count_ones(), 5);
        assert_eq!(feature::ALL & feature::VERSION_1, feature::VERSION_1);
    }
}
