//! Target `device_queue`: the host's virtio device fed arbitrary guest memory, ring state
//! and descriptor chains. Nothing may panic or hang; after every request the host's
//! invariants hold; another VM on the same host is untouched; a device reset releases
//! everything the VM held.

use crate::wire::Blob;
use crate::wire_struct;
use pvirq_host::model::{ModelConfig, ModelHost};
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::{DeviceSpec, MmioInterrupt, PvirqDevice, Vm, VmConfig};
use pvirq_proto::{
    Alloc, IndexRange, IndexSpec, Kind, Operation, Request, Retarget, Target, Targeting, feature,
};
use std::sync::Arc;
use virtio_queue::Queue;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Guest memory: rings from 0, data from [`DATA`].
pub const MEM_SIZE: u64 = 1 << 20;
const DATA: u64 = 0x4000;
/// Hang guard: `process_queue(1)` calls per round (a queue holds at most 256 chains).
const MAX_CALLS: usize = 1024;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

wire_struct! {
    /// A well-formed chain the harness lays out: the request in one or two readable
    /// buffers, then writable buffers.
    pub struct ChainIn {
        /// The request bytes.
        pub request: Blob,
        /// Where the request splits across two readable buffers (modulo its length + 1;
        /// 0: one buffer).
        pub split: u8,
        /// Writable buffer lengths.
        pub replies: Vec<u16>,
        /// Bit 0: put the first writable buffer before the readable ones.
        pub order: u8,
    }
}

wire_struct! {
    /// A raw descriptor written over the table after the layout.
    pub struct DescIn {
        /// Table index (modulo the queue size).
        pub index: u16,
        /// Guest address.
        pub addr: u32,
        /// Length.
        pub len: u32,
        /// Flags.
        pub flags: u16,
        /// Next.
        pub next: u16,
    }
}

wire_struct! {
    /// Raw bytes written into guest memory last (rings included).
    pub struct Poke {
        /// Address (modulo the memory size).
        pub addr: u32,
        /// Bytes.
        pub bytes: Blob,
    }
}

wire_struct! {
    /// A whole `device_queue` input.
    pub struct DeviceInput {
        /// Queue size: 2^(byte modulo 9).
        pub queue_size: u8,
        /// Feature bits 0–4 the driver does not acknowledge.
        pub features_off: u8,
        /// The VM's quota.
        pub quota: u8,
        /// Well-formed chains.
        pub chains: Vec<ChainIn>,
        /// Raw descriptors.
        pub descs: Vec<DescIn>,
        /// Extra available-ring entries after the chains' heads.
        pub avail: Vec<u16>,
        /// Added to the available index.
        pub avail_extra: u16,
        /// Raw memory writes.
        pub pokes: Vec<Poke>,
        /// Times the same available entries are published again (modulo 4).
        pub republish: u8,
    }
}

fn spec(requester_id: u16) -> DeviceSpec {
    DeviceSpec {
        requester_id,
        msi_max: 8,
        msix_table_size: 64,
        ims_slots: 64,
        ..DeviceSpec::default()
    }
}

fn vm(host: &ModelHost, base: u16, quota: u32) -> Vm {
    host.create_vm(
        VmConfig {
            quota,
            num_vcpus: 2,
            max_batch: 64,
            devices: vec![spec(base), spec(base + 1)],
            ..VmConfig::default()
        },
        Box::new(MemoryRoutes::kvm_like()),
    )
    .expect("a valid VM")
}

fn check(host: &ModelHost, when: &str) {
    if let Err(errors) = host.check_invariants() {
        panic!("invariants broken {when}: {errors:#?}");
    }
}

struct Layout<'a> {
    mem: &'a GuestMemoryMmap,
    size: u16,
    next_desc: u16,
    next_data: u64,
    heads: Vec<u16>,
}

impl Layout<'_> {
    fn data(&mut self, len: u64) -> Option<u64> {
        let addr = self.next_data;
        let end = addr.checked_add(len.max(1).next_multiple_of(64))?;
        if end > MEM_SIZE {
            return None;
        }
        self.next_data = end;
        Some(addr)
    }

    fn desc(&self, q: &MockSplitQueue<'_, GuestMemoryMmap>, index: u16, d: [u64; 4]) {
        let at = q.desc_table_addr().0 + 16 * u64::from(index % self.size);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&d[0].to_le_bytes());
        raw[8..12].copy_from_slice(&(d[1] as u32).to_le_bytes());
        raw[12..14].copy_from_slice(&(d[2] as u16).to_le_bytes());
        raw[14..].copy_from_slice(&(d[3] as u16).to_le_bytes());
        let _ = self.mem.write_slice(&raw, GuestAddress(at));
    }

    /// Lays one chain out; `false` when the table or the data area is full.
    fn chain(&mut self, q: &MockSplitQueue<'_, GuestMemoryMmap>, c: &ChainIn) -> bool {
        let req = &c.request.0;
        let split = usize::from(c.split) % (req.len() + 1);
        let mut bufs: Vec<(u64, u64, bool)> = Vec::new();
        let parts: Vec<&[u8]> = if split == 0 {
            vec![req]
        } else {
            vec![&req[..split], &req[split..]]
        };
        for part in parts {
            let Some(addr) = self.data(part.len() as u64) else {
                return false;
            };
            let _ = self.mem.write_slice(part, GuestAddress(addr));
            bufs.push((addr, part.len() as u64, false));
        }
        for len in &c.replies {
            let Some(addr) = self.data(u64::from(*len)) else {
                return false;
            };
            bufs.push((addr, u64::from(*len), true));
        }
        if c.order & 1 == 1 && bufs.len() > 1 && bufs.last().is_some_and(|b| b.2) {
            let w = bufs.remove(parts_len(split));
            bufs.insert(0, w);
        }
        let n = bufs.len() as u32;
        if u32::from(self.next_desc) + n > u32::from(self.size) {
            return false;
        }
        let head = self.next_desc;
        for (i, (addr, len, write)) in bufs.iter().enumerate() {
            let index = head + i as u16;
            let mut flags = if *write { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            self.desc(
                q,
                index,
                [*addr, *len, u64::from(flags), u64::from(index + 1)],
            );
        }
        self.next_desc += n as u16;
        self.heads.push(head);
        true
    }
}

fn parts_len(split: usize) -> usize {
    if split == 0 { 1 } else { 2 }
}

fn publish(
    mem: &GuestMemoryMmap,
    q: &MockSplitQueue<'_, GuestMemoryMmap>,
    size: u16,
    entries: &[u16],
    extra: u16,
) {
    let avail = q.avail_addr().0;
    let idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap_or(0);
    for (k, head) in entries.iter().enumerate() {
        let slot = idx.wrapping_add(k as u16) % size;
        let _ = mem.write_obj(*head, GuestAddress(avail + 4 + 2 * u64::from(slot)));
    }
    let new = idx.wrapping_add(entries.len() as u16).wrapping_add(extra);
    let _ = mem.write_obj(new, GuestAddress(avail + 2));
}

/// Processes one chain at a time until the queue is idle, checking the invariants after
/// every request; how many chains were returned.
fn drain(dev: &mut PvirqDevice, host: &ModelHost) -> usize {
    let mut chains = 0;
    for _ in 0..MAX_CALLS {
        let done = dev.process_queue(0, 1);
        check(host, "after a request");
        chains += done.chains;
        if done.chains == 0 && !done.more {
            return chains;
        }
    }
    panic!("the device kept processing for {MAX_CALLS} calls");
}

/// Runs one input; how many chains the device returned.
pub fn run(input: &DeviceInput) -> usize {
    let host = ModelHost::new(&ModelConfig::default()).expect("default host");
    // A bystander VM with grants of its own: nothing the fuzzed VM does may touch them.
    let other = vm(&host, 0x200, 8);
    let targets = [Target::new(1, 0x50), Target::new(0, 0x51)];
    other.call(&Request {
        device: 0,
        tag: 1,
        op: Operation::Alloc(Alloc::any(Kind::MsiX, 2, &targets)),
    });
    let other_before = (other.occupancy(), other.grants(0), other.grants(1));
    let vm = vm(&host, 0x100, u32::from(input.quota));

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("guest memory");
    let size = 1u16 << (input.queue_size % 9);
    let q = MockSplitQueue::new(&mem, size);
    let mut layout = Layout {
        mem: &mem,
        size,
        next_desc: 0,
        next_data: DATA,
        heads: Vec::new(),
    };
    for c in &input.chains {
        if !layout.chain(&q, c) {
            break;
        }
    }
    for d in &input.descs {
        layout.desc(
            &q,
            d.index,
            [
                u64::from(d.addr),
                u64::from(d.len),
                u64::from(d.flags),
                u64::from(d.next),
            ],
        );
    }
    let mut entries = layout.heads.clone();
    entries.extend(&input.avail);
    publish(&mem, &q, size, &entries, input.avail_extra);
    for p in &input.pokes {
        let addr = u64::from(p.addr) % MEM_SIZE;
        let n = (p.bytes.0.len() as u64).min(MEM_SIZE - addr) as usize;
        let _ = mem.write_slice(&p.bytes.0[..n], GuestAddress(addr));
    }

    let irq = Arc::new(MmioInterrupt::new());
    let mut dev = PvirqDevice::new(vm.clone()).expect("device");
    let Ok(queue) = q.create_queue::<Queue>() else {
        return 0;
    };
    dev.ack_features(feature::V1 & !u64::from(input.features_off & 0x1F));
    let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let atomic = GuestMemoryAtomic::new(mem.clone());
    if dev.activate(atomic, irq, vec![queue], vec![evt]).is_err() {
        return 0;
    }
    let mut chains = drain(&mut dev, &host);
    for _ in 0..input.republish % 4 {
        // The driver offers the same chains again (heads the device already returned).
        publish(&mem, &q, size, &entries, 0);
        chains += drain(&mut dev, &host);
    }

    assert_eq!(
        (other.occupancy(), other.grants(0), other.grants(1)),
        other_before,
        "the fuzzed VM changed another VM's grants"
    );
    dev.reset();
    check(&host, "after the device reset");
    assert_eq!(vm.occupancy().held, 0, "device reset left grants behind");
    assert_eq!(
        host.occupancy().vectors_used,
        other_before.0.held,
        "device reset left host vectors behind"
    );
    chains
}

fn encode(request: &Request<'_>) -> Vec<u8> {
    let mut bytes = vec![0u8; request.encoded_len()];
    let n = request.encode(&mut bytes).expect("a seed request encodes");
    bytes.truncate(n);
    bytes
}

/// Representative requests (also seeds of `proto_decode`).
pub fn sample_requests() -> Vec<Vec<u8>> {
    let t = [
        Target::new(0, 0x40),
        Target::new(1, 0x41),
        Target::new(0, 0x42),
        Target::new(1, 0x43),
    ];
    let req = |device, op| {
        encode(&Request {
            device,
            tag: 0x99,
            op,
        })
    };
    let alloc = |kind, index, min, max: u16, pasid| Alloc {
        kind,
        index,
        min,
        max,
        pasid,
        targets: &t[..usize::from(max)],
        targeting: Targeting::PerVector,
    };
    let range = |kind, first, count| IndexRange { kind, first, count };
    vec![
        req(0, Operation::Query),
        req(
            0,
            Operation::Alloc(alloc(Kind::MsiX, IndexSpec::Any, 1, 4, None)),
        ),
        req(
            0,
            Operation::Alloc(alloc(Kind::MsiX, IndexSpec::At(2), 2, 2, None)),
        ),
        req(
            1,
            Operation::Alloc(alloc(Kind::Msi, IndexSpec::Any, 2, 4, None)),
        ),
        req(
            1,
            Operation::Alloc(alloc(Kind::Ims, IndexSpec::Any, 1, 2, Some(9))),
        ),
        req(0, Operation::Free(range(Kind::MsiX, 0, 2).into())),
        req(
            0,
            Operation::Retarget(Retarget::run(range(Kind::MsiX, 0, 2), &t[..2])),
        ),
        req(1, Operation::Free(range(Kind::Msi, 0, 4).into())),
        req(0, Operation::Reset),
        req(7, Operation::Query),
    ]
}

/// A request of each extension's shape (issue 13), for `proto_decode`'s seeds.
pub fn sample_extended_requests() -> Vec<Vec<u8>> {
    use pvirq_proto::{IndexList, Indices, Le32, RetargetTo, Targeting};
    let t = [Target::new(0, 0x40), Target::new(1, 0x41)];
    let list = [Le32::new(1), Le32::new(5)];
    let Ok(list) = IndexList::new(&list) else {
        return Vec::new();
    };
    let listed = Indices::List {
        kind: Kind::MsiX,
        indices: list,
    };
    let alloc = |index, targeting, targets| Alloc {
        kind: Kind::MsiX,
        index,
        min: 1,
        max: 4,
        pasid: None,
        targeting,
        targets,
    };
    let ops = [
        Operation::Alloc(alloc(IndexSpec::AnyContiguous, Targeting::Spread, &t)),
        Operation::Alloc(alloc(IndexSpec::At(8), Targeting::Parked, &[])),
        Operation::Free(listed),
        Operation::Retarget(Retarget {
            indices: listed,
            to: RetargetTo::Targets(&t),
        }),
        Operation::Retarget(Retarget {
            indices: IndexRange {
                kind: Kind::MsiX,
                first: 0,
                count: 2,
            }
            .into(),
            to: RetargetTo::Park,
        }),
    ];
    ops.into_iter()
        .map(|op| {
            encode(&Request {
                device: 0,
                tag: 0x99,
                op,
            })
        })
        .collect()
}

/// Representative inputs: the seeds of the corpus.
pub fn seeds() -> Vec<DeviceInput> {
    let requests = sample_requests();
    let chain = |request: &Vec<u8>, replies: Vec<u16>| ChainIn {
        request: Blob(request.clone()),
        split: 0,
        replies,
        order: 0,
    };
    let all: Vec<ChainIn> = requests
        .iter()
        .map(|r| chain(r, vec![24 + 16 * 4]))
        .collect();
    let base = DeviceInput {
        queue_size: 4,
        features_off: 0,
        quota: 16,
        chains: all,
        ..DeviceInput::default()
    };
    let mut odd = base.clone();
    // Split requests, replies over several buffers, too small, none, and out of order.
    odd.chains = vec![
        ChainIn {
            split: 5,
            replies: vec![8, 16, 64],
            ..chain(&requests[1], vec![])
        },
        chain(&requests[3], vec![10]),
        chain(&requests[2], vec![24]),
        chain(&requests[0], vec![]),
        ChainIn {
            order: 1,
            ..chain(&requests[4], vec![64])
        },
    ];
    let mut raw = base.clone();
    // After the good chains: one out of guest memory, then a descriptor loop.
    raw.descs = vec![
        DescIn {
            index: 12,
            addr: 0x8000,
            len: 16,
            flags: F_NEXT,
            next: 12,
        },
        DescIn {
            index: 13,
            addr: 0xFFFF_FF00,
            len: 0x1000,
            flags: F_WRITE,
            next: 0,
        },
    ];
    raw.avail = vec![13, 12, 0x7FFF];
    let mut again = base.clone();
    again.republish = 2;
    again.features_off = 0b10110;
    again.quota = 3;
    let mut poked = base.clone();
    poked.pokes = vec![Poke {
        addr: (DATA + 64) as u32,
        bytes: Blob(vec![0xFF; 8]),
    }];
    // Last: an available index far ahead of the ring (the device must refuse the ring).
    let mut wild = base.clone();
    wild.avail_extra = 1000;
    vec![base, odd, raw, again, poked, wild]
}
