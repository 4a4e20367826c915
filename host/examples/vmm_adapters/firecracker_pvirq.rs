//! The adapter a Firecracker maintainer writes, in Firecracker's device layout
//! (`src/vmm/src/devices/virtio/pvirq/{device,event_handler,persist}.rs`): Firecracker's
//! queues and queue eventfds stay the adapter's, as Firecracker wants; at `activate` they
//! become virtio-queue queues and eventfd clones handed to `PvirqDevice::activate`.

use crate::firecracker_vmm::{self as fc, Persist, VirtioDevice};
use event_manager::{EventOps, Events, MutEventSubscriber};
use pvirq_host::device::{
    InterruptType, PersistError, PvirqDevice, PvirqDeviceState, QueueSnapshot, RestoreParts,
    VirtioInterrupt,
};
use pvirq_host::{HostError, Vm};
use serde::{Deserialize, Serialize};
use std::num::Wrapping;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use virtio_queue::{Queue, QueueState};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// The device's address space: Firecracker hands over its `GuestMemoryMmap` by value.
type Mem = Arc<fc::GuestMemoryMmap>;

/// Why the adapter failed.
#[derive(Debug, thiserror::Error)]
pub enum PvirqError {
    /// The device could not be made.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A queue eventfd could not be made.
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The state cannot be restored here.
    #[error(transparent)]
    Persist(#[from] PersistError),
}

/// pvirq's interrupts, raised through Firecracker's.
struct Interrupt(Arc<dyn fc::VirtioInterrupt>);

impl VirtioInterrupt for Interrupt {
    fn trigger(&self, kind: InterruptType) -> std::io::Result<()> {
        self.0.trigger(match kind {
            InterruptType::Queue(q) => fc::VirtioInterruptType::Queue(q),
            InterruptType::Config => fc::VirtioInterruptType::Config,
        })
    }
}

/// What `interrupt_trigger` returns before activation: nothing is raised then.
#[derive(Debug, Default)]
struct NoInterrupt(Arc<AtomicU32>);

impl fc::VirtioInterrupt for NoInterrupt {
    fn trigger(&self, _: fc::VirtioInterruptType) -> std::io::Result<()> {
        Ok(())
    }

    fn status(&self) -> Arc<AtomicU32> {
        Arc::clone(&self.0)
    }
}

/// The pvirq device as Firecracker drives it.
pub struct Pvirq {
    id: String,
    device: PvirqDevice<Mem>,
    queues: Vec<fc::Queue>,
    queue_evts: Vec<EventFd>,
    interrupt: Option<Arc<dyn fc::VirtioInterrupt>>,
    idle: NoInterrupt,
}

fn eventfds(n: usize) -> Result<Vec<EventFd>, std::io::Error> {
    (0..n).map(|_| EventFd::new(EFD_NONBLOCK)).collect()
}

fn clones(evts: &[EventFd]) -> Result<Vec<EventFd>, std::io::Error> {
    evts.iter().map(EventFd::try_clone).collect()
}

/// Firecracker's queue as virtio-queue's (which checks sizes and alignments).
fn to_virtio_queue(q: &fc::Queue) -> Option<Queue> {
    Queue::try_from(QueueState {
        max_size: q.max_size,
        next_avail: q.next_avail.0,
        next_used: q.next_used.0,
        event_idx_enabled: false,
        size: q.size,
        ready: q.ready,
        desc_table: q.desc_table_address.0,
        avail_ring: q.avail_ring_address.0,
        used_ring: q.used_ring_address.0,
    })
    .ok()
}

/// A saved queue as Firecracker's transport reads it back (sizes, readiness, addresses).
fn from_snapshot(s: &QueueSnapshot) -> fc::Queue {
    fc::Queue {
        max_size: s.max_size,
        size: s.size,
        ready: s.ready,
        desc_table_address: GuestAddress(s.desc_table),
        avail_ring_address: GuestAddress(s.avail_ring),
        used_ring_address: GuestAddress(s.used_ring),
        next_avail: Wrapping(s.next_avail),
        next_used: Wrapping(s.next_used),
    }
}

impl Pvirq {
    /// The device of `vm`, with its queues and their eventfds (which the VMM registers as
    /// ioeventfds when it attaches the device to the MMIO bus).
    pub fn new(id: impl Into<String>, vm: Vm) -> Result<Self, PvirqError> {
        let device = PvirqDevice::new(vm)?;
        let max = device.queue_max_sizes();
        Ok(Pvirq {
            id: id.into(),
            queues: max.iter().map(|m| fc::Queue::new(*m)).collect(),
            queue_evts: eventfds(max.len()).map_err(PvirqError::EventFd)?,
            device,
            interrupt: None,
            idle: NoInterrupt::default(),
        })
    }

    /// The pvirq device (metrics, occupancy, the VM).
    pub fn pvirq(&self) -> &PvirqDevice<Mem> {
        &self.device
    }
}

impl VirtioDevice for Pvirq {
    fn avail_features(&self) -> u64 {
        self.device.avail_features()
    }

    fn acked_features(&self) -> u64 {
        self.device.acked_features()
    }

    fn set_acked_features(&mut self, acked_features: u64) {
        self.device.ack_features(acked_features);
    }

    fn const_device_type() -> fc::VirtioDeviceType {
        fc::VirtioDeviceType::Pvirq
    }

    fn device_type(&self) -> fc::VirtioDeviceType {
        Self::const_device_type()
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn queues(&self) -> &[fc::Queue] {
        &self.queues
    }

    fn queues_mut(&mut self) -> &mut [fc::Queue] {
        &mut self.queues
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn interrupt_trigger(&self) -> &dyn fc::VirtioInterrupt {
        match &self.interrupt {
            Some(interrupt) => interrupt.as_ref(),
            None => &self.idle,
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.device.read_config(offset, data);
    }

    /// pvirq's configuration space is read-only.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: fc::GuestMemoryMmap,
        interrupt: Arc<dyn fc::VirtioInterrupt>,
    ) -> Result<(), fc::ActivateError> {
        let queues = self
            .queues
            .iter()
            .map(to_virtio_queue)
            .collect::<Option<Vec<_>>>()
            .ok_or(fc::ActivateError::BadActivate)?;
        let evts = clones(&self.queue_evts).map_err(fc::ActivateError::EventFd)?;
        let raise = Arc::new(Interrupt(Arc::clone(&interrupt)));
        self.device.activate(Arc::new(mem), raise, queues, evts)?;
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.device.is_activated()
    }

    /// Frees every grant of the VM ([DEV-1]) and gives back the interrupt and the eventfds
    /// the device was watching.
    fn reset(&mut self) -> Option<(Arc<dyn fc::VirtioInterrupt>, Vec<EventFd>)> {
        let parts = self.device.reset()?;
        for q in &mut self.queues {
            *q = fc::Queue::new(q.max_size);
        }
        Some((self.interrupt.take()?, parts.queue_evts))
    }

    /// A notification the source took before the snapshot was never handled (the eventfd
    /// is not part of the state): look at the ring once.
    fn kick(&mut self) {
        if self.device.is_activated() {
            self.device.process_all();
        }
    }
}

/// Firecracker runs its devices on the VMM thread's event loop: the device's own subscriber
/// watches the activation eventfd, then the queue eventfds.
impl MutEventSubscriber for Pvirq {
    fn init(&mut self, ops: &mut EventOps) {
        self.device.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.device.process(events, ops);
    }
}

/// What a snapshot holds of the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvirqState {
    /// The device id.
    pub id: String,
    /// The device, its queues and its VM's grants.
    pub device: PvirqDeviceState,
}

/// What the VMM gives the restored device: the guest memory, the VM it serves on this
/// host (fresh: its assigned devices attached, no grants) and the transport's interrupt.
pub struct PvirqConstructorArgs {
    /// The guest memory.
    pub mem: fc::GuestMemoryMmap,
    /// The VM.
    pub vm: Vm,
    /// The interrupt of the restored transport.
    pub interrupt: Arc<dyn fc::VirtioInterrupt>,
}

impl Persist<'_> for Pvirq {
    type State = PvirqState;
    type ConstructorArgs = PvirqConstructorArgs;
    type Error = PvirqError;

    /// Firecracker snapshots a paused VM on the VMM thread, which is also the thread that
    /// runs the device: nothing is in flight.
    fn save(&self) -> PvirqState {
        PvirqState {
            id: self.id.clone(),
            device: self.device.save(),
        }
    }

    /// Every grant is re-reserved through the VM's backends before the VM runs; a state
    /// this host cannot honour is refused with nothing held.
    fn restore(args: PvirqConstructorArgs, state: &PvirqState) -> Result<Self, PvirqError> {
        let live = state.device.queues.as_ref().map_or(0, Vec::len);
        let evts = eventfds(live).map_err(PvirqError::EventFd)?;
        let parts = RestoreParts {
            mem: Arc::new(args.mem),
            interrupt: Arc::new(Interrupt(Arc::clone(&args.interrupt))),
            queue_evts: clones(&evts).map_err(PvirqError::EventFd)?,
        };
        let (device, _kept) = PvirqDevice::restore(args.vm, &state.device, parts)?;
        let max = device.queue_max_sizes();
        let (queues, queue_evts) = match &state.device.queues {
            Some(saved) => (saved.iter().map(from_snapshot).collect(), evts),
            None => (
                max.iter().map(|m| fc::Queue::new(*m)).collect(),
                eventfds(max.len()).map_err(PvirqError::EventFd)?,
            ),
        };
        Ok(Pvirq {
            id: state.id.clone(),
            interrupt: device.is_activated().then_some(args.interrupt),
            device,
            queues,
            queue_evts,
            idle: NoInterrupt::default(),
        })
    }
}
