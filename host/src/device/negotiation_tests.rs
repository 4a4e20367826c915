//! Negotiation and the two queues through the virtio-mmio front (spec §2.2, §2.3): what is
//! offered, FEATURES_OK refused for a set that breaks a dependency ([DEV-23]), the event
//! queue's size and when DRIVER_OK needs it, and a version-1 driver against the device
//! with both queues ([DEV-24]).

use super::test_utils::*;
use super::*;
use crate::model::{ModelConfig, ModelHost};
use pvirq_proto::{
    Alloc, Event, EventBody, IndexRange, IndexSpec, Kind, Operation, Request, Retarget, Target,
    Targeting, feature,
};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress};

fn offered(regs: &mut Regs) -> u64 {
    regs.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let lo = regs.r(VIRTIO_MMIO_DEVICE_FEATURES);
    regs.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    let hi = regs.r(VIRTIO_MMIO_DEVICE_FEATURES);
    u64::from(hi) << 32 | u64::from(lo)
}

#[test]
fn features_ok_is_refused_for_a_set_that_breaks_a_dependency() {
    let host = host();
    let mem = guest_memory();
    let req = Driver::new(&mem, 16);
    let evt = EventDriver::new(&mem, 8);
    let (mut regs, _irq) = mmio(&mem, &host, NotifyMode::Inline);
    let offer = offered(&mut regs);
    for (bit, needs) in feature::DEPENDENCIES {
        if offer & bit == 0 {
            assert_eq!(bit, feature::POSTED, "only POSTED is not offered here");
            continue;
        }
        assert!(
            !bring_up_events(&mut regs, &req, &evt, feature::VERSION_1 | bit, Some(8)),
            "{bit:#x} without {needs:#x}"
        );
        assert_eq!(
            regs.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0,
            "{bit:#x}: FEATURES_OK reads back clear"
        );
        assert!(
            bring_up_events(
                &mut regs,
                &req,
                &evt,
                feature::VERSION_1 | bit | needs,
                Some(8)
            ),
            "{bit:#x} with {needs:#x}"
        );
    }
    // Everything offered at once is a valid set.
    assert!(bring_up_events(&mut regs, &req, &evt, offer, Some(8)));
}

#[test]
fn posted_and_access_platform_are_offered_only_where_they_apply() {
    let mem = guest_memory();
    let req = Driver::new(&mem, 16);
    let evt = EventDriver::new(&mem, 8);
    let host = host();
    let (mut regs, _irq) = mmio(&mem, &host, NotifyMode::Inline);
    let offer = offered(&mut regs);
    assert_eq!(offer & (feature::POSTED | feature::ACCESS_PLATFORM), 0);
    let extensions = feature::EXTENSIONS & !feature::POSTED & !feature::ACCESS_PLATFORM;
    assert_eq!(offer & extensions, extensions, "bits 5-12 but POSTED");
    let with = |extra| feature::V1 | feature::INFO | extra;
    assert!(!bring_up_events(
        &mut regs,
        &req,
        &evt,
        with(feature::POSTED),
        None
    ));
    assert!(!bring_up_events(
        &mut regs,
        &req,
        &evt,
        with(feature::ACCESS_PLATFORM),
        None
    ));
    // The VMM says the VM is confidential: offered from now on, across resets.
    regs.0.device().lock().unwrap().set_access_platform(true);
    assert_ne!(offered(&mut regs) & feature::ACCESS_PLATFORM, 0);
    assert!(bring_up_events(
        &mut regs,
        &req,
        &evt,
        with(feature::ACCESS_PLATFORM),
        None
    ));
    regs.w(VIRTIO_MMIO_STATUS, 0);
    assert_ne!(offered(&mut regs) & feature::ACCESS_PLATFORM, 0);

    // A host whose remapping hardware posts offers POSTED.
    let posting = ModelHost::new(&ModelConfig {
        posted: true,
        ..ModelConfig::default()
    })
    .unwrap();
    let dev = PvirqDevice::<Mem>::new(vm(&posting, 0x100, 8)).unwrap();
    assert_ne!(dev.avail_features() & feature::POSTED, 0);
}

#[test]
fn the_event_queue_is_needed_at_driver_ok_only_with_the_event_feature() {
    let host = host();
    let mem = guest_memory();
    let req = Driver::new(&mem, 16);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut regs, irq) = mmio(&mem, &host, NotifyMode::Inline);
    regs.w(VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(regs.r(VIRTIO_MMIO_QUEUE_NUM_MAX), 64);
    regs.w(VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(regs.r(VIRTIO_MMIO_QUEUE_NUM_MAX), 0, "two queues");
    // EVENTS negotiated: no event queue, or one of a size it cannot use, is NEEDS_RESET.
    for bad in [None, Some(128), Some(3), Some(0)] {
        assert!(
            !bring_up_events(&mut regs, &req, &evt, WITH_EVENTS, bad),
            "{bad:?}"
        );
        assert_ne!(regs.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_ne!(irq.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    }
    // Not negotiated: the event queue's registers do not matter.
    assert!(bring_up_events(
        &mut regs,
        &req,
        &evt,
        feature::V1,
        Some(128)
    ));
    assert!(bring_up_events(
        &mut regs,
        &req,
        &evt,
        WITH_EVENTS,
        Some(64)
    ));
    // Live: events arrive on queue 1 through its notification, and the configuration
    // generation moves with the quota.
    let generation = regs.r(VIRTIO_MMIO_CONFIG_GENERATION);
    regs.0.device().lock().unwrap().set_quota(5);
    assert_eq!(
        regs.r(VIRTIO_MMIO_CONFIG_GENERATION),
        generation.wrapping_add(1)
    );
    assert_ne!(irq.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    evt.give(1);
    regs.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert_eq!(
        evt.events(),
        [Event {
            sequence: 1,
            body: EventBody::Limits {
                device: None,
                limit: 5
            }
        }]
    );
    assert_ne!(irq.status() & VIRTIO_MMIO_INT_VRING, 0);
}

/// [DEV-24]: a driver that negotiates none of the extensions sets up queue 0 alone and gets
/// version 1's bytes, compared here with the same requests answered by the VM core under
/// version 1's features on a twin host; and nothing the VMM changes reaches it until a
/// reset, nor does the device ever touch the event queue's memory.
#[test]
fn a_version_1_driver_sets_up_the_request_queue_alone_and_gets_version_1_bytes() {
    let (host, twin_host) = (host(), host());
    let twin = vm(&twin_host, 0x100, 16);
    let mem = guest_memory();
    let mut req = Driver::new(&mem, 16);
    let (mut regs, irq) = mmio(&mem, &host, NotifyMode::Inline);
    // The event queue's rings hold what the driver's memory held: a pattern.
    let pattern = vec![0xA5u8; 0x1000];
    mem.write_slice(&pattern, GuestAddress(EVENT_RING)).unwrap();
    assert!(bring_up(&mut regs, &req, feature::V1));
    regs.w(VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(regs.r(VIRTIO_MMIO_QUEUE_READY), 0, "never made ready");
    let targets = [
        Target::new(0, 0x40),
        Target::new(1, 0x41),
        Target::new(1, 0x42),
    ];
    let requests = [
        Request {
            device: 0,
            tag: 1,
            op: Operation::Query,
        },
        Request {
            device: 0,
            tag: 2,
            op: Operation::Alloc(Alloc::any(Kind::MsiX, 3, &targets)),
        },
        Request {
            device: 1,
            tag: 3,
            op: Operation::Alloc(Alloc {
                kind: Kind::Ims,
                index: IndexSpec::At(4),
                min: 1,
                max: 2,
                pasid: Some(0x42),
                targets: &targets[..2],
                targeting: Targeting::PerVector,
            }),
        },
        // An extension's flag: undefined for this driver.
        Request {
            device: 0,
            tag: 4,
            op: Operation::Alloc(Alloc {
                index: IndexSpec::AnyContiguous,
                ..Alloc::any(Kind::MsiX, 2, &targets[..2])
            }),
        },
        Request {
            device: 0,
            tag: 5,
            op: Operation::Retarget(Retarget::run(
                IndexRange {
                    kind: Kind::MsiX,
                    first: 1,
                    count: 1,
                },
                &targets[..1],
            )),
        },
        Request {
            device: 0,
            tag: 6,
            op: Operation::Free(pvirq_proto::Indices::Run(IndexRange {
                kind: Kind::MsiX,
                first: 0,
                count: 2,
            })),
        },
        Request {
            device: 9,
            tag: 7,
            op: Operation::Reset,
        },
        Request {
            device: 1,
            tag: 8,
            op: Operation::Reset,
        },
    ];
    let device = regs.0.device().clone();
    for (i, request) in requests.iter().enumerate() {
        let bytes = encode(request);
        let bufs = req.send(&bytes, &[200]);
        regs.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        let (_, len) = req.used(i as u16);
        assert_eq!(req.reply(&bufs, len), twin.call(request), "request {i}");
        if i == 2 {
            // The VMM changes things meanwhile: none of it reaches this driver now.
            let mut d = device.lock().unwrap();
            d.set_quota(4);
            let backend = host.attach(host.vm_id(d.vm()).unwrap(), 0x300).unwrap();
            assert_eq!(d.add_device(spec(0x300), Box::new(backend)), Ok(2));
            d.resources_changed();
        }
    }
    assert_eq!(irq.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    assert_eq!(regs.r(VIRTIO_MMIO_CONFIG_GENERATION), 0);
    let mut after = vec![0u8; pattern.len()];
    mem.read_slice(&mut after, GuestAddress(EVENT_RING))
        .unwrap();
    assert_eq!(after, pattern, "the event queue's memory is untouched");
    let d = device.lock().unwrap();
    assert_eq!(d.vm().pending_events(), 0);
    assert_eq!(d.metrics().snapshot().events, 0);
}

/// With an event loop (NotifyMode::EventFd), the event queue's notification is handled by
/// the device's subscriber, as the request queue's is.
#[test]
fn the_event_loop_writes_events_when_the_event_queue_is_notified() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::sync::{Arc, Mutex};
    let host = host();
    let mem = guest_memory();
    let req = Driver::new(&mem, 16);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut regs, _irq) = mmio(&mem, &host, NotifyMode::EventFd);
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    em.add_subscriber(regs.0.device().clone());
    assert!(bring_up_events(&mut regs, &req, &evt, WITH_EVENTS, Some(8)));
    em.run_with_timeout(0).unwrap();
    regs.0.device().lock().unwrap().set_quota(2);
    evt.give(1);
    regs.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert_eq!(
        evt.drv.used_idx(),
        0,
        "nothing is done inside the notification"
    );
    em.run_with_timeout(0).unwrap();
    assert_eq!(
        evt.events(),
        [Event {
            sequence: 1,
            body: EventBody::Limits {
                device: None,
                limit: 2
            }
        }]
    );
}
