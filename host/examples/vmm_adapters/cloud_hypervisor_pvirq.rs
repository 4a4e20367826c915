//! The adapter a cloud-hypervisor maintainer writes (`virtio-devices/src/pvirq.rs`): the
//! queues and eventfds of the `ActivationContext` go to `PvirqDevice::activate`; a worker
//! thread runs the device's own `event-manager` subscriber, as cloud-hypervisor gives each
//! device its epoll thread; pause and resume take the device's lock, so nothing is in flight
//! once `pause` returns; a restored device is constructed from its state, paused, and made
//! live again by the transport's `activate` with the queues it saved.

use crate::cloud_hypervisor_vmm::{
    self as ch, ActivateError, ActivateResult, ActivationContext, Migratable, MigratableError,
    Pausable, Snapshot, Snapshottable, Transportable, VirtioDevice,
};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use pvirq_host::Vm;
use pvirq_host::device::{
    InterruptType, PersistError, PvirqDevice, PvirqDeviceState, VirtioInterrupt,
};
use pvirq_host::snapshot::RestoredGrant;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

type Mem = GuestMemoryAtomic<ch::GuestMemoryMmap>;
type Shared = Arc<Mutex<PvirqDevice<Mem>>>;

fn lock(device: &Shared) -> MutexGuard<'_, PvirqDevice<Mem>> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

/// pvirq's interrupts, raised through cloud-hypervisor's.
struct Interrupt(Arc<dyn ch::VirtioInterrupt>);

impl VirtioInterrupt for Interrupt {
    fn trigger(&self, kind: InterruptType) -> std::io::Result<()> {
        self.0.trigger(match kind {
            InterruptType::Queue(q) => ch::VirtioInterruptType::Queue(q),
            InterruptType::Config => ch::VirtioInterruptType::Config,
        })
    }
}

/// The worker's event handler: the device's own subscriber, then DEVICE_NEEDS_RESET
/// mirrored into the transport's status register, and a kill eventfd.
struct Handler {
    device: Shared,
    device_status: Arc<AtomicU8>,
    kill: EventFd,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for Handler {
    fn init(&mut self, ops: &mut EventOps) {
        lock(&self.device).init(ops);
        // Without it the worker could not be stopped: reported on the first wait.
        let _ = ops.add(Events::new(&self.kill, EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.kill.as_raw_fd() {
            self.stop.store(true, Ordering::SeqCst);
            return;
        }
        let mut device = lock(&self.device);
        device.process(events, ops);
        if device.needs_reset() {
            self.device_status
                .fetch_or(VIRTIO_CONFIG_S_NEEDS_RESET as u8, Ordering::SeqCst);
        }
    }
}

/// The device's epoll thread.
struct Worker {
    kill: EventFd,
    thread: JoinHandle<()>,
}

impl Worker {
    fn start(device: Shared, device_status: Arc<AtomicU8>) -> Result<Worker, std::io::Error> {
        let kill = EventFd::new(EFD_NONBLOCK)?;
        let handler = Handler {
            device,
            device_status,
            kill: kill.try_clone()?,
            stop: Arc::default(),
        };
        let stop = Arc::clone(&handler.stop);
        let mut event_loop: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().map_err(|e| std::io::Error::other(e.to_string()))?;
        event_loop.add_subscriber(Arc::new(Mutex::new(handler)));
        let thread = std::thread::Builder::new()
            .name("virtio-pvirq".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if event_loop.run().is_err() {
                        break;
                    }
                }
            })?;
        Ok(Worker { kill, thread })
    }

    fn stop(self) {
        // The thread only ends by this write (or a failed wait): nothing to do if it fails.
        let _ = self.kill.write(1);
        let _ = self.thread.join();
    }
}

/// The pvirq device as cloud-hypervisor drives it.
pub struct Pvirq {
    id: String,
    device: Shared,
    queue_sizes: Vec<u16>,
    worker: Option<Worker>,
    restored: Vec<RestoredGrant>,
}

impl Pvirq {
    /// The device of `vm`; with `state`, the device restored from it (every grant
    /// re-reserved through `vm`'s backends before the VM runs), paused until the VM
    /// resumes, and not live until the transport activates it with its restored queues.
    pub fn new(
        id: impl Into<String>,
        vm: Vm,
        state: Option<&PvirqDeviceState>,
    ) -> Result<Self, PersistError> {
        let (mut device, restored) = match state {
            None => (PvirqDevice::new(vm)?, Vec::new()),
            Some(state) => PvirqDevice::restore_inactive(vm, state)?,
        };
        if state.is_some() {
            device.pause();
        }
        Ok(Pvirq {
            id: id.into(),
            queue_sizes: device.queue_max_sizes().to_vec(),
            device: Arc::new(Mutex::new(device)),
            worker: None,
            restored,
        })
    }

    /// What became of each grant of the state it was restored from.
    pub fn restored(&self) -> &[RestoredGrant] {
        &self.restored
    }

    /// The pvirq device (metrics, occupancy, the VM).
    pub fn pvirq(&self) -> MutexGuard<'_, PvirqDevice<Mem>> {
        lock(&self.device)
    }

    /// On the source, once the destination confirmed the migration: every grant is
    /// released (until then the source keeps them, so a failed migration resumes here).
    pub fn finish_migration(&mut self) -> u32 {
        self.stop_worker();
        lock(&self.device).finish_migration()
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

impl VirtioDevice for Pvirq {
    fn device_type(&self) -> u32 {
        lock(&self.device).device_type()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        lock(&self.device).avail_features()
    }

    fn ack_features(&mut self, value: u64) {
        lock(&self.device).ack_features(value);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        lock(&self.device).read_config(offset, data);
    }

    fn activate(&mut self, context: ActivationContext) -> ActivateResult {
        let mut queues = Vec::with_capacity(context.queues.len());
        let mut evts = Vec::with_capacity(context.queues.len());
        for (expected, (index, queue, evt)) in context.queues.into_iter().enumerate() {
            // pvirq's queues are all required: each at its own index.
            if index != expected {
                return Err(ActivateError::BadActivate);
            }
            queues.push(queue);
            evts.push(evt);
        }
        let interrupt = Arc::new(Interrupt(context.interrupt_cb));
        lock(&self.device).activate(context.mem, interrupt, queues, evts)?;
        let worker = Worker::start(Arc::clone(&self.device), context.device_status);
        match worker {
            Ok(worker) => {
                self.worker = Some(worker);
                Ok(())
            }
            Err(e) => {
                lock(&self.device).reset();
                Err(ActivateError::Thread(e))
            }
        }
    }

    /// Frees every grant of the VM ([DEV-1]); the transport keeps its own queue setup.
    fn reset(&mut self) {
        self.stop_worker();
        lock(&self.device).reset();
    }

    fn shutdown(&mut self) {
        self.stop_worker();
    }
}

impl Pausable for Pvirq {
    /// Processing runs under the device's lock: once it is taken nothing is in flight, and
    /// notifications that arrive are remembered.
    fn pause(&mut self) -> Result<(), MigratableError> {
        lock(&self.device).pause();
        Ok(())
    }

    /// Handles what arrived meanwhile, and what the ring holds: a notification the source
    /// took before the snapshot is not part of the state.
    fn resume(&mut self) -> Result<(), MigratableError> {
        let mut device = lock(&self.device);
        device.resume();
        device.process_all();
        Ok(())
    }
}

impl Snapshottable for Pvirq {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn snapshot(&mut self) -> Result<Snapshot, MigratableError> {
        Snapshot::new_from_state(&lock(&self.device).save())
    }
}

impl Transportable for Pvirq {}
impl Migratable for Pvirq {}

impl Drop for Pvirq {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
