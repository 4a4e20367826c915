//! Restoring a device that is not live: the state of a device saved before DRIVER_OK, and
//! the restore a transport that re-activates the device itself asks for.

use super::test_utils::*;
use super::*;
use crate::snapshot::Restored;
use pvirq_proto::{Alloc, Kind, Operation, Outcome, Request, Response, Target, feature};
use std::sync::Arc;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

fn alloc(n: u16) -> Vec<u8> {
    let t: Vec<Target> = (0..n).map(|i| Target::new(1, 0x50 + i as u8)).collect();
    encode(&Request {
        device: 0,
        tag: 9,
        op: Operation::Alloc(Alloc::any(Kind::MsiX, n, &t)),
    })
}

fn granted(reply: &[u8]) -> usize {
    match Response::decode(reply, pvirq_proto::feature::V1)
        .unwrap()
        .outcome
    {
        Outcome::Allocated { grants, .. } => grants.len(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_device_saved_before_driver_ok_keeps_the_features_its_driver_acknowledged() {
    let host = host();
    let mut dev = PvirqDevice::<Mem>::new(vm(&host, 0x100, 8)).unwrap();
    dev.ack_features(feature::VERSION_1 | feature::MSIX);
    let state = dev.save();
    assert!(state.queues.is_none());
    drop(dev);
    let mem = guest_memory();
    let parts = RestoreParts {
        mem: atomic(&mem),
        interrupt: Arc::new(MmioInterrupt::new()),
        queue_evts: vec![],
    };
    let (restored, report) = PvirqDevice::restore(vm(&host, 0x100, 8), &state, parts).unwrap();
    assert!(report.is_empty());
    assert!(!restored.is_activated());
    assert_eq!(
        restored.acked_features(),
        feature::VERSION_1 | feature::MSIX
    );
}

#[test]
fn restored_inactive_the_device_holds_the_grants_and_goes_live_on_the_transports_queues() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut dev, _irq) = active_device(vm(&host, 0x100, 8), &mem, &drv.q);
    drv.send(&alloc(3), &[128]);
    assert_eq!(dev.process_all().chains, 1);
    dev.pause();
    // The transport keeps its own copy of the queue, as cloud-hypervisor's virtio-pci does.
    let transport_queue = dev.queue(0).unwrap().state();
    let state = dev.save();
    let grants = dev.vm().grants(0);
    drop(dev);

    let (mut restored, report) =
        PvirqDevice::<Mem>::restore_inactive(vm(&host, 0x100, 8), &state).unwrap();
    assert!(report.iter().all(|r| r.outcome == Restored::Kept));
    assert!(!restored.is_activated());
    assert_eq!(restored.vm().grants(0), grants);
    assert_eq!(restored.acked_features(), feature::V1);
    // Nothing is processed before the transport activates it again.
    let bufs = drv.send(&alloc(1), &[64]);
    assert_eq!(restored.process_all().chains, 0);
    let queue = Queue::try_from(transport_queue).unwrap();
    restored
        .activate(
            atomic(&mem),
            Arc::new(MmioInterrupt::new()),
            vec![queue],
            vec![EventFd::new(EFD_NONBLOCK).unwrap()],
        )
        .unwrap();
    assert_eq!(restored.process_all().chains, 1);
    assert_eq!(
        drv.used_idx(),
        2,
        "the ring carries on after the first chain"
    );
    assert_eq!(granted(&drv.reply(&bufs, drv.used(1).1)), 1);
    assert_eq!(restored.occupancy().held, 4);
    host.check_invariants().unwrap();
}
