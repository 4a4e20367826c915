//! What Firecracker gives a virtio device, in the shape of its interfaces as read at
//! firecracker-microvm/firecracker commit 071cc4b4 (main, 2026):
//! `src/vmm/src/devices/virtio/device.rs` (`VirtioDevice`, `VirtioDeviceType`),
//! `src/vmm/src/devices/virtio/transport/mod.rs` (`VirtioInterrupt`),
//! `src/vmm/src/snapshot/persist.rs` (`Persist`), `src/vmm/src/vstate/memory.rs`
//! (`GuestMemoryMmap`). Written from their signatures, not copied; only what a device
//! implements or is handed is here.

use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::num::Wrapping;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use vm_memory::GuestAddress;
use vm_memory::bitmap::AtomicBitmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Firecracker's guest memory: dirty pages are logged when the bitmap is there.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<Option<AtomicBitmap>>;

/// The device types Firecracker knows: a closed `u8` enum, so a maintainer adds pvirq's
/// (56, provisional: spec §2.1) next to the others (only some are repeated here).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioDeviceType {
    /// virtio-net.
    Net = 1,
    /// virtio-block.
    Block = 2,
    /// virtio-rng.
    Rng = 4,
    /// The variant the maintainer adds.
    Pvirq = 56,
}

/// Which interrupt a device raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioInterruptType {
    /// Configuration change.
    Config,
    /// Used buffers on a queue.
    Queue(u16),
}

/// The transport's interrupt (the MMIO transport's `IrqTrigger`, or MSI-X vectors on PCI).
pub trait VirtioInterrupt: Debug + Send + Sync {
    /// Raises it.
    fn trigger(&self, interrupt_type: VirtioInterruptType) -> std::io::Result<()>;
    /// The InterruptStatus bits.
    fn status(&self) -> Arc<AtomicU32>;
}

/// Firecracker's own queue (not virtio-queue's): the fields its transport writes from the
/// driver's register writes, and the ring positions it saves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue {
    /// QueueNumMax.
    pub max_size: u16,
    /// QueueNum.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// QueueDesc.
    pub desc_table_address: GuestAddress,
    /// QueueDriver.
    pub avail_ring_address: GuestAddress,
    /// QueueDevice.
    pub used_ring_address: GuestAddress,
    /// Next available entry.
    pub next_avail: Wrapping<u16>,
    /// Next used entry.
    pub next_used: Wrapping<u16>,
}

impl Queue {
    /// A queue the driver has not set up.
    pub fn new(max_size: u16) -> Self {
        Queue {
            max_size,
            size: max_size,
            ready: false,
            desc_table_address: GuestAddress(0),
            avail_ring_address: GuestAddress(0),
            used_ring_address: GuestAddress(0),
            next_avail: Wrapping(0),
            next_used: Wrapping(0),
        }
    }
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The queues, features or memory handed over cannot be used.
    #[error("bad activate")]
    BadActivate,
    /// An eventfd could not be cloned.
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The variant the maintainer adds: why pvirq refused.
    #[error("pvirq: {0}")]
    Pvirq(#[from] pvirq_host::device::ActivateError),
}

/// A virtio device driven by a transport. The device owns its queues and their eventfds
/// from construction (the VMM registers the eventfds as ioeventfds when it attaches the
/// device); the transport writes the queues through `queues_mut` and calls `activate` at
/// DRIVER_OK.
pub trait VirtioDevice: Send {
    /// Features offered.
    fn avail_features(&self) -> u64;
    /// Features acknowledged.
    fn acked_features(&self) -> u64;
    /// Sets the acknowledged features (never more than offered).
    fn set_acked_features(&mut self, acked_features: u64);
    /// The type, as a constant of the device.
    fn const_device_type() -> VirtioDeviceType
    where
        Self: Sized;
    /// The type.
    fn device_type(&self) -> VirtioDeviceType;
    /// The device's unique id.
    fn id(&self) -> &str;
    /// The queues.
    fn queues(&self) -> &[Queue];
    /// The queues, for the transport to write.
    fn queues_mut(&mut self) -> &mut [Queue];
    /// The queues' notification eventfds.
    fn queue_events(&self) -> &[EventFd];
    /// The interrupt.
    fn interrupt_trigger(&self) -> &dyn VirtioInterrupt;
    /// The driver acknowledges the 32 feature bits of `page` (what the transport calls on a
    /// DriverFeatures write): bits not offered are dropped.
    fn ack_features_by_page(&mut self, page: u32, value: u32) {
        let bits = match page {
            0 => u64::from(value),
            1 => u64::from(value) << 32,
            _ => 0,
        };
        let acked = self.acked_features() | (bits & self.avail_features());
        self.set_acked_features(acked);
    }
    /// Reads the configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// DRIVER_OK: the device goes live with the guest memory and the interrupt.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError>;
    /// Whether it is live.
    fn is_activated(&self) -> bool;
    /// Device reset: gives back the interrupt and the queue eventfds, if it was live.
    fn reset(&mut self) -> Option<(Arc<dyn VirtioInterrupt>, Vec<EventFd>)> {
        None
    }
    /// Called after a restore: handle what may have arrived before the snapshot.
    fn kick(&mut self) {}
}

/// Saving and restoring a component.
pub trait Persist<'a>
where
    Self: Sized,
{
    /// What is saved.
    type State;
    /// What the VMM gives the restored component.
    type ConstructorArgs;
    /// Why it cannot be restored.
    type Error;
    /// The state now.
    fn save(&self) -> Self::State;
    /// The component back from `state`.
    fn restore(
        constructor_args: Self::ConstructorArgs,
        state: &Self::State,
    ) -> Result<Self, Self::Error>;
}

/// The VMM's side of the MMIO interrupt: the status bits and an irqfd (the shape of
/// Firecracker's `IrqTrigger`).
#[derive(Debug)]
pub struct IrqTrigger {
    status: Arc<AtomicU32>,
    /// The eventfd KVM injects the device's line from.
    pub irq_evt: EventFd,
}

/// InterruptStatus bit of a used-buffer notification.
pub const VIRTIO_MMIO_INT_VRING: u32 = 1;
/// InterruptStatus bit of a configuration change.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 2;

impl IrqTrigger {
    /// A trigger with a fresh eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(IrqTrigger {
            status: Arc::default(),
            irq_evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }
}

impl VirtioInterrupt for IrqTrigger {
    fn trigger(&self, interrupt_type: VirtioInterruptType) -> std::io::Result<()> {
        let bit = match interrupt_type {
            VirtioInterruptType::Config => VIRTIO_MMIO_INT_CONFIG,
            VirtioInterruptType::Queue(_) => VIRTIO_MMIO_INT_VRING,
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq_evt.write(1)
    }

    fn status(&self) -> Arc<AtomicU32> {
        Arc::clone(&self.status)
    }
}
