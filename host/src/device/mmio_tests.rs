//! The virtio-mmio front against virtio 1.2 §4.2.2: queue size, status bits, and stopping
//! the queue after DRIVER_OK.

use super::test_utils::*;
use super::*;
use pvirq_proto::{Operation, Request, feature};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_queue::QueueT;

fn reset_request() -> Vec<u8> {
    encode(&Request {
        device: 0,
        tag: 5,
        op: Operation::Reset,
    })
}

/// QueueNum is write-only on virtio-mmio, so the driver cannot read back a corrected size:
/// a size the device cannot use (0, not a power of two, above QueueNumMax) makes DRIVER_OK
/// fail with DEVICE_NEEDS_RESET, and the device never touches the ring.
#[test]
fn a_queue_size_the_device_cannot_use_fails_driver_ok_with_needs_reset() {
    for bad in [0, 3, 24, 512, 0x1_0010] {
        let host = host();
        let mem = guest_memory();
        let mut drv = Driver::new(&mem, 16);
        let (mut regs, irq) = mmio(&mem, &host, NotifyMode::Inline);
        assert!(
            !bring_up_with(&mut regs, &drv, feature::V1, bad),
            "QueueNum {bad}"
        );
        let status = regs.r(VIRTIO_MMIO_STATUS);
        assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0, "QueueNum {bad}");
        assert_ne!(irq.status() & VIRTIO_MMIO_INT_CONFIG, 0, "QueueNum {bad}");
        assert!(!regs.0.device().lock().unwrap().is_activated());
        drv.send(&reset_request(), &[24]);
        regs.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(drv.used_idx(), 0, "QueueNum {bad}: the ring was used");
        // A reset and a size the driver really laid out bring it up.
        assert!(bring_up_with(&mut regs, &drv, feature::V1, 16));
        regs.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(drv.used_idx(), 1, "QueueNum {bad}, then 16");
    }
}

#[test]
fn every_power_of_two_up_to_queue_num_max_is_used_as_written() {
    for size in [1u16, 2, 64, 256] {
        let host = host();
        let mem = guest_memory();
        let mut drv = Driver::new(&mem, size);
        let (mut regs, _irq) = mmio(&mem, &host, NotifyMode::Inline);
        assert!(bring_up_with(&mut regs, &drv, feature::V1, u32::from(size)));
        assert_eq!(
            regs.0.device().lock().unwrap().queue(0).unwrap().size(),
            size
        );
        if size == 1 {
            continue; // a pvirq chain needs two descriptors
        }
        drv.send(&reset_request(), &[24]);
        regs.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(drv.used_idx(), 1);
    }
}

/// Only the driver's status bits are kept: ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK and
/// FAILED. Reserved bits (16, 32, 256 and up) and DEVICE_NEEDS_RESET, which only the device
/// sets, read back clear.
#[test]
fn the_status_register_keeps_no_reserved_bit() {
    let host = host();
    let mem = guest_memory();
    let (mut regs, _irq) = mmio(&mem, &host, NotifyMode::Inline);
    let reserved = 0x10 | 0x20 | 0xFFFF_FF00;
    regs.w(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | reserved | VIRTIO_CONFIG_S_NEEDS_RESET,
    );
    assert_eq!(regs.r(VIRTIO_MMIO_STATUS), VIRTIO_CONFIG_S_ACKNOWLEDGE);
    regs.w(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | 0x20,
    );
    assert_eq!(
        regs.r(VIRTIO_MMIO_STATUS),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
    );
    regs.set_status(VIRTIO_CONFIG_S_FAILED);
    assert_eq!(
        regs.r(VIRTIO_MMIO_STATUS),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FAILED
    );
}

mod queue_ready {
    use super::super::virtio_drivers_shim::{GuestHal, RegsTransport};
    use super::*;
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use pvirq_proto::{Alloc, Kind, Outcome, Response, Target};
    use std::sync::{Arc, Mutex};
    use virtio_drivers::queue::VirtQueue;
    use virtio_drivers::transport::{DeviceStatus, Transport};
    use vm_memory::{Bytes, GuestAddress};

    const DRIVER_MEMORY: u64 = 2 << 20;

    /// `virtio-drivers`' initialisation with the pvirq features its `begin_init` cannot
    /// express (its feature type has no device-specific bits), then its real `VirtQueue`.
    fn init(t: &mut RegsTransport, features: u64) -> VirtQueue<GuestHal, 16> {
        t.set_status(DeviceStatus::empty());
        t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        assert_eq!(t.read_device_features() & features, features);
        t.write_driver_features(features);
        t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
        assert!(t.get_status().contains(DeviceStatus::FEATURES_OK));
        let q = VirtQueue::new(t, 0, false, false).unwrap();
        t.finish_init();
        assert!(t.get_status().contains(DeviceStatus::DRIVER_OK));
        assert!(!t.get_status().contains(DeviceStatus::DEVICE_NEEDS_RESET));
        q
    }

    fn call(q: &mut VirtQueue<GuestHal, 16>, t: &mut RegsTransport, request: &[u8]) -> Vec<u8> {
        let mut reply = [0u8; 24 + 16 * 4];
        let len = q
            .add_notify_wait_pop(&[request], &mut [&mut reply], t)
            .unwrap();
        reply[..len as usize].to_vec()
    }

    fn alloc_two() -> Vec<u8> {
        let targets = [Target::new(0, 0x40), Target::new(1, 0x41)];
        encode(&Request {
            device: 0,
            tag: 2,
            op: Operation::Alloc(Alloc::any(Kind::MsiX, 2, &targets)),
        })
    }

    /// What every `virtio-drivers` driver does in `Drop`: QueueReady ← 0, spin until it reads
    /// 0, clear the queue registers, free the ring. The device reads 0 at once, never touches
    /// the ring again, keeps the VM's grants (they are the VM's, not the queue's), and does
    /// not let the queue come back without a device reset.
    #[test]
    fn virtio_drivers_queue_unset_stops_the_queue_and_keeps_the_grants() {
        let host = host();
        let mem = guest_memory();
        GuestHal::install(&mem, DRIVER_MEMORY);
        let (regs, irq) = mmio(&mem, &host, NotifyMode::Inline);
        let mut t = RegsTransport(regs);
        let mut q = init(&mut t, feature::VERSION_1 | feature::MSIX);
        let reply = call(&mut q, &mut t, &alloc_two());
        let Outcome::Allocated { grants, .. } =
            Response::decode(&reply, feature::V1).unwrap().outcome
        else {
            panic!("refused: {reply:?}");
        };
        let message = grants.get(1).unwrap().message();
        let device = t.0.0.device().clone();
        let (desc, avail, used) = {
            let d = device.lock().unwrap();
            let q = d.queue(0).unwrap();
            (q.desc_table(), q.avail_ring(), q.used_ring())
        };
        let used_before = {
            let mut b = vec![0u8; 4 + 8 * 16];
            mem.read_slice(&mut b, GuestAddress(used)).unwrap();
            b
        };

        t.queue_unset(0);
        assert!(!t.queue_used(0));
        drop(q);

        // The driver reuses the freed ring memory: a request that would be valid, and an
        // avail index no ring could have. The device must not look at either.
        let request = reset_request();
        mem.write_slice(&request, GuestAddress(DATA)).unwrap();
        let chain: [u64; 2] = [DATA | u64::from(request.len() as u32) << 32, 0];
        mem.write_obj(chain, GuestAddress(desc)).unwrap();
        mem.write_obj(0x7777u16, GuestAddress(avail + 2)).unwrap();
        let descriptors = device.lock().unwrap().metrics().snapshot().descriptors;
        t.notify(0);
        let mut used_after = vec![0u8; used_before.len()];
        mem.read_slice(&mut used_after, GuestAddress(used)).unwrap();
        assert_eq!(
            used_after, used_before,
            "the used ring was written after unset"
        );
        let d = device.lock().unwrap();
        assert_eq!(d.metrics().snapshot().descriptors, descriptors);
        assert!(!d.needs_reset(), "the stopped ring was read");
        // The grants outlive the queue: the interrupts the driver programmed still arrive.
        assert_eq!(d.occupancy().held, 2);
        drop(d);
        assert_eq!(
            host.fire(0x100, message).unwrap().to().map(|t| t.1),
            Some(0x41)
        );

        // Making the queue ready again without a device reset is not supported: it stays
        // stopped and the device asks for a reset.
        t.0.w(VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(t.0.r(VIRTIO_MMIO_QUEUE_READY), 0);
        assert_ne!(t.0.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_ne!(irq.status() & VIRTIO_MMIO_INT_CONFIG, 0);

        // The device reset frees the grants; a new driver brings the device up again.
        let mut q = init(&mut t, feature::VERSION_1 | feature::MSIX);
        assert_eq!(device.lock().unwrap().occupancy().held, 0);
        assert!(host.fire(0x100, message).is_err());
        let reply = call(&mut q, &mut t, &alloc_two());
        assert!(matches!(
            Response::decode(&reply, feature::V1).unwrap().outcome,
            Outcome::Allocated { .. }
        ));
        t.queue_unset(0);
        host.check_invariants().unwrap();
    }

    /// With an event loop, a chain made available before QueueReady ← 0 but not yet taken is
    /// never taken: once the driver reads 0, nothing of the ring is read or written.
    #[test]
    fn a_chain_not_yet_taken_when_the_queue_stops_is_never_touched() {
        let host = host();
        let mem = guest_memory();
        let mut drv = Driver::new(&mem, 16);
        let (mut regs, _irq) = mmio(&mem, &host, NotifyMode::EventFd);
        assert!(bring_up(&mut regs, &drv, feature::V1));
        drv.send(&reset_request(), &[24]);
        regs.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        regs.w(VIRTIO_MMIO_QUEUE_READY, 0);
        assert_eq!(regs.r(VIRTIO_MMIO_QUEUE_READY), 0);
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        em.add_subscriber(regs.0.device().clone());
        em.run_with_timeout(0).unwrap();
        assert_eq!(drv.used_idx(), 0);
        let d = regs.0.device().lock().unwrap();
        assert_eq!(d.metrics().snapshot().descriptors, 0);
        assert!(!d.needs_reset());
    }
}
