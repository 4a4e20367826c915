//! virtio-mmio with the version 2 register layout (virtio 1.x §4.2.2).

use super::Transport;
use crate::Error;
use crate::ring::QueueAddrs;
use core::ptr::NonNull;

/// Register offsets of the version 2 layout.
mod reg {
    pub const MAGIC: usize = 0x000;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const INTERRUPT_STATUS: usize = 0x060;
    pub const INTERRUPT_ACK: usize = 0x064;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC_LOW: usize = 0x080;
    pub const QUEUE_DESC_HIGH: usize = 0x084;
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    pub const QUEUE_DRIVER_HIGH: usize = 0x094;
    pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: usize = 0x0a4;
    pub const CONFIG_GENERATION: usize = 0x0fc;
    pub const CONFIG: usize = 0x100;
}

/// "virt" in little-endian: the virtio-mmio magic value.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Size of the register window a virtio-mmio device occupies (registers and the
/// configuration space this driver reads).
pub const MMIO_WINDOW: usize = 0x200;

/// Raw access to a virtio-mmio register window, `offset` counted from its base.
///
/// Control registers are read and written 32 bits at a time, aligned; configuration fields
/// with their own width (virtio 1.x §4.2.2.2). [`VolatileMmio`] is the implementation for
/// a real guest; tests route the accesses to a device model instead.
pub trait MmioRegs {
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// Reads the 16-bit field at `offset` (configuration space only).
    fn read16(&self, offset: usize) -> u16;
}

impl<R: MmioRegs + ?Sized> MmioRegs for &R {
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
    fn read16(&self, offset: usize) -> u16 {
        (**self).read16(offset)
    }
}

/// Volatile accesses to a mapped virtio-mmio window: the [`MmioRegs`] of a real guest.
///
/// Accesses outside the window or misaligned are ignored (reads return all ones, as a
/// missing device would).
#[derive(Debug)]
pub struct VolatileMmio {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the window is device memory, reachable from any CPU.
unsafe impl Send for VolatileMmio {}

impl VolatileMmio {
    /// The window of `len` bytes at `base`.
    ///
    /// # Safety
    ///
    /// `base` maps `len` bytes of a virtio-mmio device's registers (uncached, as device
    /// memory), for as long as the value lives, and nothing else drives that device.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        VolatileMmio { base, len }
    }

    fn ptr<T>(&self, offset: usize) -> Option<*mut T> {
        let size = size_of::<T>();
        if !offset.is_multiple_of(size) || offset.checked_add(size)? > self.len {
            return None;
        }
        // SAFETY: `offset + size <= len`, so the pointer stays inside the mapped window.
        Some(unsafe { self.base.as_ptr().add(offset) }.cast())
    }
}

impl MmioRegs for VolatileMmio {
    fn read32(&self, offset: usize) -> u32 {
        match self.ptr::<u32>(offset) {
            // SAFETY: inside the window and aligned (`ptr` checks); `new`'s contract makes
            // it device registers we may access.
            Some(p) => u32::from_le(unsafe { p.read_volatile() }),
            None => u32::MAX,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        if let Some(p) = self.ptr::<u32>(offset) {
            // SAFETY: as in `read32`.
            unsafe { p.write_volatile(value.to_le()) }
        }
    }

    fn read16(&self, offset: usize) -> u16 {
        match self.ptr::<u16>(offset) {
            // SAFETY: as in `read32`.
            Some(p) => u16::from_le(unsafe { p.read_volatile() }),
            None => u16::MAX,
        }
    }
}

/// The virtio-mmio transport (register layout version 2) over any [`MmioRegs`].
#[derive(Debug)]
pub struct MmioTransport<R> {
    regs: R,
    device_id: u32,
}

impl<R: MmioRegs> MmioTransport<R> {
    /// Checks the magic value and the layout version (2) and reads the device ID.
    pub fn new(regs: R) -> Result<Self, Error> {
        let magic = regs.read32(reg::MAGIC);
        if magic != MMIO_MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let version = regs.read32(reg::VERSION);
        if version != 2 {
            return Err(Error::UnsupportedMmioVersion(version));
        }
        let device_id = regs.read32(reg::DEVICE_ID);
        if device_id == 0 {
            return Err(Error::NoDevice);
        }
        Ok(MmioTransport { regs, device_id })
    }

    /// The register access underneath.
    pub fn regs(&self) -> &R {
        &self.regs
    }

    fn write64(&self, low: usize, high: usize, value: u64) {
        self.regs.write32(low, value as u32);
        self.regs.write32(high, (value >> 32) as u32);
    }
}

impl<R: MmioRegs> Transport for MmioTransport<R> {
    fn device_id(&self) -> u32 {
        self.device_id
    }

    fn device_features(&mut self) -> u64 {
        self.regs.write32(reg::DEVICE_FEATURES_SEL, 0);
        let low = self.regs.read32(reg::DEVICE_FEATURES);
        self.regs.write32(reg::DEVICE_FEATURES_SEL, 1);
        let high = self.regs.read32(reg::DEVICE_FEATURES);
        u64::from(high) << 32 | u64::from(low)
    }

    fn set_driver_features(&mut self, features: u64) {
        self.regs.write32(reg::DRIVER_FEATURES_SEL, 0);
        self.regs.write32(reg::DRIVER_FEATURES, features as u32);
        self.regs.write32(reg::DRIVER_FEATURES_SEL, 1);
        self.regs
            .write32(reg::DRIVER_FEATURES, (features >> 32) as u32);
    }

    fn status(&self) -> u8 {
        self.regs.read32(reg::STATUS) as u8
    }

    fn set_status(&mut self, status: u8) {
        self.regs.write32(reg::STATUS, u32::from(status));
    }

    fn max_queue_size(&mut self, queue: u16) -> u16 {
        self.regs.write32(reg::QUEUE_SEL, u32::from(queue));
        let max = self.regs.read32(reg::QUEUE_NUM_MAX);
        u16::try_from(max).unwrap_or(u16::MAX)
    }

    fn queue_ready(&mut self, queue: u16) -> bool {
        self.regs.write32(reg::QUEUE_SEL, u32::from(queue));
        self.regs.read32(reg::QUEUE_READY) != 0
    }

    fn setup_queue(&mut self, queue: u16, size: u16, addrs: QueueAddrs) {
        self.regs.write32(reg::QUEUE_SEL, u32::from(queue));
        self.regs.write32(reg::QUEUE_NUM, u32::from(size));
        self.write64(reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, addrs.desc);
        self.write64(reg::QUEUE_DRIVER_LOW, reg::QUEUE_DRIVER_HIGH, addrs.driver);
        self.write64(reg::QUEUE_DEVICE_LOW, reg::QUEUE_DEVICE_HIGH, addrs.device);
        self.regs.write32(reg::QUEUE_READY, 1);
    }

    fn notify(&mut self, queue: u16) {
        self.regs.write32(reg::QUEUE_NOTIFY, u32::from(queue));
    }

    fn ack_interrupt(&mut self) -> u32 {
        let cause = self.regs.read32(reg::INTERRUPT_STATUS);
        if cause != 0 {
            self.regs.write32(reg::INTERRUPT_ACK, cause);
        }
        cause
    }

    fn config_generation(&self) -> u32 {
        self.regs.read32(reg::CONFIG_GENERATION)
    }

    fn read_config_u16(&self, offset: usize) -> u16 {
        self.regs.read16(reg::CONFIG + offset)
    }

    fn read_config_u32(&self, offset: usize) -> u32 {
        self.regs.read32(reg::CONFIG + offset)
    }
}
