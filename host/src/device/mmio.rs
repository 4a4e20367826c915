//! A virtio-mmio (version 2) register front over the device, as a bus device with
//! `read(offset, data)` / `write(offset, data)`.
//!
//! Queue notifications are handled either inline (the notifying vCPU thread processes the
//! queue before the write returns: what an in-process driver and the simulator want) or by
//! signalling the device's eventfd for the event loop ([`NotifyMode`]).

use super::device::{InterruptType, PvirqDevice, QUEUE_SIZE, VirtioInterrupt};
use crate::sync::lock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// "virt" in little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The register layout version (2: modern, no legacy PFN registers).
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported (none in particular).
pub const MMIO_VENDOR_ID: u32 = 0;

/// The status bits a driver sets (virtio 1.2 §2.1); the rest are reserved or the device's.
const DRIVER_STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FAILED;

/// How a QueueNotify write is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyMode {
    /// Process the queue synchronously, inside the write.
    Inline,
    /// Signal the device's queue eventfd; the event loop processes it.
    EventFd,
}

/// The MMIO interrupt: the InterruptStatus bits and, optionally, a line to raise (an
/// irqfd).
#[derive(Debug, Default)]
pub struct MmioInterrupt {
    status: AtomicU32,
    raised: AtomicU64,
    line: Option<EventFd>,
}

impl MmioInterrupt {
    /// Status bits only (the driver polls, or the VMM reads [`MmioInterrupt::raised`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Status bits plus a line written on every interrupt.
    pub fn with_line(line: EventFd) -> Self {
        MmioInterrupt {
            line: Some(line),
            ..Self::default()
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Interrupts raised so far.
    pub fn raised(&self) -> u64 {
        self.raised.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: InterruptType) -> std::io::Result<()> {
        let bit = match kind {
            InterruptType::Queue => VIRTIO_MMIO_INT_VRING,
            InterruptType::Config => VIRTIO_MMIO_INT_CONFIG,
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.raised.fetch_add(1, Ordering::SeqCst);
        match &self.line {
            Some(line) => line.write(1),
            None => Ok(()),
        }
    }
}

/// The register front.
pub struct MmioTransport {
    device: Arc<Mutex<PvirqDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<MmioInterrupt>,
    mode: NotifyMode,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
}

impl MmioTransport {
    /// A front over `device` (which must raise its interrupts through `interrupt`), with
    /// the guest memory it activates the device with.
    pub fn new(
        device: Arc<Mutex<PvirqDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<MmioInterrupt>,
        mode: NotifyMode,
    ) -> Self {
        MmioTransport {
            device,
            mem,
            interrupt,
            mode,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
        }
    }

    /// The device behind the front.
    pub fn device(&self) -> &Arc<Mutex<PvirqDevice>> {
        &self.device
    }

    /// The device status, including NEEDS_RESET when the device asks for it.
    pub fn status(&self) -> u32 {
        let needs_reset = lock(&self.device).needs_reset();
        self.status
            | if needs_reset {
                VIRTIO_CONFIG_S_NEEDS_RESET
            } else {
                0
            }
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    /// Queue registers are writable between FEATURES_OK and DRIVER_OK, for queue 0 only.
    fn queue_writable(&self) -> bool {
        self.queue_sel == 0
            && self.has(VIRTIO_CONFIG_S_FEATURES_OK)
            && self.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED) == 0
    }

    /// A bus read of `data.len()` bytes at `offset` within the region. Registers are
    /// 32-bit; other widths read as zeros.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            lock(&self.device).read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        let Ok(out) = <&mut [u8; 4]>::try_from(&mut *data) else {
            data.fill(0);
            return;
        };
        let device = lock(&self.device);
        let value = match u32::try_from(offset).unwrap_or(u32::MAX) {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => device.avail_features() as u32,
                1 => (device.avail_features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX if self.queue_sel == 0 => u32::from(QUEUE_SIZE),
            VIRTIO_MMIO_QUEUE_READY => u32::from(self.queue_sel == 0 && device.queue().ready()),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => {
                self.status
                    | if device.needs_reset() {
                        VIRTIO_CONFIG_S_NEEDS_RESET
                    } else {
                        0
                    }
            }
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => 0,
        };
        *out = value.to_le_bytes();
    }

    /// A bus write of `data` at `offset` within the region. Registers are 32-bit; other
    /// widths, read-only registers and the (read-only) config space ignore writes.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let v = u32::from_le_bytes(bytes);
        let Ok(offset) = u32::try_from(offset) else {
            return;
        };
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            // Features are written after DRIVER and before FEATURES_OK.
            VIRTIO_MMIO_DRIVER_FEATURES
                if self.has(VIRTIO_CONFIG_S_DRIVER) && !self.has(VIRTIO_CONFIG_S_FEATURES_OK) =>
            {
                match self.driver_features_sel {
                    0 => self.driver_features = self.driver_features & !0xFFFF_FFFF | u64::from(v),
                    1 => {
                        self.driver_features =
                            self.driver_features & 0xFFFF_FFFF | u64::from(v) << 32
                    }
                    _ => {}
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(v),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(v),
            VIRTIO_MMIO_STATUS => self.set_status(v),
            VIRTIO_MMIO_QUEUE_READY if self.queue_sel == 0 && self.live() => {
                self.set_live_queue_ready(v)
            }
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH
                if self.queue_writable() =>
            {
                let mut device = lock(&self.device);
                if offset == VIRTIO_MMIO_QUEUE_NUM {
                    device.set_queue_size(v);
                    return;
                }
                let q = device.queue_mut();
                match offset {
                    VIRTIO_MMIO_QUEUE_READY => q.set_ready(v == 1),
                    VIRTIO_MMIO_QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
                    VIRTIO_MMIO_QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
                    VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
                    VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
                    VIRTIO_MMIO_QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
                    _ => q.set_used_ring_address(None, Some(v)),
                }
            }
            _ => {}
        }
    }

    /// DRIVER_OK set (and FAILED not): the device is live.
    fn live(&self) -> bool {
        self.has(VIRTIO_CONFIG_S_DRIVER_OK) && !self.has(VIRTIO_CONFIG_S_FAILED)
    }

    /// QueueReady written while the device is live (spec §2.3). 0 stops the queue: the
    /// device lock is taken, so any round of processing has finished (its chains returned)
    /// before the write completes, and the ring is not touched again; the driver reads 0 at
    /// once. 1 on a ready queue changes nothing. 1 on a stopped queue would need
    /// VIRTIO_F_RING_RESET, which the device does not offer: the queue stays stopped and the
    /// device asks for a reset.
    fn set_live_queue_ready(&mut self, v: u32) {
        let mut device = lock(&self.device);
        if v == 0 {
            device.stop_queue();
        } else if !device.queue().ready() {
            device.enter_needs_reset();
        }
    }

    fn notify(&mut self, queue: u32) {
        if queue != 0 || !self.has(VIRTIO_CONFIG_S_DRIVER_OK) {
            return;
        }
        let mut device = lock(&self.device);
        match self.mode {
            NotifyMode::Inline => {
                device.process_all();
            }
            NotifyMode::EventFd => {
                if device.queue_evt().write(1).is_err() {
                    device
                        .metrics()
                        .event_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            // Device reset: every grant of the VM is freed.
            lock(&self.device).reset();
            self.status = 0;
            self.device_features_sel = 0;
            self.driver_features_sel = 0;
            self.driver_features = 0;
            self.queue_sel = 0;
            self.interrupt.ack(u32::MAX);
            return;
        }
        // Only the driver's bits are kept: reserved bits and DEVICE_NEEDS_RESET (the device's
        // own, reported by `status`) read back clear.
        let mut v = v & DRIVER_STATUS_BITS;
        // The driver only adds bits (virtio 2.1.1); anything else is ignored.
        if v & self.status != self.status {
            return;
        }
        let added = v & !self.status;
        let mut device = lock(&self.device);
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = device.avail_features();
            let ok = self.has(VIRTIO_CONFIG_S_DRIVER)
                && self.driver_features & !offered == 0
                && self.driver_features & pvirq_proto::feature::VERSION_1 != 0;
            if ok {
                device.ack_features(self.driver_features);
            } else {
                // Not accepted: the driver reads FEATURES_OK back as clear.
                v &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            let activated =
                v & VIRTIO_CONFIG_S_FEATURES_OK != 0 && device.activate(self.mem.clone()).is_ok();
            if !activated {
                // The device cannot go live (no valid queue, or a size it cannot use): it
                // says so with its own error bit and a configuration-change interrupt, as
                // virtio 2.1.2 asks, and ignores notifications until reset. FAILED is the
                // driver's bit and is left to it.
                device.enter_needs_reset();
            }
        }
        self.status = v;
    }
}
