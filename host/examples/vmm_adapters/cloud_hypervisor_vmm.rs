//! What cloud-hypervisor gives a virtio device, in the shape of its interfaces as read at
//! cloud-hypervisor/cloud-hypervisor commit 0242131e (main, 2026):
//! `virtio-devices/src/device.rs` (`VirtioDevice`, `VirtioInterrupt`, `ActivationContext`),
//! `vm-migration/src/lib.rs` (`Pausable`, `Snapshottable`, `Transportable`, `Migratable`),
//! `vmm/src/interrupt.rs` (the shared `gsi_msi_routes`). Written from their signatures, not
//! copied; only what a device implements or is handed is here. cloud-hypervisor restores
//! a device by constructing it from its state (`Rng::new(.., state: Option<RngState>)`).

use kvm_bindings::kvm_irq_routing_entry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};
use virtio_queue::Queue;
use vm_memory::GuestMemoryAtomic;
use vm_memory::bitmap::AtomicBitmap;
use vmm_sys_util::eventfd::EventFd;

/// cloud-hypervisor's guest memory: every page a device writes is logged.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// Which interrupt a device raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioInterruptType {
    /// Configuration change.
    Config,
    /// Used buffers on a queue.
    Queue(u16),
}

/// The transport's interrupt (an MSI-X vector per queue on virtio-pci).
pub trait VirtioInterrupt: Send + Sync {
    /// Raises it.
    fn trigger(&self, int_type: VirtioInterruptType) -> std::io::Result<()>;
}

/// What the transport hands over at DRIVER_OK.
pub struct ActivationContext {
    /// The guest memory.
    pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// The interrupt.
    pub interrupt_cb: Arc<dyn VirtioInterrupt>,
    /// The queues the driver enabled: index, queue, notification eventfd.
    pub queues: Vec<(usize, Queue, EventFd)>,
    /// The device status register, where the device sets DEVICE_NEEDS_RESET.
    pub device_status: Arc<AtomicU8>,
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The queues, features or memory handed over cannot be used.
    #[error("bad activate")]
    BadActivate,
    /// The variant the maintainer adds: why pvirq refused.
    #[error("pvirq: {0}")]
    Pvirq(#[from] pvirq_host::device::ActivateError),
    /// An eventfd could not be cloned.
    #[error("eventfd: {0}")]
    CloneEventFd(#[source] std::io::Error),
    /// A worker thread could not be started.
    #[error("worker thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The result of `activate`.
pub type ActivateResult = Result<(), ActivateError>;

/// A virtio device driven by a transport: the transport keeps the queues' setup and hands
/// queues and eventfds over at DRIVER_OK.
pub trait VirtioDevice: Send {
    /// The virtio device type.
    fn device_type(&self) -> u32;
    /// The largest size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered.
    fn features(&self) -> u64 {
        0
    }
    /// The driver acknowledges `value`.
    fn ack_features(&mut self, value: u64) {
        let _ = value;
    }
    /// Reads the configuration space.
    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
    /// Writes the configuration space.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// DRIVER_OK.
    fn activate(&mut self, context: ActivationContext) -> ActivateResult;
    /// Device reset.
    fn reset(&mut self) {}
    /// The VM is shutting down.
    fn shutdown(&mut self) {}
}

/// Why a migration step failed.
#[derive(Debug, thiserror::Error)]
pub enum MigratableError {
    /// Taking a snapshot.
    #[error("snapshot: {0}")]
    Snapshot(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Restoring one.
    #[error("restore: {0}")]
    Restore(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A component that can stop and go on.
pub trait Pausable {
    /// Stops it.
    fn pause(&mut self) -> Result<(), MigratableError> {
        Ok(())
    }
    /// Lets it go on.
    fn resume(&mut self) -> Result<(), MigratableError> {
        Ok(())
    }
}

/// One component's snapshot: its state, serialised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The serialised state.
    pub data: Vec<u8>,
}

impl Snapshot {
    /// The snapshot of `state`.
    pub fn new_from_state<T: Serialize>(state: &T) -> Result<Self, MigratableError> {
        serde_json::to_vec(state)
            .map(|data| Snapshot { data })
            .map_err(|e| MigratableError::Snapshot(Box::new(e)))
    }

    /// The state back.
    pub fn to_state<T: DeserializeOwned>(&self) -> Result<T, MigratableError> {
        serde_json::from_slice(&self.data).map_err(|e| MigratableError::Restore(Box::new(e)))
    }
}

/// A component that can be snapshotted.
pub trait Snapshottable: Pausable {
    /// Its id in the VM's snapshot tree.
    fn id(&self) -> String;
    /// Its snapshot (taken paused).
    fn snapshot(&mut self) -> Result<Snapshot, MigratableError>;
}

/// A component that can be sent elsewhere.
pub trait Transportable: Pausable + Snapshottable {}

/// A component that can be migrated.
pub trait Migratable: Send + Pausable + Snapshottable + Transportable {}

/// One MSI route of the VM, as `vmm/src/interrupt.rs` keeps it.
#[derive(Clone, Copy)]
pub struct RoutingEntry {
    /// The KVM entry.
    pub route: kvm_irq_routing_entry,
    /// A masked entry is not sent to KVM.
    pub masked: bool,
}

/// Every device's MSI routes, shared: KVM_SET_GSI_ROUTING replaces the whole table, so each
/// change sends all of them.
pub type GsiMsiRoutes = Arc<Mutex<HashMap<u32, RoutingEntry>>>;

/// The hypervisor's VM (cloud-hypervisor's `hypervisor::Vm`), for the one call routes need.
pub trait HypervisorVm: Send + Sync {
    /// Replaces the VM's routing table.
    fn set_gsi_routing(&self, entries: &[kvm_irq_routing_entry]) -> std::io::Result<()>;
}

/// The VM's GSI allocator (cloud-hypervisor's `SystemAllocator`, for GSIs). It hands GSIs
/// out and never takes one back.
pub trait GsiAllocator: Send {
    /// A free GSI.
    fn allocate_gsi(&mut self) -> Option<u32>;
}
