//! The pvirq virtio device, in the lifecycle VMMs give their virtio devices
//! (Firecracker's and cloud-hypervisor's `VirtioDevice`): the transport negotiates features
//! and sets the queues up, then hands the device its guest memory, its interrupt and its
//! queues with their eventfds at `activate`, and takes them back at `reset`.
//!
//! The device is generic over vm-memory's address space: a VMM that logs dirty pages for
//! live migration gives it a `GuestMemoryAtomic<GuestMemoryMmap<AtomicBitmap>>`, and every
//! byte the device writes (replies, the used ring) is marked dirty.

use super::error::ActivateError;
use super::metrics::PvirqMetrics;
use super::request::ChainBuffers;
use crate::error::{ConfigError, HostError};
use crate::vm::{Vm, VmOccupancy};
use pvirq_proto::{Config, EVENT_QUEUE, Kind, REQUEST_QUEUE, VIRTIO_ID_PVIRQ, feature};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Size of the request queue (its `QueueNumMax`).
pub const QUEUE_SIZE: u16 = 256;
/// Size of the event queue (its `QueueNumMax`, spec §2.3).
pub const EVENT_QUEUE_SIZE: u16 = 64;
/// The largest size of each queue, in index order: the request queue, the event queue.
const QUEUE_MAX_SIZES: [u16; 2] = [QUEUE_SIZE, EVENT_QUEUE_SIZE];
/// Chains handled per queue notification before yielding to other event sources.
pub const DEFAULT_BUDGET: usize = 64;

/// Which interrupt the device raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptType {
    /// Used-buffer notification of a queue.
    Queue(u16),
    /// Configuration change (the device entered NEEDS_RESET, or its configuration moved).
    Config,
}

/// How the device interrupts the driver: the transport sets its status bits and raises
/// the line (an irqfd, an MSI-X vector, a callback).
pub trait VirtioInterrupt: Send + Sync {
    /// Raises the interrupt.
    fn trigger(&self, kind: InterruptType) -> std::io::Result<()>;
}

/// What one round of queue processing did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Processed {
    /// Chains returned to the driver.
    pub chains: usize,
    /// Whether chains were left for a later round (the budget ran out).
    pub more: bool,
}

/// What a live device holds of its transport's, given back by [`PvirqDevice::reset`].
pub struct ActiveParts<M: GuestAddressSpace> {
    /// The guest memory.
    pub mem: M,
    /// The interrupt.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The queues, in index order.
    pub queues: Vec<Queue>,
    /// Their notification eventfds.
    pub queue_evts: Vec<EventFd>,
}

/// The device. `M` is the guest's address space (default: a `GuestMemoryAtomic` over
/// `GuestMemoryMmap`, as cloud-hypervisor and Firecracker use).
pub struct PvirqDevice<M: GuestAddressSpace = GuestMemoryAtomic<GuestMemoryMmap>> {
    pub(super) vm: Vm,
    device_type: u32,
    /// Whether the VMM offers `VIRTIO_F_ACCESS_PLATFORM` (a confidential VM, a vIOMMU).
    access_platform: bool,
    avail_features: u64,
    acked_features: u64,
    pub(super) active: Option<ActiveParts<M>>,
    /// Queues stopped by the driver (QueueReady ← 0 while live), by index.
    pub(super) stopped: Vec<bool>,
    pub(super) needs_reset: bool,
    pub(super) paused: bool,
    /// A notification arrived while paused: process on resume.
    pub(super) deferred: bool,
    /// Written when the device goes live, so an event loop can start watching its queues.
    activate_evt: EventFd,
    pub(super) budget: usize,
    pub(super) metrics: Arc<PvirqMetrics>,
    /// Request and buffer lists of the chain being handled, reused for every chain.
    pub(super) chain: ChainBuffers,
}

impl<M: GuestAddressSpace> PvirqDevice<M> {
    /// A device serving `vm`. It offers what [`PvirqDevice::offered_features`] lists.
    pub fn new(vm: Vm) -> Result<Self, HostError> {
        let activate_evt = EventFd::new(EFD_NONBLOCK).map_err(|e| HostError::eventfd(&e))?;
        let avail_features = Self::offered(&vm, false);
        Ok(PvirqDevice {
            device_type: VIRTIO_ID_PVIRQ,
            vm,
            access_platform: false,
            avail_features,
            acked_features: 0,
            active: None,
            stopped: Vec::new(),
            needs_reset: false,
            paused: false,
            deferred: false,
            activate_evt,
            budget: DEFAULT_BUDGET,
            metrics: Arc::new(PvirqMetrics::default()),
            chain: ChainBuffers::default(),
        })
    }

    /// What the device offers (spec §2.2): VERSION_1, RETARGET, the kinds (PASID with IMS)
    /// some assigned device of the VM has, the extensions (bits 5–12, POSTED only where some
    /// device's backend can post), and ACCESS_PLATFORM when the VMM says the VM needs it.
    fn offered(vm: &Vm, access_platform: bool) -> u64 {
        let config = vm.config();
        let has = |k: Kind| config.devices.iter().any(|d| d.supports(k));
        let mut avail = feature::VERSION_1
            | feature::RETARGET
            | (feature::EXTENSIONS & !feature::POSTED & !feature::ACCESS_PLATFORM);
        if has(Kind::Msi) {
            avail |= feature::MSI;
        }
        if has(Kind::MsiX) {
            avail |= feature::MSIX;
        }
        if has(Kind::Ims) {
            avail |= feature::IMS | feature::PASID;
        }
        if vm.can_post() {
            avail |= feature::POSTED;
        }
        if access_platform {
            avail |= feature::ACCESS_PLATFORM;
        }
        avail
    }

    /// Offers `VIRTIO_F_ACCESS_PLATFORM` (or stops offering it): the VMM says so for a
    /// confidential VM or one behind a vIOMMU, where the driver treats the device as
    /// untrusted (spec §8). Set it before the driver reads the features; kept across
    /// device resets.
    pub fn set_access_platform(&mut self, offered: bool) {
        self.access_platform = offered;
        self.avail_features = Self::offered(&self.vm, offered);
    }

    /// Sets the number of chains handled per notification (at least 1).
    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget.max(1);
    }

    /// The budget per notification.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The virtio device type: [`VIRTIO_ID_PVIRQ`] unless the VMM set another.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// Presents the device under another virtio device ID (spec §2.1: the ID is
    /// provisional; a platform may assign its own). 0 means "no device" to a virtio-mmio
    /// driver and is refused. Kept across device resets.
    pub fn set_device_type(&mut self, id: u32) -> Result<(), HostError> {
        if id == 0 {
            return Err(ConfigError::DeviceIdZero.into());
        }
        self.device_type = id;
        Ok(())
    }

    /// The largest size of each queue (virtio-mmio `QueueNumMax`), in index order: the
    /// request queue and the event queue (spec §2.3). Every device has both; a driver that
    /// did not negotiate `PVIRQ_F_EVENTS` leaves the event queue unused.
    pub fn queue_max_sizes(&self) -> &'static [u16] {
        &QUEUE_MAX_SIZES
    }

    /// Features offered.
    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// Features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Records the driver's features (bits not offered are dropped). A transport checks
    /// them first with [`PvirqDevice::check_features`], which FEATURES_OK needs.
    pub fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    /// Whether the device accepts `features` at FEATURES_OK: only offered bits, VERSION_1,
    /// and no bit without the bit it needs ([DEV-23]). A transport that gets an error
    /// leaves FEATURES_OK clear.
    pub fn check_features(&self, features: u64) -> Result<(), ActivateError> {
        let extra = features & !self.avail_features;
        if extra != 0 {
            return Err(ActivateError::NotOffered(extra));
        }
        if features & feature::VERSION_1 == 0 {
            return Err(ActivateError::Version1);
        }
        match feature::missing_dependency(features) {
            Some(bit) => Err(ActivateError::Dependency(bit)),
            None => Ok(()),
        }
    }

    /// Reads the configuration space at `offset` (bytes beyond it read as 0): the VM's
    /// configuration as it is now (spec §2.4).
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c: Config = self.vm.config().virtio_config();
        let mut bytes = [0u8; Config::SIZE];
        let fields = [
            &c.version.get().to_le_bytes()[..],
            &c.max_batch.get().to_le_bytes(),
            &c.num_devices.get().to_le_bytes(),
            &c.vm_quota.get().to_le_bytes(),
            &c.num_vcpus.get().to_le_bytes(),
        ];
        for (dst, src) in bytes.iter_mut().zip(fields.into_iter().flatten()) {
            *dst = *src;
        }
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|o| bytes.get(o).copied()).unwrap_or(0);
        }
    }

    /// The virtio `config_generation`: moves each time the configuration does.
    pub fn config_generation(&self) -> u32 {
        self.vm.config_generation()
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<PvirqMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The VM this device serves.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// What the VM holds now.
    pub fn occupancy(&self) -> VmOccupancy {
        self.vm.occupancy()
    }

    /// Whether the device is live.
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Whether the device needs a reset (it saw a malformed ring, or could not go live).
    pub fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    /// Written once each time the device goes live: an event loop watching it registers
    /// the queue eventfds then ([`PvirqDevice::queue_evt`]).
    pub fn activate_evt(&self) -> &EventFd {
        &self.activate_evt
    }

    /// The notification eventfd of queue `index`, while live.
    pub fn queue_evt(&self, index: usize) -> Option<&EventFd> {
        self.active.as_ref()?.queue_evts.get(index)
    }

    /// A live queue, for the transport to read back its registers.
    pub fn queue(&self, index: usize) -> Option<&Queue> {
        self.active.as_ref()?.queues.get(index)
    }

    /// Makes the device live with the transport's guest memory, interrupt and queues (with
    /// their notification eventfds), as virtio's DRIVER_OK does: the features must be
    /// acceptable ([`PvirqDevice::check_features`]), and every queue the driver uses must be
    /// ready, of a usable size, with its rings in guest memory. The transport gives both
    /// queues; without `PVIRQ_F_EVENTS` it may give the request queue alone.
    pub fn activate(
        &mut self,
        mem: M,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        self.check_activation(&mem, &queues)?;
        if queue_evts.len() != queues.len() {
            return Err(ActivateError::QueueCount {
                expected: queues.len(),
                got: queue_evts.len(),
            });
        }
        let expected = queues.len();
        self.vm.go_live(self.acked_features);
        self.stopped = vec![false; expected];
        self.active = Some(ActiveParts {
            mem,
            interrupt,
            queues,
            queue_evts,
        });
        if self.activate_evt.write(1).is_err() {
            self.metrics.event_errors.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether the driver negotiated the event queue.
    pub(super) fn events_negotiated(&self) -> bool {
        self.acked_features & feature::EVENTS != 0
    }

    /// Whether [`PvirqDevice::activate`] would accept `queues` over `mem` (a transport asks
    /// before it hands its queue eventfds over). The event queue is checked only when the
    /// driver negotiated `PVIRQ_F_EVENTS` ([DEV-24]: a version-1 driver sets up queue 0
    /// alone).
    pub fn check_activation(&self, mem: &M, queues: &[Queue]) -> Result<(), ActivateError> {
        self.check_features(self.acked_features)?;
        let used = if self.events_negotiated() {
            usize::from(EVENT_QUEUE) + 1
        } else {
            usize::from(REQUEST_QUEUE) + 1
        };
        let expected = self.queue_max_sizes().len();
        if queues.len() < used || queues.len() > expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        let guest = mem.memory();
        for (i, (q, max)) in queues
            .iter()
            .zip(self.queue_max_sizes())
            .enumerate()
            .take(used)
        {
            let size = q.size();
            if size == 0 || !size.is_power_of_two() || size > *max {
                return Err(ActivateError::QueueSize(i));
            }
            if !q.is_valid(&*guest) {
                return Err(ActivateError::QueueInvalid(i));
            }
        }
        Ok(())
    }

    /// Stops using queue `index` (QueueReady ← 0 while live): no chain is taken from it and
    /// its memory is not read or written again until a device reset. Processing runs under
    /// `&mut self`, so no chain is half-handled when this returns. The VM's grants stay: they
    /// belong to the VM's assigned devices, not to the queue (spec §2.3).
    pub fn stop_queue(&mut self, index: usize) {
        if let Some(stopped) = self.stopped.get_mut(index) {
            *stopped = true;
        }
    }

    /// Whether queue `index` is live: the device is, the driver made the queue ready, and
    /// has not stopped it.
    pub fn queue_running(&self, index: usize) -> bool {
        self.queue(index).is_some_and(Queue::ready)
            && !self.stopped.get(index).copied().unwrap_or(true)
    }

    /// Device reset (status ← 0): frees every grant of the VM and discards its pending
    /// events ([DEV-1]), applies the configuration changes a live driver could not be told
    /// about, forgets the negotiated features (the offer follows the VM's devices now), and
    /// gives the transport back what `activate` took (none if the device was not live).
    pub fn reset(&mut self) -> Option<ActiveParts<M>> {
        // Frees everything whatever the route layer says ([DEV-1]).
        self.vm.reset_all();
        self.avail_features = Self::offered(&self.vm, self.access_platform);
        self.acked_features = 0;
        self.needs_reset = false;
        self.paused = false;
        self.deferred = false;
        self.stopped.clear();
        self.active.take()
    }

    /// Sets DEVICE_NEEDS_RESET and raises the configuration-change interrupt (once until the
    /// next reset). The device does it itself on a malformed ring; a transport does it when
    /// the device cannot go live at DRIVER_OK, with the interrupt it would have given.
    pub fn enter_needs_reset(&mut self, interrupt: Option<&dyn VirtioInterrupt>) {
        if self.needs_reset {
            return;
        }
        self.needs_reset = true;
        self.metrics.needs_reset.fetch_add(1, Ordering::Relaxed);
        let raised = match (&self.active, interrupt) {
            (Some(active), _) => active.interrupt.trigger(InterruptType::Config),
            (None, Some(interrupt)) => interrupt.trigger(InterruptType::Config),
            (None, None) => Ok(()),
        };
        if raised.is_err() {
            self.metrics
                .interrupt_errors
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stops processing (a VMM pausing the VM, before a snapshot): notifications that arrive
    /// are remembered, not handled. Processing is synchronous under `&mut self`, so nothing
    /// is in flight once this returns.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Whether the device is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Continues after [`PvirqDevice::pause`], handling what arrived meanwhile and writing
    /// the events that wait (a restored device's REPROGRAM and REVOKE among them).
    pub fn resume(&mut self) -> Processed {
        self.paused = false;
        let done = if std::mem::take(&mut self.deferred) {
            self.process_queue(usize::from(REQUEST_QUEUE), self.budget)
        } else {
            Processed::default()
        };
        self.deliver_events();
        done
    }
}
