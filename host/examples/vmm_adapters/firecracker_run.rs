//! Firecracker's side, played here: its MMIO transport brings the device up (features by
//! page, queue registers through `queues_mut`, `activate` at DRIVER_OK), its event loop
//! runs the device, its snapshot code saves and restores it, then kicks it.

use crate::firecracker_pvirq::{Pvirq, PvirqConstructorArgs};
use crate::firecracker_vmm::{self as fc, Persist, VirtioDevice};
use crate::guest::{GuestRing, MEM_SIZE, QUEUE_SIZE};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use std::error::Error;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestRegionMmap};

type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Guest memory as Firecracker maps it with dirty page tracking on: one region, its
/// bitmap present.
fn memory() -> Result<fc::GuestMemoryMmap, Box<dyn Error>> {
    let page = NonZeroUsize::new(4096).ok_or("page size")?;
    let log = Some(AtomicBitmap::new(MEM_SIZE, page));
    let mapping = MmapRegionBuilder::new_with_bitmap(MEM_SIZE, log)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .build()?;
    let region = GuestRegionMmap::new(mapping, GuestAddress(0)).ok_or("region")?;
    Ok(fc::GuestMemoryMmap::from_regions(vec![region])?)
}

/// What Firecracker's MMIO transport does between the driver's ACKNOWLEDGE and DRIVER_OK:
/// acknowledges every offered feature, writes the driver's queue setup, activates.
fn bring_up(
    dev: &mut Pvirq,
    ring: &GuestRing<'_, Option<AtomicBitmap>>,
    mem: &fc::GuestMemoryMmap,
    irq: Arc<dyn fc::VirtioInterrupt>,
) -> Result<(), fc::ActivateError> {
    // The ring laid out here is a version-1 driver's: the request queue alone, none of the
    // extensions (the event queue comes with PVIRQ_F_EVENTS).
    let offered = dev.avail_features() & !pvirq_proto::feature::EXTENSIONS;
    dev.ack_features_by_page(0, offered as u32);
    dev.ack_features_by_page(1, (offered >> 32) as u32);
    let (desc, avail, used) = ring.addresses();
    let q = &mut dev.queues_mut()[0];
    q.size = QUEUE_SIZE;
    q.desc_table_address = desc;
    q.avail_ring_address = avail;
    q.used_ring_address = used;
    q.ready = true;
    dev.activate(mem.clone(), irq)
}

/// One lifecycle: activation, a request through the event loop, a snapshot with a
/// notification pending, restore, kick, reset.
pub fn demo() -> Result<String, Box<dyn Error>> {
    let host = crate::host()?;
    let mem = memory()?;
    let mut ring = GuestRing::new(&mem);
    let mut dev = Pvirq::new("pvirq0", crate::vm(&host)?)?;
    bring_up(&mut dev, &ring, &mem, Arc::new(fc::IrqTrigger::new()?))?;
    let dev = Arc::new(Mutex::new(dev));
    let mut event_loop = Loop::new()?;
    event_loop.add_subscriber(dev.clone());
    event_loop.run_with_timeout(0)?;
    let first = ring.alloc(2, 0x40);
    lock(&dev).queue_events()[0].write(1)?;
    event_loop.run_with_timeout(0)?;
    let pending = ring.alloc(1, 0x50);
    lock(&dev).queue_events()[0].write(1)?;
    let state = serde_json::to_string(&lock(&dev).save())?;
    drop(event_loop);
    drop(dev);
    let args = PvirqConstructorArgs {
        mem: mem.clone(),
        vm: crate::vm(&host)?,
        interrupt: Arc::new(fc::IrqTrigger::new()?),
    };
    let mut restored = Pvirq::restore(args, &serde_json::from_str(&state)?)?;
    restored.kick();
    let held = restored.pvirq().occupancy().held;
    restored.reset();
    Ok(format!(
        "granted {:?} then {:?} (the latter after restore and kick); {held} held after \
         restore and kick, {} after reset",
        ring.granted(first),
        ring.granted(pending),
        restored.pvirq().occupancy().held
    ))
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firecracker_pvirq::PvirqError;
    use pvirq_host::device::PersistError;
    use std::sync::atomic::Ordering;

    fn ptr<T: ?Sized>(a: &Arc<T>) -> *const () {
        Arc::as_ptr(a).cast()
    }

    #[test]
    fn firecracker_activates_runs_the_queue_on_its_event_loop_and_reset_hands_back() {
        let host = crate::host().unwrap();
        let mem = memory().unwrap();
        let mut ring = GuestRing::new(&mem);
        let mut dev = Pvirq::new("pvirq0", crate::vm(&host).unwrap()).unwrap();
        assert_eq!(dev.device_type(), fc::VirtioDeviceType::Pvirq);
        assert_eq!(dev.device_type() as u8, 56);
        assert!(!dev.is_activated());
        assert_eq!(dev.interrupt_trigger().status().load(Ordering::SeqCst), 0);
        // The configuration space (vm_quota at offset 8) is read-only.
        let quota = |dev: &Pvirq| {
            let mut b = [0u8; 4];
            dev.read_config(8, &mut b);
            u32::from_le_bytes(b)
        };
        assert_eq!(quota(&dev), 16);
        dev.write_config(8, &[0; 4]);
        assert_eq!(quota(&dev), 16);
        let irq = Arc::new(fc::IrqTrigger::new().unwrap());
        bring_up(&mut dev, &ring, &mem, irq.clone()).unwrap();
        assert!(dev.is_activated());
        assert_eq!(
            dev.acked_features(),
            dev.avail_features() & !pvirq_proto::feature::EXTENSIONS
        );

        let dev = Arc::new(Mutex::new(dev));
        let mut event_loop = Loop::new().unwrap();
        event_loop.add_subscriber(dev.clone());
        // The activation event: the device's subscriber starts watching its queue.
        event_loop.run_with_timeout(0).unwrap();
        let sent = ring.alloc(2, 0x40);
        lock(&dev).queue_events()[0].write(1).unwrap();
        assert_eq!(
            ring.used_idx(),
            0,
            "nothing is handled inside the notification"
        );
        event_loop.run_with_timeout(0).unwrap();
        assert_eq!(ring.granted(sent), Some(2));
        assert_eq!(
            dev.lock()
                .unwrap()
                .interrupt_trigger()
                .status()
                .load(Ordering::SeqCst),
            fc::VIRTIO_MMIO_INT_VRING
        );
        assert_eq!(
            irq.irq_evt.read().unwrap(),
            1,
            "one interrupt for the round"
        );
        assert_eq!(lock(&dev).pvirq().occupancy().held, 2);

        let mut dev = lock(&dev);
        let (back, evts) = dev.reset().expect("a live device hands its parts back");
        assert_eq!(ptr(&back), ptr(&irq));
        // The eventfd it hands back is the one the VMM registered as the ioeventfd.
        evts[0].write(5).unwrap();
        assert_eq!(dev.queue_events()[0].read().unwrap(), 5);
        assert!(!dev.is_activated());
        assert!(!dev.queues()[0].ready);
        assert_eq!(dev.pvirq().occupancy().held, 0, "reset frees every grant");
        assert!(dev.reset().is_none());
    }

    #[test]
    fn a_firecracker_snapshot_restores_every_grant_and_kick_handles_the_pending_notification() {
        let host = crate::host().unwrap();
        let mem = memory().unwrap();
        let mut ring = GuestRing::new(&mem);
        let mut dev = Pvirq::new("pvirq0", crate::vm(&host).unwrap()).unwrap();
        bring_up(
            &mut dev,
            &ring,
            &mem,
            Arc::new(fc::IrqTrigger::new().unwrap()),
        )
        .unwrap();
        let first = ring.alloc(3, 0x40);
        dev.queue_events()[0].write(1).unwrap();
        dev.kick();
        assert_eq!(ring.granted(first), Some(3));
        let grants = dev.pvirq().vm().grants(0);
        // A vCPU notifies; the VMM pauses and snapshots before its loop runs again.
        let pending = ring.alloc(2, 0x50);
        dev.queue_events()[0].write(1).unwrap();
        let json = serde_json::to_string(&dev.save()).unwrap();
        let vectors = host.occupancy().vectors_used;
        drop(dev);
        assert_eq!(
            host.occupancy().vectors_used,
            0,
            "the source process is gone"
        );

        let irq = Arc::new(fc::IrqTrigger::new().unwrap());
        let args = PvirqConstructorArgs {
            mem: mem.clone(),
            vm: crate::vm(&host).unwrap(),
            interrupt: irq.clone(),
        };
        let mut restored = Pvirq::restore(args, &serde_json::from_str(&json).unwrap()).unwrap();
        assert!(restored.is_activated());
        assert_eq!(restored.id(), "pvirq0");
        assert_eq!(restored.pvirq().vm().grants(0), grants);
        assert_eq!(host.occupancy().vectors_used, vectors);
        let q = &restored.queues()[0];
        assert_eq!((q.size, q.ready, q.next_avail.0), (QUEUE_SIZE, true, 1));
        assert_eq!(ring.granted(pending), None, "not handled before the kick");
        restored.kick();
        assert_eq!(ring.granted(pending), Some(2));
        assert_eq!(irq.irq_evt.read().unwrap(), 1);

        // The restored device on a fresh event loop: live already, so it watches its queue
        // from `init`.
        let restored = Arc::new(Mutex::new(restored));
        let mut event_loop = Loop::new().unwrap();
        event_loop.add_subscriber(restored.clone());
        let third = ring.alloc(1, 0x60);
        lock(&restored).queue_events()[0].write(1).unwrap();
        event_loop.run_with_timeout(0).unwrap();
        assert_eq!(ring.granted(third), Some(1));
        assert_eq!(lock(&restored).pvirq().occupancy().held, 6);
    }

    #[test]
    fn a_firecracker_state_another_host_cannot_honour_is_refused_with_nothing_held() {
        let host = crate::host().unwrap();
        let mem = memory().unwrap();
        let mut ring = GuestRing::new(&mem);
        let mut dev = Pvirq::new("pvirq0", crate::vm(&host).unwrap()).unwrap();
        bring_up(
            &mut dev,
            &ring,
            &mem,
            Arc::new(fc::IrqTrigger::new().unwrap()),
        )
        .unwrap();
        let sent = ring.alloc(2, 0x40);
        dev.kick();
        assert_eq!(ring.granted(sent), Some(2));
        let state = dev.save();
        // Another host whose IRTEs 0 and 1 belong to another VM's device.
        let other = crate::host().unwrap();
        let config = pvirq_host::VmConfig {
            devices: vec![pvirq_host::DeviceSpec {
                requester_id: 0x0200,
                msi_max: 0,
                msix_table_size: 4,
                ims_slots: 0,
                ..pvirq_host::DeviceSpec::default()
            }],
            ..(*crate::vm(&other).unwrap().config()).clone()
        };
        let squatter = other
            .create_vm(
                config,
                Box::new(pvirq_host::routes::MemoryRoutes::kvm_like()),
            )
            .unwrap();
        let mut squatting = Pvirq::new("other", squatter).unwrap();
        let other_ring_mem = memory().unwrap();
        let mut other_ring = GuestRing::new(&other_ring_mem);
        bring_up(
            &mut squatting,
            &other_ring,
            &other_ring_mem,
            Arc::new(fc::IrqTrigger::new().unwrap()),
        )
        .unwrap();
        let taken = other_ring.alloc(2, 0x30);
        squatting.kick();
        assert_eq!(other_ring.granted(taken), Some(2));
        let used = other.occupancy().vectors_used;
        let args = PvirqConstructorArgs {
            mem: mem.clone(),
            vm: crate::vm(&other).unwrap(),
            interrupt: Arc::new(fc::IrqTrigger::new().unwrap()),
        };
        let refused = Pvirq::restore(args, &state).map(|_| ()).unwrap_err();
        assert!(
            matches!(
                refused,
                PvirqError::Persist(PersistError::GuestCannotBeTold {
                    reprogrammed: 2,
                    revoked: 0
                })
            ),
            "{refused}"
        );
        assert_eq!(other.occupancy().vectors_used, used);
    }
}
