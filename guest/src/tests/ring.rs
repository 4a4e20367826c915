//! Two independent split-ring implementations must agree on every byte: our driver side
//! ([`SplitRing`]) laid out in a `GuestMemoryMmap`, and rust-vmm's `virtio_queue::Queue`
//! as the device side.

use super::fake::memory;
use crate::hal::Dma;
use crate::ring::{DESC_F_NEXT, DESC_F_WRITE, Descriptor, Layout, SplitRing, UsedElem};
use crate::test_utils::GuestMemoryHal;
use proptest::prelude::*;
use std::vec::Vec;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Bytes of data buffer each descriptor may point at.
const SEGMENT: u64 = 256;

struct Bench {
    mem: GuestMemoryMmap,
    ring: SplitRing,
    queue: Queue,
    /// Descriptor indices not in a chain the device holds.
    free: Vec<u16>,
    data: u64,
    /// Everything the driver wrote per chain head: (descriptors, readable bytes).
    chains: Vec<Option<(Vec<Descriptor>, Vec<u8>)>>,
    _ring_dma: Dma,
    _hal: GuestMemoryHal,
}

impl Bench {
    fn new(size: u16) -> Self {
        let mem = memory();
        let hal = GuestMemoryHal::new(mem.clone(), GuestAddress(0x10_0000), 4 << 20);
        let ring_dma = Dma::alloc(&hal, Layout::new(size).total).unwrap();
        // SAFETY: the allocation is page-aligned, large enough, owned by this bench for
        // as long as the ring lives, and `size` is a power of two.
        let ring = unsafe { SplitRing::new(ring_dma.vaddr(), ring_dma.paddr(0), size) };
        let data = Dma::alloc(&hal, usize::from(size) * SEGMENT as usize).unwrap();
        let mut queue = Queue::new(size).unwrap();
        let addrs = ring.addrs();
        queue.set_size(size);
        queue.set_desc_table_address(Some(addrs.desc as u32), Some((addrs.desc >> 32) as u32));
        queue.set_avail_ring_address(Some(addrs.driver as u32), Some((addrs.driver >> 32) as u32));
        queue.set_used_ring_address(Some(addrs.device as u32), Some((addrs.device >> 32) as u32));
        queue.set_ready(true);
        assert!(queue.is_valid(&mem), "rust-vmm accepts our layout");
        Bench {
            mem,
            ring,
            queue,
            free: (0..size).rev().collect(),
            data: data.paddr(0),
            chains: (0..size).map(|_| None).collect(),
            _ring_dma: ring_dma,
            _hal: hal,
        }
    }

    /// Driver: builds a chain of `segments` (length, writable) from free descriptors,
    /// fills the readable ones with bytes derived from `seed`, and publishes it.
    fn publish(&mut self, segments: &[(u32, bool)], seed: u8) -> Option<u16> {
        if segments.len() > self.free.len() {
            return None;
        }
        let ids: Vec<u16> = (0..segments.len())
            .map(|_| self.free.pop().unwrap())
            .collect();
        let mut descs = Vec::new();
        let mut readable = Vec::new();
        for (i, (&(len, writable), &id)) in segments.iter().zip(&ids).enumerate() {
            let addr = self.data + u64::from(id) * SEGMENT;
            if !writable {
                let bytes: Vec<u8> = (0..len)
                    .map(|b| seed.wrapping_add(b as u8).wrapping_mul(7))
                    .collect();
                self.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
                readable.extend_from_slice(&bytes);
            }
            let next = ids.get(i + 1).copied();
            let desc = Descriptor {
                addr,
                len,
                flags: if writable { DESC_F_WRITE } else { 0 }
                    | if next.is_some() { DESC_F_NEXT } else { 0 },
                next: next.unwrap_or(0),
            };
            self.ring.set_desc(id, desc);
            descs.push(desc);
        }
        let head = ids[0];
        self.ring.publish(head);
        self.chains[usize::from(head)] = Some((descs, readable));
        Some(head)
    }

    /// Device: pops every chain, checks it against what the driver wrote, and returns
    /// (head, writable bytes) per chain in arrival order.
    fn device_pop(&mut self) -> Vec<(u16, u32)> {
        let mut popped = Vec::new();
        let mem = self.mem.clone();
        while let Some(chain) = self.queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let (descs, readable) = self.chains[usize::from(head)].clone().unwrap();
            let seen: Vec<_> = chain.clone().collect();
            assert_eq!(seen.len(), descs.len(), "chain length");
            for (d, s) in descs.iter().zip(&seen) {
                assert_eq!(s.addr().0, d.addr);
                assert_eq!(s.len(), d.len);
                assert_eq!(s.flags(), d.flags);
                assert_eq!(s.is_write_only(), d.flags & DESC_F_WRITE != 0);
                assert_eq!(s.has_next(), d.flags & DESC_F_NEXT != 0);
            }
            let mut read = Vec::new();
            let mut writable = 0;
            for s in &seen {
                if s.is_write_only() {
                    writable += s.len();
                } else {
                    let mut buf = std::vec![0; s.len() as usize];
                    mem.read_slice(&mut buf, s.addr()).unwrap();
                    read.extend_from_slice(&buf);
                }
            }
            assert_eq!(read, readable, "device reads exactly the driver's bytes");
            popped.push((head, writable));
        }
        popped
    }

    /// Device: writes `len` bytes derived from `head` into the chain's writable buffers and
    /// returns it with `add_used`.
    fn device_complete(&mut self, head: u16, len: u32) {
        let (descs, _) = self.chains[usize::from(head)].clone().unwrap();
        let mut left = len;
        for d in descs.iter().filter(|d| d.flags & DESC_F_WRITE != 0) {
            let n = left.min(d.len);
            let bytes: Vec<u8> = (0..n).map(|b| (b as u8) ^ (head as u8)).collect();
            self.mem.write_slice(&bytes, GuestAddress(d.addr)).unwrap();
            left -= n;
        }
        self.queue.add_used(&self.mem, head, len).unwrap();
    }

    /// Driver: takes the next used element and checks the bytes the device wrote.
    fn driver_pop(&mut self) -> Option<UsedElem> {
        let elem = self.ring.pop_used().unwrap()?;
        let head = u16::try_from(elem.id).unwrap();
        let (descs, _) = self.chains[usize::from(head)].take().unwrap();
        let mut left = elem.len;
        for d in descs.iter().filter(|d| d.flags & DESC_F_WRITE != 0) {
            let n = left.min(d.len);
            let mut buf = std::vec![0; n as usize];
            self.mem.read_slice(&mut buf, GuestAddress(d.addr)).unwrap();
            let expected: Vec<u8> = (0..n).map(|b| (b as u8) ^ (head as u8)).collect();
            assert_eq!(buf, expected, "driver reads exactly the device's bytes");
            left -= n;
        }
        // Give the chain's descriptors back, walking `next` as the device did.
        let mut id = head;
        for d in &descs {
            self.free.push(id);
            id = d.next;
        }
        Some(elem)
    }

    fn avail_idx(&self) -> u16 {
        let addr = GuestAddress(self.ring.addrs().driver + 2);
        u16::from_le(self.mem.read_obj(addr).unwrap())
    }
}

#[test]
fn a_request_chain_round_trips_through_rust_vmm() {
    let mut b = Bench::new(8);
    let head = b.publish(&[(16, false), (48, true)], 1).unwrap();
    assert_eq!(b.avail_idx(), 1);
    let popped = b.device_pop();
    assert_eq!(popped, [(head, 48)]);
    b.device_complete(head, 40);
    assert_eq!(
        b.driver_pop(),
        Some(UsedElem {
            id: u32::from(head),
            len: 40
        })
    );
    assert_eq!(b.driver_pop(), None);
    assert_eq!(b.ring.outstanding(), 0);
}

#[test]
fn notification_suppression_is_read_from_rust_vmm_s_flags() {
    let mut b = Bench::new(4);
    assert!(b.ring.needs_notify());
    b.queue.disable_notification(&b.mem).unwrap();
    assert!(!b.ring.needs_notify());
    b.queue.enable_notification(&b.mem).unwrap();
    assert!(b.ring.needs_notify());
}

#[test]
fn indices_wrap_past_u16_max() {
    let mut b = Bench::new(4);
    for i in 0..70_000u32 {
        let head = b.publish(&[(8, false), (24, true)], i as u8).unwrap();
        let popped = b.device_pop();
        assert_eq!(popped, [(head, 24)]);
        b.device_complete(head, 24);
        assert_eq!(b.driver_pop().unwrap().len, 24);
    }
    assert_eq!(b.avail_idx(), (70_000u32 % 65_536) as u16);
    assert_eq!(b.queue.next_used(), (70_000u32 % 65_536) as u16);
}

/// A chain shape: 1–3 readable segments then 1–2 writable ones.
fn chain() -> impl Strategy<Value = Vec<(u32, bool)>> {
    (
        proptest::collection::vec(1u32..=SEGMENT as u32, 1..=3),
        proptest::collection::vec(1u32..=SEGMENT as u32, 1..=2),
    )
        .prop_map(|(r, w)| {
            r.into_iter()
                .map(|l| (l, false))
                .chain(w.into_iter().map(|l| (l, true)))
                .collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Rounds of chains published, popped by rust-vmm, completed in a shuffled order with
    /// arbitrary lengths, and read back: both sides agree on heads, descriptors, bytes
    /// and used elements throughout.
    #[test]
    fn both_rings_agree_on_every_byte(
        size_log in 1u32..=5,
        rounds in proptest::collection::vec(
            (proptest::collection::vec((chain(), any::<u8>()), 1..8), any::<u64>(), any::<u32>()),
            1..20,
        ),
    ) {
        let mut b = Bench::new(1 << size_log);
        let mut published = 0u16;
        for (chains, shuffle, len_seed) in rounds {
            let mut heads = Vec::new();
            for (shape, seed) in chains {
                if let Some(head) = b.publish(&shape, seed) {
                    heads.push(head);
                    published = published.wrapping_add(1);
                }
            }
            prop_assert_eq!(b.avail_idx(), published);
            let mut popped = b.device_pop();
            prop_assert_eq!(popped.iter().map(|p| p.0).collect::<Vec<_>>(), heads);
            // Complete in a shuffled order.
            let mut s = shuffle;
            for i in (1..popped.len()).rev() {
                popped.swap(i, (s % (i as u64 + 1)) as usize);
                s = s.rotate_left(7) ^ 0x9e37_79b9;
            }
            let mut expected = Vec::new();
            for (i, &(head, writable)) in popped.iter().enumerate() {
                let len = len_seed.rotate_left(i as u32) % (writable + 1);
                b.device_complete(head, len);
                expected.push(UsedElem { id: u32::from(head), len });
            }
            let mut got = Vec::new();
            while let Some(elem) = b.driver_pop() {
                got.push(elem);
            }
            prop_assert_eq!(got, expected);
            prop_assert_eq!(b.ring.outstanding(), 0);
        }
    }
}
