//! cloud-hypervisor's side, played here: its virtio-pci transport keeps the queue setup and
//! hands queues, eventfds and the interrupt over at DRIVER_OK; a migration pauses the
//! device, snapshots it, constructs it on the destination from its state, and the
//! destination's transport activates it again with the queues it saved, their ring
//! positions read back from the used ring as cloud-hypervisor does.

use crate::cloud_hypervisor_pvirq::Pvirq;
use crate::cloud_hypervisor_vmm::{
    self as ch, ActivationContext, Pausable, Snapshottable, VirtioDevice,
};
use crate::guest::{GuestRing, MEM_SIZE};
use pvirq_host::device::PvirqDeviceState;
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{GuestAddress, GuestMemoryAtomic};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

fn memory() -> Result<ch::GuestMemoryMmap, vm_memory::mmap::FromRangesError> {
    ch::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
}

/// The transport's interrupt: counts what it was asked to raise.
#[derive(Default)]
struct Msix {
    queue: AtomicU64,
    config: AtomicU64,
}

impl ch::VirtioInterrupt for Msix {
    fn trigger(&self, int_type: ch::VirtioInterruptType) -> std::io::Result<()> {
        let counter = match int_type {
            ch::VirtioInterruptType::Queue(_) => &self.queue,
            ch::VirtioInterruptType::Config => &self.config,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// What the virtio-pci transport holds of a device: its queue setup, the ioeventfd of
/// each queue, the interrupt and the status register.
struct Transport {
    queue: QueueState,
    ioeventfd: EventFd,
    msix: Arc<Msix>,
    status: Arc<AtomicU8>,
}

impl Transport {
    fn new(queue: QueueState) -> Result<Self, std::io::Error> {
        Ok(Transport {
            queue,
            ioeventfd: EventFd::new(EFD_NONBLOCK)?,
            msix: Arc::default(),
            status: Arc::default(),
        })
    }

    /// The destination's transport: the saved queue setup, its ring positions read back
    /// from the used ring (every chain the paused source took, it returned).
    fn restored(setup: &QueueState, mem: &ch::GuestMemoryMmap) -> Result<Self, Box<dyn Error>> {
        let queue = Queue::try_from(*setup)?;
        let used = queue.used_idx(mem, Ordering::Acquire)?.0;
        Ok(Transport::new(QueueState {
            next_avail: used,
            next_used: used,
            ..*setup
        })?)
    }

    /// DRIVER_OK: acknowledges what a version-1 driver accepts of the offer (the ring here
    /// is the request queue alone; the event queue comes with PVIRQ_F_EVENTS) and
    /// activates.
    fn activate(&self, dev: &mut Pvirq, mem: &ch::GuestMemoryMmap) -> ch::ActivateResult {
        dev.ack_features(dev.features() & !pvirq_proto::feature::EXTENSIONS);
        let queue = Queue::try_from(self.queue).map_err(|_| ch::ActivateError::BadActivate)?;
        let evt = self
            .ioeventfd
            .try_clone()
            .map_err(ch::ActivateError::CloneEventFd)?;
        dev.activate(ActivationContext {
            mem: GuestMemoryAtomic::new(mem.clone()),
            interrupt_cb: self.msix.clone(),
            queues: vec![(0, queue, evt)],
            device_status: Arc::clone(&self.status),
        })
    }
}

/// Polls until `done` holds (the device's worker runs on its own thread).
fn wait_for(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// One migration: a request on the source, pause with a notification pending, snapshot,
/// the device constructed on the destination, activated, resumed; the source releases.
pub fn demo() -> Result<String, Box<dyn Error>> {
    let (source_host, dest_host) = (crate::host()?, crate::host()?);
    let mem = memory()?;
    let mut ring = GuestRing::new(&mem);
    let mut source = Pvirq::new("_pvirq0", crate::vm(&source_host)?, None)?;
    let transport = Transport::new(ring.configured_queue())?;
    transport.activate(&mut source, &mem)?;
    let first = ring.alloc(2, 0x40);
    transport.ioeventfd.write(1)?;
    wait_for(|| ring.granted(first).is_some());
    source.pause()?;
    let pending = ring.alloc(1, 0x50);
    transport.ioeventfd.write(1)?;
    let snapshot = source.snapshot()?;
    let state: PvirqDeviceState = snapshot.to_state()?;
    let mut dest = Pvirq::new("_pvirq0", crate::vm(&dest_host)?, Some(&state))?;
    let dest_transport = Transport::restored(&transport.queue, &mem)?;
    dest_transport.activate(&mut dest, &mem)?;
    dest.resume()?;
    let released = source.finish_migration();
    Ok(format!(
        "granted {:?} on the source, {:?} on the destination; {} grants restored, {released} \
         released by the source once confirmed",
        ring.granted(first),
        ring.granted(pending),
        dest.restored().len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvirq_host::snapshot::Restored;
    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
    use vm_memory::GuestMemoryBackend;
    use vm_memory::bitmap::{AtomicBitmap, Bitmap};

    fn dirty(mem: &ch::GuestMemoryMmap, at: GuestAddress) -> bool {
        let region = mem.iter().next().unwrap();
        let log: &AtomicBitmap = std::ops::Deref::deref(region).bitmap();
        log.dirty_at(at.0 as usize)
    }

    #[test]
    fn cloud_hypervisor_activates_on_the_transports_queues_and_a_worker_runs_them() {
        let host = crate::host().unwrap();
        let mem = memory().unwrap();
        let mut ring = GuestRing::new(&mem);
        let mut dev = Pvirq::new("_pvirq0", crate::vm(&host).unwrap(), None).unwrap();
        assert_eq!(dev.device_type(), pvirq_proto::VIRTIO_ID_PVIRQ);
        assert_eq!(dev.queue_max_sizes(), &[256, 64]);
        let quota = |dev: &Pvirq| {
            let mut b = [0u8; 4];
            dev.read_config(8, &mut b);
            u32::from_le_bytes(b)
        };
        assert_eq!(quota(&dev), 16);
        dev.write_config(8, &[0; 4]);
        assert_eq!(quota(&dev), 16, "the configuration space is read-only");
        let transport = Transport::new(ring.configured_queue()).unwrap();
        transport.activate(&mut dev, &mem).unwrap();
        let sent = ring.alloc(2, 0x40);
        transport.ioeventfd.write(1).unwrap();
        assert!(wait_for(|| ring.granted(sent) == Some(2)));
        assert!(wait_for(|| transport.msix.queue.load(Ordering::SeqCst) == 1));
        assert_eq!(dev.pvirq().occupancy().held, 2);
        let (_, _, used) = ring.addresses();
        assert!(dirty(&mem, used), "the used ring is logged for migration");

        dev.reset();
        assert_eq!(dev.pvirq().occupancy().held, 0, "reset frees every grant");
        assert!(!dev.pvirq().is_activated());
        // The worker is gone with the reset: a notification now reaches nothing.
        let after = ring.alloc(1, 0x50);
        transport.ioeventfd.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(ring.granted(after), None);
    }

    #[test]
    fn a_malformed_ring_sets_needs_reset_in_the_transports_status_register() {
        let host = crate::host().unwrap();
        let mem = memory().unwrap();
        let mut ring = GuestRing::new(&mem);
        let mut dev = Pvirq::new("_pvirq0", crate::vm(&host).unwrap(), None).unwrap();
        let transport = Transport::new(ring.configured_queue()).unwrap();
        transport.activate(&mut dev, &mem).unwrap();
        ring.alloc(1, 0x40);
        // More chains claimed available than the queue holds.
        ring.set_avail_idx(100);
        transport.ioeventfd.write(1).unwrap();
        let needs_reset = VIRTIO_CONFIG_S_NEEDS_RESET as u8;
        assert!(wait_for(|| transport.status.load(Ordering::SeqCst)
            & needs_reset
            != 0));
        assert_eq!(transport.msix.config.load(Ordering::SeqCst), 1);
        dev.shutdown();
    }

    #[test]
    fn a_cloud_hypervisor_migration_restores_at_construction_and_the_source_keeps_all_until_confirmed()
     {
        let (source_host, dest_host) = (crate::host().unwrap(), crate::host().unwrap());
        let mem = memory().unwrap();
        let mut ring = GuestRing::new(&mem);
        let mut source = Pvirq::new("_pvirq0", crate::vm(&source_host).unwrap(), None).unwrap();
        let transport = Transport::new(ring.configured_queue()).unwrap();
        transport.activate(&mut source, &mem).unwrap();
        let first = ring.alloc(3, 0x40);
        transport.ioeventfd.write(1).unwrap();
        assert!(wait_for(|| ring.granted(first) == Some(3)));
        let grants = source.pvirq().vm().grants(0);

        source.pause().unwrap();
        let pending = ring.alloc(2, 0x50);
        transport.ioeventfd.write(1).unwrap();
        fn migratable(device: &dyn ch::Migratable) -> String {
            device.id()
        }
        assert_eq!(migratable(&source), "_pvirq0");
        let snapshot = source.snapshot().unwrap();
        assert_eq!(ring.granted(pending), None, "paused: nothing handled");
        let state: PvirqDeviceState = snapshot.to_state().unwrap();
        let mut dest = Pvirq::new("_pvirq0", crate::vm(&dest_host).unwrap(), Some(&state)).unwrap();
        assert_eq!(dest.restored().len(), 3);
        assert!(dest.restored().iter().all(|r| r.outcome == Restored::Kept));
        assert_eq!(dest.pvirq().vm().grants(0), grants, "the same messages");
        assert_eq!(
            source_host.occupancy(),
            dest_host.occupancy(),
            "the source keeps everything until it is told"
        );

        let dest_transport = Transport::restored(&transport.queue, &mem).unwrap();
        dest_transport.activate(&mut dest, &mem).unwrap();
        // Restored paused: nothing runs before the VM resumes.
        dest_transport.ioeventfd.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(ring.granted(pending), None);
        dest.resume().unwrap();
        assert_eq!(ring.granted(pending), Some(2), "what the source deferred");
        let third = ring.alloc(1, 0x60);
        dest_transport.ioeventfd.write(1).unwrap();
        assert!(wait_for(|| ring.granted(third) == Some(1)));

        assert_eq!(source.finish_migration(), 3);
        assert_eq!(source_host.occupancy().vectors_used, 0);
        assert_eq!(dest.pvirq().occupancy().held, 6);
        dest.shutdown();
    }
}
