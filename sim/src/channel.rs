//! One VM's pvirq channel in a single process: the host's virtio device behind its
//! virtio-mmio front, and the guest driver talking to it only through the registers and a
//! split virtqueue in shared guest memory.
//!
//! Nothing crosses between the two sides except what would cross in a real VM: register
//! accesses (routed to [`pvirq_host::MmioTransport`]) and bytes in the [`GuestMemoryMmap`]
//! both sides map. The simulator, the end-to-end tests and the benchmarks all build on it.
//!
//! A channel can be snapshotted and its guest moved to another host side ([`migrate`]):
//! the guest's register accesses then reach the restored device. The VMM's changes while
//! it runs (quota, shares, hotplug) go to its device through `changes`.

mod changes;
mod migrate;

pub use migrate::{ChannelState, DetachedGuest, HostSide};

use crate::error::SimError;
use pvirq_guest::test_utils::{ByteRegs, GuestMemoryHal};
use pvirq_guest::{Driver, Options};
use pvirq_host::model::ModelHost;
use pvirq_host::routes::GuestRoutes;
use pvirq_host::{MmioInterrupt, MmioTransport, NotifyMode, PvirqDevice, Vm, VmConfig};
use std::sync::{Arc, Mutex, PoisonError};
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

/// Guest memory of an in-process channel: the ring and request buffers live in it.
pub const GUEST_MEMORY_SIZE: usize = 4 << 20;
/// Where the guest's DMA allocator starts (everything below is left to "the guest").
const DMA_BASE: u64 = 1 << 20;

/// Register accesses from the guest, forwarded to the host's virtio-mmio front.
pub type FrontRegs = ByteRegs<Box<dyn Fn(u64, &mut [u8]) + Send>, Box<dyn Fn(u64, &[u8]) + Send>>;

/// Sees every register write the guest makes, with the guest memory, before the device
/// does: how a test plays a guest that changes the ring behind its driver's back.
pub type WriteTap = Arc<dyn Fn(&GuestMemoryMmap, u64, &[u8]) + Send + Sync>;

/// The guest driver of an in-process channel.
pub type ChannelDriver = Driver<GuestMemoryHal, pvirq_guest::MmioTransport<FrontRegs>>;

/// The register front the guest's accesses reach: none while the guest is between two
/// host sides (a migration), when reads return zeros and writes go nowhere.
type FrontSlot = Arc<Mutex<Option<MmioTransport>>>;

/// One VM's channel: host device, register front and guest driver over one guest memory.
pub struct Channel {
    vm: Vm,
    front: FrontSlot,
    interrupt: Arc<MmioInterrupt>,
    driver: ChannelDriver,
    mem: GuestMemoryMmap<()>,
    options: Options,
    tap: Option<WriteTap>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("vm", &self.vm)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// Creates the VM on `host` with `config` and `routes`, plugs its pvirq device into a
    /// virtio-mmio front, and initialises a guest driver against it (virtio reset, feature
    /// negotiation, queue setup, DRIVER_OK). QueueNotify is handled inline, so every
    /// request is answered before the notifying register write returns.
    pub fn new(
        host: &ModelHost,
        config: VmConfig,
        routes: Box<dyn GuestRoutes>,
        options: Options,
    ) -> Result<Channel, SimError> {
        Self::build(host.create_vm(config, routes)?, options, None)
    }

    /// The channel of a VM made elsewhere (over any backends and routes).
    pub fn for_vm(vm: Vm, options: Options) -> Result<Channel, SimError> {
        Self::build(vm, options, None)
    }

    /// As [`Channel::for_vm`], with `tap` called on every register write before the device
    /// sees it.
    pub fn for_vm_with_write_tap(
        vm: Vm,
        options: Options,
        tap: WriteTap,
    ) -> Result<Channel, SimError> {
        Self::build(vm, options, Some(tap))
    }

    fn build(vm: Vm, options: Options, tap: Option<WriteTap>) -> Result<Channel, SimError> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), GUEST_MEMORY_SIZE)])
            .map_err(|e| SimError::GuestMemory(e.to_string()))?;
        let interrupt = Arc::new(MmioInterrupt::new());
        let device = PvirqDevice::new(vm.clone())?;
        let front = Arc::new(Mutex::new(Some(MmioTransport::new(
            Arc::new(Mutex::new(device)),
            GuestMemoryAtomic::new(mem.clone()),
            interrupt.clone(),
            NotifyMode::Inline,
        )?)));
        let driver = attach_driver(&front, &mem, options, tap.clone())?;
        Ok(Channel {
            vm,
            front,
            interrupt,
            driver,
            mem,
            options,
            tap,
        })
    }

    /// Virtio device reset, as a guest kernel does it: the driver goes away (its teardown
    /// writes status 0, and the host frees every vector the VM holds), then a new driver
    /// initialises the device again over the same memory. The VM and its devices stay.
    pub fn reset_virtio(self) -> Result<Channel, SimError> {
        let Channel {
            vm,
            front,
            interrupt,
            driver,
            mem,
            options,
            tap,
        } = self;
        drop(driver);
        let driver = attach_driver(&front, &mem, options, tap.clone())?;
        Ok(Channel {
            vm,
            front,
            interrupt,
            driver,
            mem,
            options,
            tap,
        })
    }

    /// The guest driver: every call goes through the ring and the registers.
    pub fn driver(&mut self) -> &mut ChannelDriver {
        &mut self.driver
    }

    /// The host's view of the VM (occupancy, grants, routes).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The host device's counters.
    pub fn metrics(&self) -> pvirq_host::device::MetricsSnapshot {
        self.with_device(|device| device.metrics().snapshot())
            .unwrap_or_default()
    }

    /// Runs `f` on the host's device (none only while detached, which a `Channel` never is).
    fn with_device<R>(&self, f: impl FnOnce(&mut PvirqDevice) -> R) -> Option<R> {
        let front = lock(&self.front);
        let mut device = front
            .as_ref()?
            .device()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(f(&mut device))
    }

    /// Used-buffer and configuration interrupts the device has raised.
    pub fn interrupts_raised(&self) -> u64 {
        self.interrupt.raised()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A guest driver initialised against `front`, allocating its ring and buffers from the
/// DMA window of `mem`.
fn attach_driver(
    front: &FrontSlot,
    mem: &GuestMemoryMmap<()>,
    options: Options,
    tap: Option<WriteTap>,
) -> Result<ChannelDriver, SimError> {
    let (reader, writer, tapped) = (front.clone(), front.clone(), mem.clone());
    let regs: FrontRegs = ByteRegs::new(
        Box::new(
            move |offset, data: &mut [u8]| match lock(&reader).as_ref() {
                Some(front) => front.read(offset, data),
                None => data.fill(0),
            },
        ),
        Box::new(move |offset, data: &[u8]| {
            if let Some(tap) = &tap {
                tap(&tapped, offset, data);
            }
            if let Some(front) = lock(&writer).as_mut() {
                front.write(offset, data);
            }
        }),
    );
    let transport = pvirq_guest::MmioTransport::new(regs)?;
    let dma_len = GUEST_MEMORY_SIZE as u64 - DMA_BASE;
    let hal = GuestMemoryHal::new(mem.clone(), GuestAddress(DMA_BASE), dma_len);
    Ok(Driver::new(hal, transport, options)?)
}
