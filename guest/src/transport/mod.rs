//! How the driver reaches the device's registers: the [`Transport`] trait and its
//! virtio-mmio implementation.

mod mmio;

pub use mmio::{MMIO_MAGIC, MMIO_WINDOW, MmioRegs, MmioTransport, VolatileMmio};

use crate::ring::QueueAddrs;

/// Device status bits (virtio 1.x §2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest knows how to drive the device.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 128;
}

/// Interrupt causes, as the interrupt status register reports them.
pub mod interrupt {
    /// The device returned buffers on a queue.
    pub const USED_BUFFER: u32 = 1;
    /// The configuration changed.
    pub const CONFIG_CHANGE: u32 = 2;
}

/// Access to a virtio device's common registers and configuration space.
///
/// Methods mirror the virtio 1.x basic facilities; a transport does no protocol logic.
pub trait Transport {
    /// The virtio device ID ([`pvirq_proto::VIRTIO_ID_PVIRQ`] unless the platform assigns another).
    fn device_id(&self) -> u32;
    /// All 64 feature bits the device offers.
    fn device_features(&mut self) -> u64;
    /// Writes the 64 feature bits the driver accepts.
    fn set_driver_features(&mut self, features: u64);
    /// The device status byte.
    fn status(&self) -> u8;
    /// Writes the device status byte (0 resets the device).
    fn set_status(&mut self, status: u8);
    /// Largest size of queue `queue`, 0 if the queue does not exist.
    fn max_queue_size(&mut self, queue: u16) -> u16;
    /// Whether queue `queue` is live.
    fn queue_ready(&mut self, queue: u16) -> bool;
    /// Gives queue `queue` its size and addresses and makes it live.
    fn setup_queue(&mut self, queue: u16, size: u16, addrs: QueueAddrs);
    /// Tells the device that queue `queue` has new available buffers.
    fn notify(&mut self, queue: u16);
    /// Reads and acknowledges the interrupt status; returns the [`interrupt`] bits.
    fn ack_interrupt(&mut self) -> u32;
    /// The configuration generation counter.
    fn config_generation(&self) -> u32;
    /// Reads a 16-bit configuration field at `offset` (2-byte aligned).
    fn read_config_u16(&self, offset: usize) -> u16;
    /// Reads a 32-bit configuration field at `offset` (4-byte aligned).
    fn read_config_u32(&self, offset: usize) -> u32;

    /// Resets the device and waits, up to `spins` reads, for the status to read back 0.
    fn reset(&mut self, spins: u32) -> Result<(), crate::Error> {
        self.set_status(0);
        for _ in 0..spins {
            if self.status() == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(crate::Error::ResetTimeout)
    }
}
