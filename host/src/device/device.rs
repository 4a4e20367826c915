//! The pvirq virtio device: feature and config negotiation, activation, and the request
//! queue.

use super::metrics::PvirqMetrics;
use super::request::{ChainBuffers, ChainSink, DescriptorTable, parse_chain};
use crate::error::HostError;
use crate::vm::{Vm, VmOccupancy};
use pvirq_proto::{Config, Kind, VIRTIO_ID_PVIRQ, feature};
use std::num::Wrapping;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Size of the request queue (its `QueueNumMax`).
pub const QUEUE_SIZE: u16 = 256;
/// Chains handled per queue notification before yielding to other event sources.
pub const DEFAULT_BUDGET: usize = 64;

/// Which interrupt the device raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptType {
    /// Used-buffer notification of the request queue.
    Queue,
    /// Configuration change (here: the device entered NEEDS_RESET).
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

/// The device.
pub struct PvirqDevice {
    vm: Vm,
    device_type: u32,
    config: Config,
    avail_features: u64,
    acked_features: u64,
    queue: Queue,
    queue_evt: EventFd,
    interrupt: Arc<dyn VirtioInterrupt>,
    mem: Option<GuestMemoryMmap>,
    needs_reset: bool,
    /// False while the last QueueNum the driver wrote is a size the device cannot use:
    /// activation then fails rather than using a size the driver never laid out.
    queue_size_ok: bool,
    budget: usize,
    metrics: Arc<PvirqMetrics>,
    /// Request and buffer lists of the chain being handled, reused for every chain.
    chain: ChainBuffers,
}

impl PvirqDevice {
    /// A device serving `vm`, interrupting through `interrupt`.
    pub fn new(vm: Vm, interrupt: Arc<dyn VirtioInterrupt>) -> Result<Self, HostError> {
        let queue = Queue::new(QUEUE_SIZE).map_err(|_| HostError::InvalidConfig("queue size"))?;
        let queue_evt = EventFd::new(EFD_NONBLOCK).map_err(|e| HostError::eventfd(&e))?;
        let devices = &vm.config().devices;
        let has = |k: Kind| devices.iter().any(|d| d.supports(k));
        let mut avail = feature::VERSION_1 | feature::RETARGET;
        if has(Kind::Msi) {
            avail |= feature::MSI;
        }
        if has(Kind::MsiX) {
            avail |= feature::MSIX;
        }
        if has(Kind::Ims) {
            avail |= feature::IMS | feature::PASID;
        }
        Ok(PvirqDevice {
            device_type: VIRTIO_ID_PVIRQ,
            config: vm.config().virtio_config(),
            vm,
            avail_features: avail,
            acked_features: 0,
            queue,
            queue_evt,
            interrupt,
            mem: None,
            needs_reset: false,
            queue_size_ok: true,
            budget: DEFAULT_BUDGET,
            metrics: Arc::new(PvirqMetrics::default()),
            chain: ChainBuffers::default(),
        })
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
            return Err(HostError::InvalidConfig("virtio device ID 0"));
        }
        self.device_type = id;
        Ok(())
    }

    /// Features offered: VERSION_1, RETARGET, and the kinds some device has (PASID with IMS).
    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// Features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Records the driver's features (bits not offered are dropped).
    pub fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    /// Reads the configuration space at `offset` (bytes beyond it read as 0).
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = &self.config;
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

    /// Sets the request queue's size as the driver wrote it (virtio-mmio QueueNum, which the
    /// driver cannot read back). A power of two up to [`QUEUE_SIZE`] is used as written;
    /// anything else (0, not a power of two, larger) is remembered as invalid, and
    /// [`PvirqDevice::activate`] then fails (spec §2.3).
    pub fn set_queue_size(&mut self, size: u32) {
        let usable = u16::try_from(size)
            .ok()
            .filter(|s| s.is_power_of_two() && *s <= QUEUE_SIZE);
        if let Some(size) = usable {
            self.queue.set_size(size);
        }
        self.queue_size_ok = usable.is_some();
    }

    /// The request queue, for the transport to configure before activation.
    pub fn queue_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }

    /// The request queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The queue-notify eventfd (for an ioeventfd, and the event handler).
    pub fn queue_evt(&self) -> &EventFd {
        &self.queue_evt
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

    /// Whether the device has been activated.
    pub fn is_activated(&self) -> bool {
        self.mem.is_some()
    }

    /// Whether the device needs a reset (it saw a corrupt ring).
    pub fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    /// Activates the device (DRIVER_OK): VERSION_1 must be negotiated and the queue valid,
    /// with a size the driver set through [`PvirqDevice::set_queue_size`] that the device
    /// can use.
    pub fn activate(&mut self, mem: GuestMemoryMmap) -> Result<(), HostError> {
        if self.acked_features & feature::VERSION_1 == 0 {
            return Err(HostError::Activation("VERSION_1 not negotiated"));
        }
        if !self.queue_size_ok {
            return Err(HostError::Activation("request queue size unusable"));
        }
        if !self.queue.is_valid(&mem) {
            return Err(HostError::Activation("request queue not valid"));
        }
        self.vm.set_features(self.acked_features);
        self.mem = Some(mem);
        Ok(())
    }

    /// Stops using the request queue (QueueReady ← 0 while live): no chain is taken from it
    /// and its memory is not read or written again until a device reset. Processing runs
    /// under `&mut self`, so no chain is half-handled when this returns. The VM's grants
    /// stay: they belong to the VM's assigned devices, not to the queue (spec §2.3).
    pub fn stop_queue(&mut self) {
        self.queue.set_ready(false);
    }

    /// Device reset (status ← 0): frees every grant of the VM and forgets the queue and
    /// the negotiated features.
    pub fn reset(&mut self) {
        // Frees everything whatever the route layer says ([DEV-1]).
        self.vm.reset_all();
        self.queue.reset();
        self.acked_features = 0;
        self.mem = None;
        self.needs_reset = false;
        self.queue_size_ok = true;
    }

    /// Sets DEVICE_NEEDS_RESET and raises the configuration-change interrupt (once until the
    /// next reset). The device does it itself on a malformed ring; a transport does it when
    /// the device cannot go live at DRIVER_OK.
    pub fn enter_needs_reset(&mut self) {
        if !self.needs_reset {
            self.needs_reset = true;
            self.metrics.needs_reset.fetch_add(1, Ordering::Relaxed);
            if self.interrupt.trigger(InterruptType::Config).is_err() {
                self.metrics
                    .interrupt_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Handles up to `budget` chains from the request queue, then signals the used ring
    /// once if anything was returned.
    pub fn process_queue(&mut self, budget: usize) -> Processed {
        // A stopped queue's memory may already be the driver's again.
        if self.needs_reset || !self.queue.ready() {
            return Processed::default();
        }
        // Borrowed out of `self` for the round (cloning it would copy its region list).
        let Some(mem) = self.mem.take() else {
            return Processed::default();
        };
        let done = self.process_chains(&mem, budget);
        self.mem = Some(mem);
        done
    }

    fn process_chains(&mut self, mem: &GuestMemoryMmap, budget: usize) -> Processed {
        let mut done = Processed::default();
        self.metrics.notifications.fetch_add(1, Ordering::Relaxed);
        loop {
            if done.chains >= budget {
                done.more = self.has_pending(mem);
                if done.more {
                    self.metrics.budget_yields.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            // A fresh iterator per chain: `iter` checks the avail index (a driver claiming
            // more chains than the queue holds is a corrupt ring), and `add_used` needs the
            // queue back.
            let head = match self.queue.iter(mem) {
                Ok(mut chains) => chains.next().map(|chain| chain.head_index()),
                Err(_) => {
                    self.enter_needs_reset();
                    break;
                }
            };
            let Some(head) = head else { break };
            let table = DescriptorTable {
                addr: GuestAddress(self.queue.desc_table()),
                size: self.queue.size(),
            };
            let mut visited = 0;
            let parsed = parse_chain(mem, table, head, &mut self.chain, &mut visited);
            self.metrics
                .descriptors
                .fetch_add(visited, Ordering::Relaxed);
            if parsed.is_err() {
                self.enter_needs_reset();
                break;
            }
            let mut sink = ChainSink::new(mem, &self.chain.writable);
            let handled = self.vm.handle(&self.chain.request, &mut sink);
            self.metrics.record(&handled);
            if self.queue.add_used(mem, head, handled.used_len).is_err() {
                self.enter_needs_reset();
                break;
            }
            done.chains += 1;
        }
        if done.chains > 0 {
            let notify = self.queue.needs_notification(mem).unwrap_or(true);
            if notify && self.interrupt.trigger(InterruptType::Queue).is_err() {
                self.metrics
                    .interrupt_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        done
    }

    /// Handles every pending chain (the inline path: the caller is the VM's own vCPU), up
    /// to one queue's worth: no more can be pending at once in a valid ring, and the cap
    /// keeps the work bounded (spec §8) when another vCPU adds chains meanwhile, whose own
    /// notification then handles them.
    pub fn process_all(&mut self) -> Processed {
        self.process_queue(usize::from(self.queue.size()))
    }

    fn has_pending(&self, mem: &GuestMemoryMmap) -> bool {
        self.queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|idx| idx != Wrapping(self.queue.next_avail()))
    }
}
