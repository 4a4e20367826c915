//! The null register: an MMIO window whose accesses do nothing. One write to it is the bare
//! round trip of an exit to this VMM, the floor of any protocol that traps.

use vm_device::DeviceMmio;
use vm_device::bus::{MmioAddress, MmioAddressOffset};

/// A device that ignores writes and reads as zero.
#[derive(Debug, Default)]
pub struct NullDevice;

impl DeviceMmio for NullDevice {
    fn mmio_read(&self, _base: MmioAddress, _offset: MmioAddressOffset, data: &mut [u8]) {
        data.fill(0);
    }

    fn mmio_write(&self, _base: MmioAddress, _offset: MmioAddressOffset, _data: &[u8]) {}
}
