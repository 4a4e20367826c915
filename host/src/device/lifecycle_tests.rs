//! The device in a VMM's shape: activate and reset hand parts back and forth, the event
//! loop starts watching at activation, the mmio front sits on a `vm-device` bus, replies are
//! logged dirty, pause defers, and a snapshot restores (or is refused) whole.

use super::test_utils::*;
use super::*;
use crate::config::{DeviceSpec, VmConfig};
use crate::model::ModelHost;
use crate::routes::MemoryRoutes;
use crate::snapshot::Restored;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use pvirq_proto::{Alloc, Kind, Operation, Outcome, Request, Response, Target, feature};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

fn alloc(max: u16) -> Vec<u8> {
    let t: Vec<Target> = (0..max).map(|i| Target::new(1, 0x40 + i as u8)).collect();
    encode(&Request {
        device: 0,
        tag: 3,
        op: Operation::Alloc(Alloc::any(Kind::MsiX, 1, &t)),
    })
}

fn granted(reply: &[u8]) -> usize {
    match Response::decode(reply, feature::V1).unwrap().outcome {
        Outcome::Allocated { grants, .. } => grants.len(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reset_hands_back_the_queues_and_eventfds_activate_took() {
    let host = host();
    let mem = guest_memory();
    let drv = Driver::new(&mem, 16);
    let mut dev = PvirqDevice::<Mem>::new(vm(&host, 0x100, 8)).unwrap();
    dev.ack_features(feature::V1);
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let fd = evt.as_raw_fd();
    let irq = Arc::new(MmioInterrupt::new());
    dev.activate(
        atomic(&mem),
        irq,
        vec![drv.q.create_queue().unwrap()],
        vec![evt],
    )
    .unwrap();
    assert!(matches!(
        dev.activate(atomic(&mem), Arc::new(MmioInterrupt::new()), vec![], vec![]),
        Err(ActivateError::AlreadyActive)
    ));
    assert_eq!(dev.queue_evt(0).map(AsRawFd::as_raw_fd), Some(fd));
    let parts = dev.reset().expect("live device gives its parts back");
    assert_eq!(parts.queue_evts.len(), 1);
    assert_eq!(parts.queue_evts[0].as_raw_fd(), fd);
    assert_eq!(parts.queues.len(), 1);
    assert!(!dev.is_activated());
    assert!(dev.reset().is_none(), "nothing to give back twice");
}

#[test]
fn the_event_loop_watches_the_queues_once_the_transport_makes_the_device_live() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let irq = Arc::new(MmioInterrupt::new());
    let dev = Arc::new(Mutex::new(
        PvirqDevice::<Mem>::new(vm(&host, 0x100, 8)).unwrap(),
    ));
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    em.add_subscriber(dev.clone());
    let transport =
        MmioTransport::new(dev.clone(), atomic(&mem), irq.clone(), NotifyMode::EventFd).unwrap();
    let mut regs = Regs(transport);
    assert!(bring_up(&mut regs, &drv, feature::V1));
    // The activation event: the loop registers the queue's eventfd.
    em.run_with_timeout(0).unwrap();
    let bufs = drv.send(&alloc(2), &[64]);
    regs.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(drv.used_idx(), 0, "nothing happens inside the notify");
    em.run_with_timeout(0).unwrap();
    assert_eq!(drv.used_idx(), 1);
    assert_eq!(granted(&drv.reply(&bufs, drv.used(0).1)), 2);
    // After a reset the eventfd is the transport's again; the loop stops watching it.
    regs.w(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(regs.0.queue_evts().len(), 2, "both queues' eventfds");
    regs.0.queue_evts()[0].write(1).unwrap();
    em.run_with_timeout(0).unwrap();
    assert_eq!(dev.lock().unwrap().metrics().snapshot().notifications, 1);
}

#[test]
fn the_mmio_transport_is_a_vm_device_bus_device() {
    use vm_device::bus::{MmioAddress, MmioRange};
    use vm_device::device_manager::{IoManager, MmioManager};
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let irq = Arc::new(MmioInterrupt::new());
    let dev = Arc::new(Mutex::new(
        PvirqDevice::<Mem>::new(vm(&host, 0x100, 8)).unwrap(),
    ));
    let transport = Arc::new(Mutex::new(
        MmioTransport::new(dev.clone(), atomic(&mem), irq, NotifyMode::Inline).unwrap(),
    ));
    let base = 0xD000_0000;
    let mut bus = IoManager::new();
    bus.register_mmio(
        MmioRange::new(MmioAddress(base), 0x1000).unwrap(),
        transport.clone(),
    )
    .unwrap();
    let read = |bus: &IoManager, offset: u32| {
        let mut b = [0u8; 4];
        bus.mmio_read(MmioAddress(base + u64::from(offset)), &mut b)
            .unwrap();
        u32::from_le_bytes(b)
    };
    assert_eq!(read(&bus, VIRTIO_MMIO_MAGIC_VALUE), mmio::MMIO_MAGIC);
    assert_eq!(
        read(&bus, VIRTIO_MMIO_DEVICE_ID),
        pvirq_proto::VIRTIO_ID_PVIRQ
    );
    // The same transport through the bus and directly: bring it up directly, send through
    // the bus.
    {
        let mut t = transport.lock().unwrap();
        let mut regs = Regs(std::mem::replace(
            &mut *t,
            MmioTransport::new(
                dev.clone(),
                atomic(&mem),
                Arc::new(MmioInterrupt::new()),
                NotifyMode::Inline,
            )
            .unwrap(),
        ));
        assert!(bring_up(&mut regs, &drv, feature::V1));
        *t = regs.0;
    }
    let bufs = drv.send(&alloc(1), &[64]);
    bus.mmio_write(
        MmioAddress(base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY)),
        &0u32.to_le_bytes(),
    )
    .unwrap();
    assert_eq!(granted(&drv.reply(&bufs, drv.used(0).1)), 1);
}

#[test]
fn every_byte_the_device_writes_is_logged_dirty() {
    type Logged = GuestMemoryMmap<AtomicBitmap>;
    let mem: Logged =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let q = MockSplitQueue::new(&mem, 16);
    let request = alloc(3);
    let (req_at, reply_at) = (0x10_0000u64, 0x20_3000u64);
    mem.write_slice(&request, GuestAddress(req_at)).unwrap();
    let descs = [
        RawDescriptor::from(Descriptor::new(
            req_at,
            request.len() as u32,
            VRING_DESC_F_NEXT as u16,
            1,
        )),
        RawDescriptor::from(Descriptor::new(reply_at, 256, VRING_DESC_F_WRITE as u16, 0)),
    ];
    q.add_desc_chains(&descs, 0).unwrap();
    let region = mem.iter().next().unwrap();
    // Only what the device writes from here on counts.
    let log: &AtomicBitmap = std::ops::Deref::deref(region).bitmap();
    log.reset();
    let host = host();
    let mut dev = PvirqDevice::<GuestMemoryAtomic<Logged>>::new(vm(&host, 0x100, 8)).unwrap();
    dev.ack_features(feature::V1);
    let queue = q.create_queue().unwrap();
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    dev.activate(
        GuestMemoryAtomic::new(mem.clone()),
        Arc::new(MmioInterrupt::new()),
        vec![queue],
        vec![evt],
    )
    .unwrap();
    assert_eq!(dev.process_all().chains, 1);
    let dirty = |addr: u64| log.dirty_at(addr as usize);
    assert!(dirty(reply_at), "the reply's page");
    assert!(dirty(q.used_addr().0), "the used ring's page");
    assert!(!dirty(req_at), "the request is only read");
    assert!(!dirty(0x30_0000), "nothing else");
}

#[test]
fn a_polling_driver_that_asks_for_no_interrupt_gets_none() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut dev, irq) = active_device(vm(&host, 0x100, 8), &mem, &drv.q);
    let flags_at = GuestAddress(drv.q.avail_addr().0);
    mem.write_obj(1u16, flags_at).unwrap(); // VRING_AVAIL_F_NO_INTERRUPT
    drv.send(&alloc(1), &[64]);
    dev.process_all();
    assert_eq!((drv.used_idx(), irq.raised()), (1, 0));
    mem.write_obj(0u16, flags_at).unwrap();
    drv.send(&alloc(1), &[64]);
    dev.process_all();
    assert_eq!((drv.used_idx(), irq.raised()), (2, 1));
}

#[test]
fn a_paused_device_defers_what_arrives_and_resume_handles_it() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut dev, _irq) = active_device(vm(&host, 0x100, 8), &mem, &drv.q);
    dev.pause();
    drv.send(&alloc(1), &[64]);
    assert_eq!(dev.process_all().chains, 0);
    assert_eq!((drv.used_idx(), dev.occupancy().held), (0, 0));
    assert_eq!(dev.resume().chains, 1);
    assert_eq!((drv.used_idx(), dev.occupancy().held), (1, 1));
    assert_eq!(dev.resume().chains, 0, "nothing deferred twice");
}

/// A VM on `host` with two devices of 64 MSI-X entries (requester IDs `base`, `base + 1`).
fn vm_with(host: &ModelHost, base: u16) -> crate::Vm {
    let spec = |requester_id| DeviceSpec {
        requester_id,
        msi_max: 8,
        msix_table_size: 64,
        ims_slots: 64,
        ..DeviceSpec::default()
    };
    host.create_vm(
        VmConfig {
            quota: 32,
            num_vcpus: 2,
            max_batch: 64,
            devices: vec![spec(base), spec(base + 1)],
            ..VmConfig::default()
        },
        Box::new(MemoryRoutes::kvm_like()),
    )
    .unwrap()
}

fn restore_parts(mem: &GuestMemoryMmap) -> RestoreParts<Mem> {
    RestoreParts {
        mem: atomic(mem),
        interrupt: Arc::new(MmioInterrupt::new()),
        queue_evts: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
    }
}

#[test]
fn a_snapshot_restores_mid_workload_and_the_ring_carries_on() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut dev, _irq) = active_device(vm_with(&host, 0x100), &mem, &drv.q);
    drv.send(&alloc(3), &[128]);
    dev.process_all();
    let before = dev.vm().grants(0);
    assert_eq!(before.len(), 3);
    dev.pause();
    let state = dev.save();
    let json = serde_json::to_string(&state).unwrap();
    let state: PvirqDeviceState = serde_json::from_str(&json).unwrap();
    // The VMM tears the source down, then restores on the same host.
    drop(dev);
    assert_eq!(host.occupancy().vectors_used, 0);
    let (mut restored, report) =
        PvirqDevice::restore(vm_with(&host, 0x100), &state, restore_parts(&mem)).unwrap();
    assert!(report.iter().all(|r| r.outcome == Restored::Kept));
    assert_eq!(restored.vm().grants(0), before);
    assert_eq!(restored.acked_features(), feature::V1);
    // The ring continues where it was: the next chain is answered, after the first.
    let bufs = drv.send(&alloc(2), &[64]);
    assert_eq!(restored.process_all().chains, 1);
    assert_eq!(drv.used_idx(), 2);
    assert_eq!(granted(&drv.reply(&bufs, drv.used(1).1)), 2);
    assert_eq!(restored.occupancy().held, 5);
    host.check_invariants().unwrap();
}

#[test]
fn a_hostile_or_unusable_state_is_refused_with_nothing_held() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut dev, _irq) = active_device(vm_with(&host, 0x100), &mem, &drv.q);
    drv.send(&alloc(3), &[128]);
    dev.process_all();
    let good = dev.save();
    assert_eq!(good.vm.devices[0].grants.len(), 3);
    drop(dev);
    let with = |f: fn(&mut PvirqDeviceState)| {
        let mut s = good.clone();
        f(&mut s);
        s
    };
    let cases = [
        (with(|s| s.version = 7), PersistError::UnsupportedVersion(7)),
        (with(|s| s.device_type = 0), PersistError::DeviceType),
        (
            with(|s| s.acked_features |= 1 << 40),
            PersistError::FeaturesNotOffered(1 << 40),
        ),
        (
            with(|s| s.queues.as_mut().unwrap()[0].size = 3),
            PersistError::Queue(0),
        ),
        (
            with(|s| s.queues.as_mut().unwrap()[0].desc_table = 1 << 40),
            PersistError::Activate(ActivateError::QueueInvalid(0)),
        ),
        (
            with(|s| s.vm.devices[0].grants[0].index = 999),
            PersistError::Grants(crate::snapshot::RestoreError::IndexOutOfRange {
                handle: 0,
                kind: Kind::MsiX,
                index: 999,
            }),
        ),
    ];
    for (i, (state, expected)) in cases.iter().enumerate() {
        let err = PvirqDevice::restore(vm_with(&host, 0x100), state, restore_parts(&mem))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(&err, expected, "case {i}");
        assert_eq!(host.occupancy().vectors_used, 0, "case {i}");
    }
    // Another host where the IRTEs the grants had are taken: the guest would have to
    // reprogram, and this driver negotiated no event queue to be told: refused, nothing held.
    let other = crate::model::ModelHost::new(&crate::model::ModelConfig::default()).unwrap();
    let squatter = vm(&other, 0x300, 8);
    let t = [Target::new(0, 0x30); 3];
    let reply = squatter.call(&Request {
        device: 0,
        tag: 0,
        op: Operation::Alloc(Alloc::any(Kind::MsiX, 3, &t)),
    });
    assert_eq!(granted(&reply), 3);
    let err = PvirqDevice::restore(vm_with(&other, 0x100), &good, restore_parts(&mem))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(
        err,
        PersistError::GuestCannotBeTold {
            reprogrammed: 3,
            revoked: 0
        }
    );
    assert_eq!(other.occupancy().vectors_used, 3, "only the squatter's");
    other.check_invariants().unwrap();
}

#[test]
fn the_source_keeps_everything_until_the_migration_is_confirmed() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut dev, _irq) = active_device(vm_with(&host, 0x100), &mem, &drv.q);
    drv.send(&alloc(4), &[128]);
    dev.process_all();
    dev.pause();
    let _state = dev.save();
    // A failed migration resumes with everything.
    assert_eq!(dev.occupancy().held, 4);
    dev.resume();
    drv.send(&alloc(1), &[64]);
    assert_eq!(dev.process_all().chains, 1);
    assert_eq!(dev.occupancy().held, 5);
    // A confirmed one releases everything and stays paused.
    dev.pause();
    assert_eq!(dev.finish_migration(), 5);
    assert_eq!(
        (dev.occupancy().held, host.occupancy().vectors_used),
        (0, 0)
    );
    drv.send(&alloc(1), &[64]);
    assert_eq!(dev.process_all().chains, 0);
    host.check_invariants().unwrap();
}
