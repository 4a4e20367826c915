//! Walking descriptor chains: what makes a ring malformed (spec §8, [DEV-15]) and the bound on
//! the work of one notification, counted in descriptors read (`PvirqMetrics::descriptors`).

use super::test_utils::*;
use super::*;
use pvirq_proto::{Operation, Outcome, Request, Response, feature};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use vm_memory::{Bytes, GuestAddress};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

fn reset_request() -> Vec<u8> {
    encode(&Request {
        device: 0,
        tag: 7,
        op: Operation::Reset,
    })
}

/// A RESET request split over `readable` one-byte descriptors (the last takes the rest),
/// then one writable descriptor for the reply: a valid chain of `readable + 1` descriptors
/// at table index `first..`.
fn split_request(drv: &mut Driver<'_>, first: u16, readable: u16) -> u64 {
    let req = reset_request();
    let at = drv.alloc(req.len() as u32);
    drv.mem.write_slice(&req, GuestAddress(at)).unwrap();
    let reply = drv.alloc(24);
    let mut descs: Vec<RawDescriptor> = (0..readable)
        .map(|i| {
            let len = if i + 1 == readable {
                req.len() as u32 - u32::from(i)
            } else {
                1
            };
            raw(at + u64::from(i), len, NEXT, first + i + 1)
        })
        .collect();
    descs.push(raw(reply, 24, WRITE, 0));
    drv.write_descs(first, &descs);
    reply
}

#[test]
fn an_indirect_descriptor_is_a_malformed_ring_and_is_not_followed() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut dev, irq) = active_device(vm(&host, 0x100, 32), &mem, &drv.q);
    // A valid request, but inside an indirect table of 2 descriptors that the device never
    // offered to read (no VIRTIO_F_INDIRECT_DESC).
    let req = reset_request();
    let req_at = drv.alloc(req.len() as u32);
    mem.write_slice(&req, GuestAddress(req_at)).unwrap();
    let reply = drv.alloc(24);
    let table = drv.alloc(32);
    mem.write_obj(raw(req_at, req.len() as u32, NEXT, 1), GuestAddress(table))
        .unwrap();
    mem.write_obj(raw(reply, 24, WRITE, 0), GuestAddress(table + 16))
        .unwrap();
    drv.write_descs(0, &[raw(table, 32, INDIRECT, 0)]);
    drv.publish(0);
    assert_eq!(dev.process_all().chains, 0);
    assert!(dev.needs_reset());
    assert_ne!(
        irq.status() & virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG,
        0
    );
    assert_eq!(drv.used_idx(), 0, "the chain is not returned");
    assert_eq!(
        dev.metrics().snapshot().descriptors,
        1,
        "the table was not read"
    );
}

#[test]
fn one_notification_reads_at_most_budget_times_queue_size_descriptors() {
    const SIZE: u16 = 16;
    const BUDGET: usize = 4;
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, SIZE);
    let (mut dev, _irq) = active_device(vm(&host, 0x100, 32), &mem, &drv.q);
    // The longest legal chain, the whole table, made available again and again: each
    // chain costs SIZE descriptors and nothing in the ring is malformed. (At most SIZE / 2
    // at once: virtio-queue 0.18's MockSplitQueue lays the used ring over the second half
    // of the available ring.)
    split_request(&mut drv, 0, SIZE - 1);
    for _ in 0..SIZE / 2 {
        drv.publish(0);
    }
    let bound = (BUDGET * usize::from(SIZE)) as u64;
    let done = dev.process_queue(0, BUDGET);
    assert_eq!(
        done,
        Processed {
            chains: BUDGET,
            more: true
        }
    );
    assert_eq!(dev.metrics().snapshot().descriptors, bound);
    assert_eq!(dev.process_queue(0, BUDGET).chains, BUDGET);
    assert_eq!(dev.metrics().snapshot().descriptors, 2 * bound);
    assert!(!dev.needs_reset());
    assert_eq!(
        dev.metrics().replies(pvirq_proto::Status::Ok),
        2 * BUDGET as u64
    );

    // An indirect table of 65,535 descriptors behind one head: the bound still holds,
    // because the device refuses to follow it.
    let table = drv.alloc(65_535 * 16);
    for i in 0..65_535u64 {
        let next = u16::try_from(i + 1).unwrap_or(0);
        let flags = if i + 1 < 65_535 { NEXT } else { WRITE };
        mem.write_obj(raw(table, 0, flags, next), GuestAddress(table + i * 16))
            .unwrap();
    }
    drv.write_descs(0, &[raw(table, 65_535 * 16, INDIRECT, 0)]);
    let before = dev.metrics().snapshot().descriptors;
    for _ in 0..SIZE / 2 {
        drv.publish(0);
    }
    dev.process_queue(0, BUDGET);
    let read = dev.metrics().snapshot().descriptors - before;
    assert!(read <= bound, "{read} descriptors read in one notification");
    assert!(dev.needs_reset());
}

#[test]
fn a_loop_is_cut_at_the_queue_size() {
    let host = host();
    let mem = guest_memory();
    let drv = Driver::new(&mem, 16);
    let (mut dev, _irq) = active_device(vm(&host, 0x100, 32), &mem, &drv.q);
    let buf = DATA;
    drv.write_descs(0, &[raw(buf, 1, NEXT, 1), raw(buf, 1, NEXT, 0)]);
    drv.publish(0);
    assert_eq!(dev.process_all().chains, 0);
    assert!(dev.needs_reset());
    assert_eq!(dev.metrics().snapshot().descriptors, 16);
}

/// Virtio forbids chains longer than 2^32 bytes. A chain of exactly 2^32 is legal and
/// answered; one byte more is a malformed ring (NEEDS_RESET), not a request with a bad
/// length: the request bytes are never looked at.
#[test]
fn a_chain_longer_than_four_gib_is_a_malformed_ring_and_four_gib_is_not() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut dev, _irq) = active_device(vm(&host, 0x100, 32), &mem, &drv.q);
    let req = reset_request();
    let at = drv.alloc(req.len() as u32);
    mem.write_slice(&req, GuestAddress(at)).unwrap();
    let reply = drv.alloc(64);
    let rest = u32::try_from((1u64 << 32) - req.len() as u64).unwrap();
    // Exactly 2^32 bytes: 16 readable, 2^32 - 16 writable (only the first 24 are written).
    drv.write_descs(
        0,
        &[
            raw(at, req.len() as u32, NEXT, 1),
            raw(reply, rest, WRITE, 0),
        ],
    );
    drv.publish(0);
    assert_eq!(dev.process_all().chains, 1);
    assert!(!dev.needs_reset());
    let (_, len) = drv.used(0);
    let mut bytes = vec![0u8; len as usize];
    mem.read_slice(&mut bytes, GuestAddress(reply)).unwrap();
    assert!(matches!(
        Response::decode(&bytes, feature::V1).unwrap().outcome,
        Outcome::Reset { .. }
    ));
    // Readable lengths alone past 4 GiB: two readable descriptors of 2^32 - 1 bytes.
    drv.write_descs(
        2,
        &[
            raw(at, u32::MAX, NEXT, 3),
            raw(at, u32::MAX, NEXT, 4),
            raw(reply, 24, WRITE, 0),
        ],
    );
    drv.publish(2);
    assert_eq!(dev.process_all().chains, 0);
    assert!(dev.needs_reset());
    assert_eq!(drv.used_idx(), 1, "the long chain is not returned");
}
