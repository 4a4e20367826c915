//! The event queue through the device (spec §2.3, §12): records in sequence order, one per
//! buffer, buffers that cannot take one, a malformed ring, the budget, interrupts, what a
//! stopped queue and a device reset do, and the bound on what a driver that never returns
//! buffers can make the device hold.

use super::test_utils::*;
use super::*;
use pvirq_proto::{EVENT_LEN, Event, EventBody};
use std::sync::atomic::Ordering;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use vm_memory::{Bytes, GuestAddress};

fn limits(limit: u32) -> EventBody {
    EventBody::Limits {
        device: None,
        limit,
    }
}

fn bodies(events: &[Event]) -> Vec<EventBody> {
    events.iter().map(|e| e.body).collect()
}

fn sequences(events: &[Event]) -> Vec<u32> {
    events.iter().map(|e| e.sequence).collect()
}

#[test]
fn events_are_written_in_order_one_per_buffer_with_used_length_32_and_a_queue_1_interrupt() {
    let host = host();
    let mem = guest_memory();
    let req = Driver::new(&mem, 16);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, irq) = events_device(vm(&host, 0x100, 16), &mem, &req, &evt);
    evt.give(2);
    let generation = dev.config_generation();
    dev.set_quota(12);
    // The configuration moved first, then the event was written into the first buffer.
    assert_eq!(irq.take(), [InterruptType::Config, InterruptType::Queue(1)]);
    dev.set_quota(20);
    assert_eq!(irq.take(), [InterruptType::Config, InterruptType::Queue(1)]);
    let used = evt.used();
    assert_eq!(
        used.iter().map(|(_, len, _)| *len).collect::<Vec<_>>(),
        [EVENT_LEN as u32; 2]
    );
    let events: Vec<Event> = used.into_iter().filter_map(|(_, _, e)| e).collect();
    assert_eq!(sequences(&events), [1, 2]);
    assert_eq!(bodies(&events), [limits(12), limits(20)]);
    assert_eq!(dev.config_generation(), generation.wrapping_add(2));
    let mut quota = [0u8; 4];
    dev.read_config(8, &mut quota);
    assert_eq!(u32::from_le_bytes(quota), 20);
    assert_eq!(dev.metrics().snapshot().events, 2);
    // Nothing else was touched: the request queue saw no chain.
    assert_eq!(req.used_idx(), 0);
}

#[test]
fn an_event_without_a_buffer_waits_and_only_the_latest_about_one_thing_is_kept() {
    let host = host();
    let mem = guest_memory();
    let req = Driver::new(&mem, 16);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, irq) = events_device(vm(&host, 0x100, 16), &mem, &req, &evt);
    for quota in [10, 11, 12] {
        dev.set_quota(quota);
    }
    assert_eq!(dev.vm().pending_events(), 1, "one LIMITS for the VM");
    assert_eq!(
        irq.take(),
        [InterruptType::Config; 3],
        "no buffer, no event"
    );
    evt.give(2);
    // The driver's notification of the event queue.
    let done = dev.process_queue(1, 64);
    assert_eq!(
        done.chains, 1,
        "one event, one buffer; the other stays available"
    );
    assert_eq!(irq.take(), [InterruptType::Queue(1)]);
    let used = evt.used();
    assert_eq!(used.len(), 1);
    let (head, _, event) = used[0];
    assert_eq!(
        event,
        Some(Event {
            sequence: 1,
            body: limits(12)
        })
    );
    dev.set_quota(13);
    dev.set_quota(14);
    let (second, _, event) = evt.used()[0];
    assert_ne!(second, head);
    assert_eq!(
        event.map(|e| e.sequence),
        Some(2),
        "numbered on in the next buffer"
    );
    // The driver handled the first event and gives its buffer back: the third goes there.
    evt.give_back(head);
    dev.process_queue(1, 64);
    let used = evt.used();
    assert_eq!(
        used.iter()
            .map(|(h, _, e)| (*h, e.map(|e| e.sequence)))
            .collect::<Vec<_>>(),
        [(head, Some(3))]
    );
    assert_eq!(used[0].2.map(|e| e.body), Some(limits(14)));
}

#[test]
fn a_buffer_that_cannot_take_a_record_goes_back_empty_and_the_event_waits_for_the_next() {
    let host = host();
    let mem = guest_memory();
    let req = Driver::new(&mem, 16);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, _irq) = events_device(vm(&host, 0x100, 16), &mem, &req, &evt);
    let short = evt.give_chain(&[(EVENT_LEN as u32 - 1, true)]);
    let readable = evt.give_chain(&[(8, false), (EVENT_LEN as u32, true)]);
    let outside = evt.give_raw(&[Buf {
        addr: MEM_SIZE + 0x1000,
        len: EVENT_LEN as u32,
        write: true,
    }]);
    // A record may span descriptors.
    let split = evt.give_chain(&[(12, true), (20, true)]);
    dev.set_quota(9);
    let used = evt.used();
    assert_eq!(
        used.iter()
            .map(|(head, len, _)| (*head, *len))
            .collect::<Vec<_>>(),
        [(short, 0), (readable, 0), (outside, 0), (split, 32)]
    );
    assert_eq!(
        used[3].2,
        Some(Event {
            sequence: 1,
            body: limits(9)
        })
    );
    assert_eq!(dev.vm().pending_events(), 0);
    assert_eq!(dev.metrics().snapshot().unusable_event_buffers, 3);
    assert!(
        !dev.needs_reset(),
        "the buffers were the driver's mistake, not the ring"
    );
}

#[test]
fn a_malformed_event_ring_sets_needs_reset_and_is_not_used_again() {
    let host = host();
    let mem = guest_memory();
    let mut req = Driver::new(&mem, 16);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, irq) = events_device(vm(&host, 0x100, 16), &mem, &req, &evt);
    // An indirect descriptor: never offered, so a malformed ring ([DEV-18]).
    evt.drv.offer_raw(&[RawDescriptor::from(Descriptor::new(
        EVENT_DATA,
        16,
        (VRING_DESC_F_INDIRECT | VRING_DESC_F_WRITE) as u16,
        0,
    ))]);
    dev.set_quota(9);
    assert!(dev.needs_reset());
    assert_eq!(irq.take(), [InterruptType::Config, InterruptType::Config]);
    assert_eq!(evt.drv.used_idx(), 0, "the chain is not returned");
    assert_eq!(dev.vm().pending_events(), 1, "the event was not consumed");
    // The whole device waits for its reset.
    req.send(&[0u8; 16], &[24]);
    assert_eq!(dev.process_all().chains, 0);
    assert_eq!(req.used_idx(), 0);
}

#[test]
fn one_notification_fills_at_most_its_budget_of_buffers_and_the_rest_follows() {
    let host = host();
    let mem = guest_memory();
    let req = Driver::new(&mem, 16);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, _irq) = events_device(vm(&host, 0x100, 16), &mem, &req, &evt);
    for i in 0..5u16 {
        let backend = host
            .attach(host.vm_id(dev.vm()).unwrap(), 0x200 + i)
            .unwrap();
        dev.add_device(spec(0x200 + i), Box::new(backend)).unwrap();
    }
    assert_eq!(dev.vm().pending_events(), 5, "no buffer yet");
    evt.give(5);
    let before = dev.metrics().snapshot().descriptors;
    assert_eq!(
        dev.process_queue(1, 2),
        Processed {
            chains: 2,
            more: true
        }
    );
    assert!(
        dev.metrics().snapshot().descriptors - before <= 2 * 8,
        "[DEV-19]"
    );
    assert_eq!(
        dev.process_queue(1, 2),
        Processed {
            chains: 2,
            more: true
        }
    );
    assert_eq!(
        dev.process_queue(1, 2),
        Processed {
            chains: 1,
            more: false
        }
    );
    let events = evt.events();
    assert_eq!(sequences(&events), [1, 2, 3, 4, 5]);
    assert_eq!(
        bodies(&events),
        (2..7)
            .map(|device| EventBody::DeviceAdded { device })
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_driver_that_asks_for_no_interrupt_gets_its_events_without_one() {
    let host = host();
    let mem = guest_memory();
    let req = Driver::new(&mem, 16);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, irq) = events_device(vm(&host, 0x100, 16), &mem, &req, &evt);
    // VRING_AVAIL_F_NO_INTERRUPT in the event queue's avail ring.
    mem.write_obj(1u16, evt.drv.q.avail_addr()).unwrap();
    evt.give(1);
    dev.set_quota(3);
    assert_eq!(irq.take(), [InterruptType::Config]);
    assert_eq!(bodies(&evt.events()), [limits(3)]);
}

#[test]
fn a_stopped_event_queue_keeps_events_pending_and_a_device_reset_discards_them() {
    let host = host();
    let mem = guest_memory();
    let req = Driver::new(&mem, 16);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, irq) = events_device(vm(&host, 0x100, 16), &mem, &req, &evt);
    evt.give(2);
    dev.stop_queue(1);
    dev.set_quota(7);
    dev.process_queue(1, 64);
    assert_eq!(evt.drv.used_idx(), 0, "a stopped queue is not touched");
    assert_eq!(dev.vm().pending_events(), 1);
    assert_eq!(irq.take(), [InterruptType::Config]);
    dev.reset();
    assert_eq!(dev.vm().pending_events(), 0, "[DEV-1]");
    // Live again on fresh rings: numbering starts at 1.
    let mut evt = EventDriver::new(&mem, 8);
    let req = Driver::new(&mem, 16);
    dev.ack_features(WITH_EVENTS);
    dev.activate(
        atomic(&mem),
        irq.clone(),
        vec![
            req.q.create_queue().unwrap(),
            evt.drv.q.create_queue().unwrap(),
        ],
        vec![
            vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
            vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
        ],
    )
    .unwrap();
    evt.give(1);
    dev.set_quota(5);
    let events = evt.events();
    assert_eq!(sequences(&events), [1]);
    assert_eq!(bodies(&events), [limits(5)]);
}

/// Spec §8, *Events are bounded*: a driver that never returns event buffers costs at most
/// one pending event per grant, three per assigned device and one for the VM.
#[test]
fn a_driver_that_never_returns_event_buffers_costs_a_bounded_log() {
    let host = host();
    let mem = guest_memory();
    let mut req = Driver::new(&mem, 256);
    let evt = EventDriver::new(&mem, 8);
    let (mut dev, _irq) = events_device(vm(&host, 0x100, 6), &mem, &req, &evt);
    let alloc = |device: u32, min: u16| {
        let t = [pvirq_proto::Target::new(0, 0x40); 4];
        encode(&pvirq_proto::Request {
            device,
            tag: 0,
            op: pvirq_proto::Operation::Alloc(pvirq_proto::Alloc {
                kind: pvirq_proto::Kind::MsiX,
                index: pvirq_proto::IndexSpec::Any,
                min,
                max: 4,
                pasid: None,
                targets: &t,
                targeting: pvirq_proto::Targeting::PerVector,
            }),
        })
    };
    let reset = |device: u32| {
        encode(&pvirq_proto::Request {
            device,
            tag: 0,
            op: pvirq_proto::Operation::Reset,
        })
    };
    let mut most = 0;
    for round in 0..40u32 {
        let device = round % 2;
        // Fill the quota, be refused (arms AVAILABLE), give back (fires it).
        for request in [alloc(device, 1), alloc(1 - device, 4), reset(device)] {
            req.send(&request, &[128]);
        }
        dev.process_all();
        dev.set_quota(6 + round % 3);
        dev.set_device_share(device, Some(round)).unwrap();
        most = most.max(dev.vm().pending_events());
    }
    assert!(
        dev.metrics().snapshot().events == 0,
        "no buffer was ever given"
    );
    // Two devices, no grant revoked or reprogrammed: 3 per device and the VM's LIMITS.
    assert!(most <= 2 * 3 + 1, "{most} events pending");
    assert!(
        most >= 4,
        "the workload made events of several kinds ({most})"
    );
}

#[test]
fn event_records_and_the_used_ring_are_logged_dirty() {
    use vm_memory::bitmap::{AtomicBitmap, Bitmap};
    use vm_memory::{GuestMemoryAtomic, GuestMemoryBackend};
    type Logged = vm_memory::GuestMemoryMmap<AtomicBitmap>;
    let mem: Logged =
        vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let req = virtio_queue::mock::MockSplitQueue::new(&mem, 16);
    let evt = virtio_queue::mock::MockSplitQueue::create(&mem, GuestAddress(EVENT_RING), 8);
    let record_at = EVENT_DATA + 0x2000;
    evt.add_desc_chains(
        &[RawDescriptor::from(Descriptor::new(
            record_at,
            EVENT_LEN as u32,
            VRING_DESC_F_WRITE as u16,
            0,
        ))],
        0,
    )
    .unwrap();
    let region = mem.iter().next().unwrap();
    let log: &AtomicBitmap = std::ops::Deref::deref(region).bitmap();
    log.reset();
    let host = host();
    let mut dev = PvirqDevice::<GuestMemoryAtomic<Logged>>::new(vm(&host, 0x100, 8)).unwrap();
    dev.ack_features(WITH_EVENTS);
    dev.activate(
        GuestMemoryAtomic::new(mem.clone()),
        std::sync::Arc::new(MmioInterrupt::new()),
        vec![req.create_queue().unwrap(), evt.create_queue().unwrap()],
        vec![
            vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
            vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
        ],
    )
    .unwrap();
    dev.set_quota(3);
    assert_eq!(dev.metrics().events.load(Ordering::Relaxed), 1);
    let dirty = |addr: u64| log.dirty_at(addr as usize);
    assert!(dirty(record_at), "the record's page");
    assert!(dirty(evt.used_addr().0), "the event queue's used ring");
    assert!(!dirty(0x38_0000), "nothing else");
}
