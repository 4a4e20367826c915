//! A virtio-mmio (version 2) transport over the device: the register front, and the
//! transport's side of the device lifecycle. It keeps the queues' configuration and their
//! notification eventfds until DRIVER_OK, hands them to [`PvirqDevice::activate`] with the
//! guest memory and its interrupt, and takes them back at reset. It is a rust-vmm
//! `vm-device` bus device (`MutDeviceMmio`), so a VMM built on `vm-device` puts
//! `Arc<Mutex<MmioTransport>>` on its MMIO bus as it is.
//!
//! Queue notifications are handled either inline (the notifying vCPU thread processes the
//! queue before the write returns: what an in-process driver and the simulator want) or by
//! signalling the queue's eventfd for the event loop ([`NotifyMode`]).

use super::device::{InterruptType, PvirqDevice, VirtioInterrupt};
use crate::error::HostError;
use crate::sync::lock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_device::MutDeviceMmio;
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

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
            InterruptType::Queue(_) => VIRTIO_MMIO_INT_VRING,
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

/// The transport's registers, as a snapshot holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MmioRegisters {
    /// The status register (driver bits).
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
}

/// The transport.
pub struct MmioTransport<M: GuestAddressSpace = GuestMemoryAtomic<GuestMemoryMmap>> {
    device: Arc<Mutex<PvirqDevice<M>>>,
    mem: M,
    interrupt: Arc<MmioInterrupt>,
    mode: NotifyMode,
    regs: MmioRegisters,
    /// The queues as the driver configures them, while the device is not live.
    queues: Vec<Queue>,
    /// Whether the size last written to each queue is one the device can use. QueueNum is
    /// write-only, so a size the device cannot use is remembered and refused at DRIVER_OK.
    size_ok: Vec<bool>,
    /// The queues' notification eventfds, while the device is not live.
    queue_evts: Vec<EventFd>,
    /// The same eventfds, kept for [`NotifyMode::EventFd`].
    notify_evts: Vec<EventFd>,
}

fn fresh_queues(max_sizes: &[u16]) -> Vec<Queue> {
    max_sizes
        .iter()
        .filter_map(|m| Queue::new(*m).ok())
        .collect()
}

impl<M: GuestAddressSpace> MmioTransport<M> {
    /// A transport for `device` over the guest memory `mem`, raising `interrupt`, with one
    /// notification eventfd per queue made now.
    pub fn new(
        device: Arc<Mutex<PvirqDevice<M>>>,
        mem: M,
        interrupt: Arc<MmioInterrupt>,
        mode: NotifyMode,
    ) -> Result<Self, HostError> {
        let max = lock(&device).queue_max_sizes();
        let mut queue_evts = Vec::with_capacity(max.len());
        let mut notify_evts = Vec::with_capacity(max.len());
        for _ in max {
            let evt = EventFd::new(EFD_NONBLOCK).map_err(|e| HostError::eventfd(&e))?;
            notify_evts.push(evt.try_clone().map_err(|e| HostError::eventfd(&e))?);
            queue_evts.push(evt);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            mode,
            regs: MmioRegisters::default(),
            queues: fresh_queues(max),
            size_ok: vec![true; max.len()],
            queue_evts,
            notify_evts,
        })
    }

    /// The device behind the transport.
    pub fn device(&self) -> &Arc<Mutex<PvirqDevice<M>>> {
        &self.device
    }

    /// The registers, for a snapshot.
    pub fn registers(&self) -> MmioRegisters {
        self.regs
    }

    /// Puts back registers saved with [`MmioTransport::registers`] when restoring a device
    /// that [`PvirqDevice::restore`] made live again. Only the driver's status bits are
    /// kept.
    pub fn restore_registers(&mut self, regs: MmioRegisters) {
        self.regs = MmioRegisters {
            status: regs.status & DRIVER_STATUS_BITS,
            ..regs
        };
    }

    /// The notification eventfds the device is given at DRIVER_OK (an ioeventfd can be
    /// registered on them), while it is not live.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Takes the transport's queue eventfds and interrupt to hand to
    /// [`PvirqDevice::restore`]; a reset gives them back as usual.
    pub fn take_for_restore(&mut self) -> (M, Arc<MmioInterrupt>, Vec<EventFd>) {
        (
            self.mem.clone(),
            Arc::clone(&self.interrupt),
            std::mem::take(&mut self.queue_evts),
        )
    }

    /// The device status, including NEEDS_RESET when the device asks for it.
    pub fn status(&self) -> u32 {
        let needs_reset = lock(&self.device).needs_reset();
        self.regs.status
            | if needs_reset {
                VIRTIO_CONFIG_S_NEEDS_RESET
            } else {
                0
            }
    }

    fn has(&self, bits: u32) -> bool {
        self.regs.status & bits == bits
    }

    /// Queue registers are writable between FEATURES_OK and DRIVER_OK.
    fn queue_writable(&self) -> bool {
        self.has(VIRTIO_CONFIG_S_FEATURES_OK)
            && self.regs.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED) == 0
    }

    fn selected(&self) -> usize {
        self.regs.queue_sel as usize
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
        let sel = self.selected();
        let value = match u32::try_from(offset).unwrap_or(u32::MAX) {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.regs.device_features_sel {
                0 => device.avail_features() as u32,
                1 => (device.avail_features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => device
                .queue_max_sizes()
                .get(sel)
                .map_or(0, |m| u32::from(*m)),
            VIRTIO_MMIO_QUEUE_READY => u32::from(if device.is_activated() {
                device.queue_running(sel)
            } else {
                self.queues.get(sel).is_some_and(Queue::ready)
            }),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => {
                self.regs.status
                    | if device.needs_reset() {
                        VIRTIO_CONFIG_S_NEEDS_RESET
                    } else {
                        0
                    }
            }
            VIRTIO_MMIO_CONFIG_GENERATION => device.config_generation(),
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
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.regs.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.regs.driver_features_sel = v,
            // Features are written after DRIVER and before FEATURES_OK.
            VIRTIO_MMIO_DRIVER_FEATURES
                if self.has(VIRTIO_CONFIG_S_DRIVER) && !self.has(VIRTIO_CONFIG_S_FEATURES_OK) =>
            {
                let f = self.regs.driver_features;
                match self.regs.driver_features_sel {
                    0 => self.regs.driver_features = f & !0xFFFF_FFFF | u64::from(v),
                    1 => self.regs.driver_features = f & 0xFFFF_FFFF | u64::from(v) << 32,
                    _ => {}
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.regs.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(v),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(v),
            VIRTIO_MMIO_STATUS => self.set_status(v),
            VIRTIO_MMIO_QUEUE_READY if self.live() => self.set_live_queue_ready(v),
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
                self.write_queue(offset, v)
            }
            _ => {}
        }
    }

    fn write_queue(&mut self, offset: u32, v: u32) {
        let sel = self.selected();
        let max = lock(&self.device).queue_max_sizes().get(sel).copied();
        let (Some(q), Some(max)) = (self.queues.get_mut(sel), max) else {
            return;
        };
        match offset {
            VIRTIO_MMIO_QUEUE_NUM => {
                // A power of two up to the maximum is used as written; anything else is
                // remembered and refused at DRIVER_OK (spec §2.3).
                let usable = u16::try_from(v)
                    .ok()
                    .filter(|s| s.is_power_of_two() && *s <= max);
                if let Some(size) = usable {
                    q.set_size(size);
                }
                if let Some(ok) = self.size_ok.get_mut(sel) {
                    *ok = usable.is_some();
                }
            }
            VIRTIO_MMIO_QUEUE_READY => q.set_ready(v == 1),
            VIRTIO_MMIO_QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
            VIRTIO_MMIO_QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
            _ => q.set_used_ring_address(None, Some(v)),
        }
    }

    /// DRIVER_OK set (and FAILED not): the device is live.
    fn live(&self) -> bool {
        self.has(VIRTIO_CONFIG_S_DRIVER_OK) && !self.has(VIRTIO_CONFIG_S_FAILED)
    }

    /// QueueReady written while the device is live (spec §2.3). 0 stops the queue: the
    /// device lock is taken, so any round of processing has finished (its chains returned)
    /// before the write completes, and the ring is not touched again; the driver reads 0 at
    /// once. 1 on a running queue changes nothing. 1 on a stopped queue would need
    /// VIRTIO_F_RING_RESET, which the device does not offer: the queue stays stopped and the
    /// device asks for a reset.
    fn set_live_queue_ready(&mut self, v: u32) {
        let sel = self.selected();
        let mut device = lock(&self.device);
        if v == 0 {
            device.stop_queue(sel);
        } else if !device.queue_running(sel) {
            device.enter_needs_reset(None);
        }
    }

    fn notify(&mut self, queue: u32) {
        if !self.has(VIRTIO_CONFIG_S_DRIVER_OK) {
            return;
        }
        let index = queue as usize;
        match self.mode {
            NotifyMode::Inline => {
                let mut device = lock(&self.device);
                let budget = device.queue(index).map_or(0, |q| usize::from(q.size()));
                device.process_queue(index, budget);
            }
            NotifyMode::EventFd => {
                if let Some(evt) = self.notify_evts.get(index)
                    && evt.write(1).is_err()
                {
                    lock(&self.device)
                        .metrics()
                        .event_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Device reset: the device frees every grant and gives back the queues' eventfds.
    fn reset(&mut self) {
        let max = {
            let mut device = lock(&self.device);
            if let Some(parts) = device.reset() {
                self.queue_evts = parts.queue_evts;
            }
            if self.queue_evts.is_empty() {
                // Lost to a failed activation: make new ones (the driver sets everything up
                // again after a reset anyway).
                self.queue_evts = self
                    .notify_evts
                    .iter()
                    .filter_map(|e| e.try_clone().ok())
                    .collect();
            }
            device.queue_max_sizes()
        };
        self.queues = fresh_queues(max);
        self.size_ok = vec![true; max.len()];
        self.regs = MmioRegisters::default();
        self.interrupt.ack(u32::MAX);
    }

    /// DRIVER_OK: hands the device its memory, interrupt and queues. If it cannot go live
    /// (no valid queue, or a size it cannot use), it says so with its own error bit and a
    /// configuration-change interrupt, as virtio 2.1.2 asks, and ignores notifications until
    /// reset. FAILED is the driver's bit and is left to it.
    fn go_live(&mut self) -> bool {
        let mut device = lock(&self.device);
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        // Only the sizes of the queues the driver uses count: the event queue's only with
        // PVIRQ_F_EVENTS (a version-1 driver never touches it, [DEV-24]).
        let used = if device.acked_features() & pvirq_proto::feature::EVENTS != 0 {
            self.size_ok.len()
        } else {
            1
        };
        let sizes_ok = self.size_ok.iter().take(used).all(|ok| *ok);
        let checked = sizes_ok && device.check_activation(&self.mem, &self.queues).is_ok();
        if !checked || self.queue_evts.len() != self.queues.len() {
            device.enter_needs_reset(Some(interrupt.as_ref()));
            return false;
        }
        // The queues and their eventfds are the device's while it is live; a reset gives
        // them back. Checked just above, so activation does not refuse them.
        let evts = std::mem::take(&mut self.queue_evts);
        let queues = std::mem::take(&mut self.queues);
        match device.activate(self.mem.clone(), interrupt.clone(), queues, evts) {
            Ok(()) => true,
            Err(_) => {
                device.enter_needs_reset(Some(interrupt.as_ref()));
                false
            }
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // Only the driver's bits are kept: reserved bits and DEVICE_NEEDS_RESET (the device's
        // own, reported by `status`) read back clear.
        let mut v = v & DRIVER_STATUS_BITS;
        // The driver only adds bits (virtio 2.1.1); anything else is ignored.
        if v & self.regs.status != self.regs.status {
            return;
        }
        let added = v & !self.regs.status;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let mut device = lock(&self.device);
            let wanted = self.regs.driver_features;
            // Offered bits only, VERSION_1, and every bit with the bit it needs ([DEV-23]).
            let ok = self.has(VIRTIO_CONFIG_S_DRIVER) && device.check_features(wanted).is_ok();
            if ok {
                device.ack_features(wanted);
            } else {
                // Not accepted: the driver reads FEATURES_OK back as clear.
                v &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 && v & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            self.go_live();
        }
        self.regs.status = v;
    }
}

impl<M: GuestAddressSpace> MutDeviceMmio for MmioTransport<M> {
    fn mmio_read(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.read(offset, data);
    }

    fn mmio_write(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.write(offset, data);
    }
}
