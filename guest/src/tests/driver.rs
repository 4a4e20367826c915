//! The driver against a well-behaved fake device: initialisation, the blocking API,
//! several requests in flight, polling and the interrupt path.

use super::fake::{FakeDevice, memory};
use crate::test_utils::GuestMemoryHal;
use crate::transport::status;
use crate::{Driver, Error, MmioTransport, Options, Token};
use pvirq_proto::{
    Alloc, Grant, IndexRange, IndexSpec, Kind, Negotiated, Opcode, Operation, Outcome, Refusal,
    RemappableMsi, Request, Resource, Target, Targeting, feature,
};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

/// Room for a QUERY reply (header and body), the largest reply the tests take by hand.
pub(crate) const REPLY: usize = pvirq_proto::RESPONSE_HEADER_LEN + 24;

pub(crate) type TestDriver<'d> = Driver<GuestMemoryHal, MmioTransport<&'d FakeDevice>, 4>;

pub(crate) fn hal(dev: &FakeDevice) -> GuestMemoryHal {
    let mem = dev.with(|s| s.mem.clone());
    GuestMemoryHal::new(mem, GuestAddress(0x10_0000), 6 << 20)
}

pub(crate) fn driver_with(dev: &FakeDevice, options: Options) -> Result<TestDriver<'_>, Error> {
    Driver::new(hal(dev), MmioTransport::new(dev)?, options)
}

pub(crate) fn driver(dev: &FakeDevice) -> TestDriver<'_> {
    driver_with(dev, Options::default()).expect("driver initialises")
}

pub(crate) fn targets(n: u32) -> std::vec::Vec<Target> {
    (0..n)
        .map(|i| Target::new(i % 4, 0x30 + (i % 0xc0) as u8))
        .collect()
}

/// A way to break the fake device, and the error the driver must answer with.
type Breakage = (fn(&mut super::fake::State), Error);

#[test]
fn initialisation_negotiates_features_and_sets_driver_ok() {
    let dev = FakeDevice::new(memory());
    dev.with(|s| s.offered = feature::V1 | 1 << 40 | 1 << 7);
    let d = driver(&dev);
    let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    dev.with(|s| {
        assert_eq!(s.status, u32::from(all));
        assert_eq!(
            s.driver_features,
            feature::V1,
            "undefined bits are not accepted"
        );
        assert!(s.queue.ready());
        assert_eq!(s.queue.size(), 8, "4 slots of 2 descriptors");
    });
    assert_eq!(d.features(), feature::V1);
    assert_eq!(d.config().num_vcpus, 4);
    assert_eq!(d.config().vm_quota, 32);
    assert_eq!(d.max_batch(), 64);
    assert_eq!(d.slots(), 4);
}

#[test]
fn features_are_the_intersection_and_pasid_needs_ims() {
    let dev = FakeDevice::new(memory());
    dev.with(|s| s.offered = feature::VERSION_1 | feature::MSIX | feature::PASID);
    let options = Options {
        features: feature::V1 & !feature::MSI,
        ..Options::default()
    };
    let d = driver_with(&dev, options).unwrap();
    assert_eq!(d.features(), feature::VERSION_1 | feature::MSIX);
}

#[test]
fn a_device_the_driver_cannot_use_is_refused_and_marked_failed() {
    let cases: [Breakage; 6] = [
        (
            |s| s.config.version = 2.into(),
            Error::UnsupportedVersion(2),
        ),
        (
            |s| s.offered = feature::MSIX,
            Error::NotModern(feature::MSIX),
        ),
        (
            |s| s.accept_features = false,
            Error::FeaturesRejected(feature::V1),
        ),
        (
            |s| s.config.max_batch = 0.into(),
            Error::BadConfig { max_batch: 0 },
        ),
        (|s| s.queue_num_max = 1, Error::QueueUnavailable(1)),
        (
            |s| s.config.max_batch = 5000.into(),
            Error::BadConfig { max_batch: 5000 },
        ),
    ];
    for (break_it, expected) in cases {
        let dev = FakeDevice::new(memory());
        dev.with(break_it);
        assert_eq!(driver_with(&dev, Options::default()).unwrap_err(), expected);
        dev.with(|s| {
            assert_ne!(s.status & u32::from(status::FAILED), 0, "{expected}");
            assert_eq!(s.status & u32::from(status::DRIVER_OK), 0, "{expected}");
        });
    }
}

#[test]
fn the_mmio_transport_checks_magic_version_and_device_id() {
    let cases: [Breakage; 3] = [
        (|s| s.magic = 0x1234, Error::BadMagic(0x1234)),
        (|s| s.mmio_version = 1, Error::UnsupportedMmioVersion(1)),
        (|s| s.device_id = 0, Error::NoDevice),
    ];
    for (break_it, expected) in cases {
        let dev = FakeDevice::new(memory());
        dev.with(break_it);
        assert_eq!(MmioTransport::new(&dev).unwrap_err(), expected);
    }
}

#[test]
fn a_small_device_queue_means_fewer_slots() {
    let dev = FakeDevice::new(memory());
    dev.with(|s| s.queue_num_max = 6);
    let d = driver(&dev);
    assert_eq!(d.slots(), 2);
    dev.with(|s| assert_eq!(s.queue.size(), 4));
}

#[test]
fn query_returns_the_device_limits() {
    let dev = FakeDevice::new(memory());
    let mut d = driver(&dev);
    let q = d.query(1).unwrap();
    assert_eq!(q.info.msix_table_size, 64);
    assert_eq!(q.info.available, 32);
    assert_eq!(q.quota_remaining, 32);
    dev.with(|s| {
        assert_eq!(s.requests.len(), 1);
        assert_eq!(
            s.requests[0].len(),
            16,
            "readable part is exactly the request"
        );
        assert_eq!(s.writable[0], 48, "writable part is the largest reply");
        let r = Request::decode(&s.requests[0], Negotiated::v1(64)).unwrap();
        assert_eq!((r.device, r.op), (1, Operation::Query));
    });
}

#[test]
fn alloc_returns_one_grant_per_target_with_its_message() {
    let dev = FakeDevice::new(memory());
    let mut d = driver(&dev);
    let t = targets(4);
    let mut grants = [Grant::new(0, Default::default()); 8];
    let alloc = Alloc {
        kind: Kind::MsiX,
        index: IndexSpec::At(10),
        min: 2,
        max: 4,
        pasid: None,
        targets: &t,
        targeting: Targeting::PerVector,
    };
    let a = d.alloc(0, alloc, &mut grants).unwrap();
    assert_eq!(a.grants.len(), 4);
    assert_eq!(a.quota_remaining, 28);
    for (i, g) in a.grants.iter().enumerate() {
        assert_eq!(g.index(), 10 + i as u32);
        let msi = RemappableMsi::decode(g.message()).unwrap();
        assert_eq!(u32::from(msi.handle), g.index());
    }
    dev.with(|s| {
        assert_eq!(s.writable[0], 24 + 4 * 16);
        let r = Request::decode(&s.requests[0], Negotiated::v1(64)).unwrap();
        assert_eq!(r.op, Operation::Alloc(alloc));
    });
}

#[test]
fn linux_shaped_helpers_fill_in_the_request() {
    let dev = FakeDevice::new(memory());
    let mut d = driver(&dev);
    let mut grants = [Grant::new(0, Default::default()); 3];
    let a = d
        .alloc_irq_vectors(0, Kind::MsiX, 1, &targets(3), &mut grants)
        .unwrap();
    assert_eq!(a.grants.len(), 3);
    let g = d
        .alloc_irq_at(
            1,
            Kind::Ims,
            IndexSpec::At(7),
            Target::new(2, 0x40),
            Some(0x55),
        )
        .unwrap();
    assert_eq!(g.index(), 7);
    dev.with(|s| {
        let r = Request::decode(&s.requests[1], Negotiated::v1(64)).unwrap();
        let Operation::Alloc(a) = r.op else { panic!() };
        assert_eq!(
            (a.kind, a.pasid, a.min, a.max),
            (Kind::Ims, Some(0x55), 1, 1)
        );
    });
}

#[test]
fn no_space_is_a_typed_refusal_with_a_fallback_count() {
    let dev = FakeDevice::new(memory());
    dev.with(|s| s.available = 3);
    let mut d = driver(&dev);
    let t = targets(8);
    let mut grants = [Grant::new(0, Default::default()); 8];
    let alloc = Alloc::any(Kind::MsiX, 4, &t);
    let err = d.alloc(0, alloc, &mut grants).unwrap_err();
    assert_eq!(
        err,
        Error::Refused {
            opcode: Opcode::Alloc,
            refusal: Refusal::NoSpace {
                resource: Resource::VmQuota,
                available: 3
            }
        }
    );
    assert_eq!(err.exhausted(), Some(Resource::VmQuota));
    assert!(!err.is_device_fault());
    let fallback = err.fallback_count().unwrap();
    assert_eq!(fallback, 3);
    // Fall back like a Linux driver: accept fewer vectors.
    let retry = Alloc {
        min: fallback,
        targeting: Targeting::PerVector,
        ..alloc
    };
    assert_eq!(d.alloc(0, retry, &mut grants).unwrap().grants.len(), 3);
    // Nothing left: no fallback count, share vectors instead.
    let err = d.alloc(0, alloc, &mut grants).unwrap_err();
    assert_eq!(err.fallback_count(), None);
}

#[test]
fn free_retarget_and_reset_report_their_counts() {
    let dev = FakeDevice::new(memory());
    let mut d = driver(&dev);
    let mut grants = [Grant::new(0, Default::default()); 4];
    d.alloc_irq_vectors(0, Kind::MsiX, 4, &targets(4), &mut grants)
        .unwrap();
    let range = IndexRange {
        kind: Kind::MsiX,
        first: 0,
        count: 2,
    };
    let moved = d.retarget(0, range, &targets(2)).unwrap();
    assert_eq!(moved.count, 2);
    let freed = d.free(0, range).unwrap();
    assert_eq!((freed.count, freed.quota_remaining), (2, 30));
    let reset = d.reset_device(0).unwrap();
    assert_eq!((reset.count, reset.quota_remaining), (2, 32));
}

#[test]
fn requests_the_driver_cannot_carry_are_refused_before_submission() {
    let dev = FakeDevice::new(memory());
    let mut d = driver(&dev);
    let t = targets(65);
    let mut grants = [Grant::new(0, Default::default()); 65];
    let too_many = Alloc::any(Kind::MsiX, 1, &t);
    assert_eq!(
        d.alloc(0, too_many, &mut grants).unwrap_err(),
        Error::BatchTooLarge {
            count: 65,
            max_batch: 64
        }
    );
    let short = Alloc {
        max: 4,
        targets: &t[..4],
        targeting: Targeting::PerVector,
        ..too_many
    };
    assert_eq!(
        d.alloc(0, short, &mut grants[..2]).unwrap_err(),
        Error::GrantBufferTooSmall { needed: 4, got: 2 }
    );
    let mismatched = Alloc {
        max: 4,
        targets: &t[..3],
        targeting: Targeting::PerVector,
        ..too_many
    };
    assert!(matches!(
        d.alloc(0, mismatched, &mut grants).unwrap_err(),
        Error::Encode(_)
    ));
    let bad_msi = Alloc {
        kind: Kind::Msi,
        max: 3,
        targets: &t[..3],
        targeting: Targeting::PerVector,
        ..too_many
    };
    assert!(matches!(
        d.submit(0, Operation::Alloc(bad_msi)).unwrap_err(),
        Error::Encode(_)
    ));
    dev.with(|s| assert!(s.requests.is_empty()));
    assert_eq!(d.in_flight(), 0);
}

#[test]
fn several_requests_in_flight_complete_out_of_order() {
    let dev = FakeDevice::new(memory());
    dev.with(|s| {
        s.auto = false;
        s.reverse = true;
    });
    let mut d = driver(&dev);
    let mut reply = [0; REPLY];
    let tokens: std::vec::Vec<Token> = (0..4)
        .map(|device| d.submit(device, Operation::Query).unwrap())
        .collect();
    assert_eq!(d.submit(0, Operation::Query).unwrap_err(), Error::QueueFull);
    assert_eq!(d.in_flight(), 4);
    for &t in &tokens {
        assert!(d.take(t, &mut reply).unwrap().is_none(), "not complete yet");
    }
    assert_eq!(dev.process(), 4);
    assert_eq!(d.poll().unwrap(), 4);
    // Take them in yet another order; each response belongs to its own request.
    for (device, &t) in tokens.iter().enumerate().rev() {
        let r = d.take(t, &mut reply).unwrap().unwrap();
        assert_eq!(r.device, device as u32);
        assert_eq!(r.tag, t.tag());
        assert!(matches!(r.outcome, Outcome::Queried { .. }));
    }
    assert_eq!(d.in_flight(), 0);
    assert_eq!(
        d.take(tokens[0], &mut reply).unwrap_err(),
        Error::StaleToken
    );
    // The slots are reusable, and old tokens do not name the new requests.
    let again = d.submit(0, Operation::Query).unwrap();
    assert_eq!(again.slot(), tokens[0].slot());
    assert_eq!(
        d.take(tokens[0], &mut reply).unwrap_err(),
        Error::StaleToken
    );
    dev.process();
    assert!(d.wait(again, &mut reply).is_ok());
}

#[test]
fn a_reply_buffer_too_small_for_the_request_leaves_its_completion_to_take() {
    let dev = FakeDevice::new(memory());
    let mut d = driver(&dev);
    assert_eq!(
        d.max_reply_len(),
        24 + 64 * 16,
        "header and max_batch grants"
    );
    let t = targets(4);
    let alloc = Alloc::any(Kind::MsiX, 1, &t);
    let token = d.submit(0, Operation::Alloc(alloc)).unwrap();
    d.poll().unwrap();
    let needed = 24 + 4 * 16;
    for got in [0, 10, needed - 1] {
        let mut small = std::vec![0; got];
        assert_eq!(
            d.take(token, &mut small).unwrap_err(),
            Error::ReplyBufferTooSmall { needed, got }
        );
        assert!(d.is_complete(token).unwrap(), "still there to take");
    }
    let mut reply = std::vec![0; d.max_reply_len()];
    let r = d.take(token, &mut reply).unwrap().unwrap();
    assert!(matches!(r.outcome, Outcome::Allocated { grants, .. } if grants.len() == 4));
    assert_eq!(d.in_flight(), 0);
}

#[test]
fn the_interrupt_path_acknowledges_and_drains() {
    let dev = FakeDevice::new(memory());
    dev.with(|s| s.auto = false);
    let mut d = driver(&dev);
    let mut reply = [0; REPLY];
    let a = d.submit(0, Operation::Query).unwrap();
    let b = d.submit(1, Operation::Reset).unwrap();
    dev.process();
    dev.with(|s| assert_eq!(s.interrupt_status, 1));
    let st = d.handle_interrupt().unwrap();
    assert!(st.used_buffer && !st.config_changed);
    assert_eq!(st.completed, 2);
    dev.with(|s| assert_eq!(s.interrupt_status, 0, "acknowledged"));
    assert!(d.is_complete(a).unwrap() && d.is_complete(b).unwrap());
    assert!(d.take(b, &mut reply).unwrap().is_some());
    assert!(d.take(a, &mut reply).unwrap().is_some());
    let st = d.handle_interrupt().unwrap();
    assert_eq!((st.used_buffer, st.completed), (false, 0));
}

#[test]
fn a_blocking_wait_times_out_and_can_be_resumed() {
    let dev = FakeDevice::new(memory());
    dev.with(|s| s.auto = false);
    let options = Options {
        spin_limit: Some(100),
        ..Options::default()
    };
    let mut d = driver_with(&dev, options).unwrap();
    let mut reply = [0; REPLY];
    let t = d.submit(0, Operation::Query).unwrap();
    assert_eq!(d.wait(t, &mut reply).unwrap_err(), Error::Timeout);
    dev.process();
    assert!(d.wait(t, &mut reply).is_ok());
}

#[test]
fn notifications_follow_the_device_s_no_notify_flag() {
    let dev = FakeDevice::new(memory());
    let mut d = driver(&dev);
    let mut reply = [0; REPLY];
    d.query(0).unwrap();
    dev.with(|s| assert_eq!(s.notifies, 1));
    dev.with(|s| {
        let mem = s.mem.clone();
        s.queue.disable_notification(&mem).unwrap();
        s.auto = false;
    });
    let t = d.submit(0, Operation::Query).unwrap();
    dev.with(|s| assert_eq!(s.notifies, 1, "device asked not to be notified"));
    dev.process();
    d.wait(t, &mut reply).unwrap();
}

#[test]
fn interrupt_suppression_reaches_the_device() {
    let dev = FakeDevice::new(memory());
    let mut d = driver(&dev);
    // rust-vmm's queue ignores VRING_AVAIL_F_NO_INTERRUPT, so read the flag raw.
    let avail_flags = || {
        dev.with(|s| {
            let addr = GuestAddress(s.queue.avail_ring());
            u16::from_le(s.mem.read_obj(addr).unwrap())
        })
    };
    assert_eq!(avail_flags(), 0);
    d.set_interrupts(false);
    assert_eq!(avail_flags(), 1);
    d.query(0).unwrap();
    d.set_interrupts(true);
    assert_eq!(avail_flags(), 0);
}

#[test]
fn many_requests_wrap_the_ring_indices() {
    let dev = FakeDevice::new(memory());
    let mut d = driver(&dev);
    let mut reply = [0; REPLY];
    for i in 0..70_000u32 {
        let device = i % 2;
        let r = d.call(device, Operation::Query, &mut reply).unwrap();
        assert_eq!(r.device, device);
    }
    let idx = dev.with(|s| s.queue.next_used());
    assert_eq!(idx, (70_000u32 % 65_536) as u16);
}

#[test]
fn dropping_the_driver_resets_the_device() {
    let dev = FakeDevice::new(memory());
    let d = driver(&dev);
    drop(d);
    dev.with(|s| {
        assert_eq!(s.status, 0);
        assert!(!s.queue.ready());
    });
}

#[test]
fn a_large_max_batch_fits_its_buffers() {
    let dev = FakeDevice::new(memory());
    dev.with(|s| {
        s.config.max_batch = 4096.into();
        s.available = 4096;
    });
    let mut d = driver(&dev);
    let t = targets(4096);
    let mut grants = std::vec![Grant::new(0, Default::default()); 4096];
    let a = d
        .alloc_irq_vectors(0, Kind::Ims, 4096, &t, &mut grants)
        .unwrap();
    assert_eq!(a.grants.len(), 4096);
    assert_eq!(a.grants[4095].index(), 4095);
}

#[test]
fn byte_wise_registers_drive_the_device_too() {
    use crate::MmioRegs;
    use crate::test_utils::ByteRegs;
    let dev = FakeDevice::new(memory());
    let regs = ByteRegs::new(
        |offset, data: &mut [u8]| match data.len() {
            4 => data.copy_from_slice(&dev.read32(offset as usize).to_le_bytes()),
            2 => data.copy_from_slice(&dev.read16(offset as usize).to_le_bytes()),
            n => panic!("{n}-byte read"),
        },
        |offset, data: &[u8]| {
            let value = u32::from_le_bytes(data.try_into().expect("32-bit write"));
            dev.write32(offset as usize, value)
        },
    );
    let mut d: Driver<_, _, 2> = Driver::new(
        hal(&dev),
        MmioTransport::new(regs).unwrap(),
        Options::default(),
    )
    .unwrap();
    assert_eq!(d.query(0).unwrap().info.ims_slots, 128);
}

#[test]
fn volatile_mmio_stays_inside_its_window() {
    use crate::{MmioRegs, VolatileMmio};
    let mut window = [0u32; 4];
    let base = core::ptr::NonNull::new(window.as_mut_ptr().cast::<u8>()).unwrap();
    // SAFETY: `window` outlives `regs` and is only accessed through it meanwhile.
    let regs = unsafe { VolatileMmio::new(base, 16) };
    regs.write32(4, 0x1234_5678);
    assert_eq!(regs.read32(4), 0x1234_5678);
    assert_eq!(regs.read16(6), 0x1234);
    assert_eq!(regs.read32(16), u32::MAX, "outside the window");
    assert_eq!(regs.read32(2), u32::MAX, "misaligned");
    regs.write32(14, 1);
    regs.write32(16, 1);
    assert_eq!(window, [0, 0x1234_5678, 0, 0]);
}
