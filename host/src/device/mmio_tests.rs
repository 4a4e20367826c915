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
            !bring_up_with(&mut regs, &drv, feature::ALL, bad),
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
        assert!(bring_up_with(&mut regs, &drv, feature::ALL, 16));
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
        assert!(bring_up_with(
            &mut regs,
            &drv,
            feature::ALL,
            u32::from(size)
        ));
        assert_eq!(regs.0.device().lock().unwrap().queue().size(), size);
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
