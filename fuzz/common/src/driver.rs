//! Target `guest_driver`: the guest library against a fake device that answers with
//! fuzzer-chosen used ids, used lengths and response bytes (well-formed responses with
//! chosen fields, patched ones, refusals, or raw bytes), or not at all. The driver must
//! never panic or read out of bounds, and what it returns as success must keep its own
//! promises (grant counts within `min..=max`, MSI powers of two, fixed indices in order,
//! FREE/RETARGET counts equal to the run).

use crate::memory::{DirtyMemory, ScratchMemory};
use crate::wire::Blob;
use crate::wire_struct;
use pvirq_guest::test_utils::GuestMemoryHal;
use pvirq_guest::{Driver, Hal, Options, PAGE_SIZE, PhysAddr, QueueAddrs, Transport};
use pvirq_proto::{
    DeviceInfo, Grant, GrantSlice, IndexRange, IndexSpec, Kind, KindSet, Negotiated, Operation,
    Outcome, Refusal, RemappableMsi, Request, Response, Target, Targeting, feature,
};
use std::cell::Cell;
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::rc::Rc;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 4 << 20;
const DMA_BASE: u64 = 1 << 20;
/// Largest request the fake reads.
const MAX_REQUEST: usize = 64 << 10;

wire_struct! {
    /// How the fake answers one request.
    pub struct ReplyIn {
        /// Bits 0–1: 0 raw bytes, 1 a well-formed OK, 2 a refusal, 3 no answer.
        /// Bit 2: used length `used_len` instead of the bytes written. Bit 3: used id
        /// `id` instead of the chain's head. Bit 4: the used index jumps one further.
        pub mode: u8,
        /// Used id (with bit 3).
        pub id: u32,
        /// Used length (with bit 2).
        pub used_len: u32,
        /// OK: grants (modulo max + 2) or the count; refusal: the status.
        pub count: u8,
        /// Refusal detail; QUERY kinds.
        pub detail: u8,
        /// Refusal info; QUERY numbers.
        pub info: u32,
        /// Byte patches `(offset modulo the length, xor)` applied last.
        pub patches: Vec<(u8, u8)>,
        /// Raw reply (mode 0).
        pub raw: Blob,
    }
}

wire_struct! {
    /// One driver call.
    pub struct OpIn {
        /// QUERY, alloc, alloc_irq_vectors, alloc_irq_at, free, retarget, reset_device,
        /// submit + poll + take (modulo 8).
        pub op: u8,
        /// Device handle.
        pub device: u8,
        /// Kind (modulo 3).
        pub kind: u8,
        /// Bit 0: ANY_INDEX; bit 1: PASID; bit 2: a grant buffer one short.
        pub flags: u8,
        /// First index.
        pub first: u32,
        /// Min (or run count).
        pub min: u8,
        /// Max.
        pub max: u8,
        /// PASID.
        pub pasid: u32,
        /// Targets `(vcpu, vector)`.
        pub targets: Vec<(u8, u8)>,
    }
}

wire_struct! {
    /// A whole `guest_driver` input.
    pub struct DriverInput {
        /// Offered feature bits 0–4 cleared; bit 7: offer no VERSION_1.
        pub features_off: u8,
        /// Configuration: `max_batch`.
        pub max_batch: u16,
        /// Configuration: version (0: the right one).
        pub version: u16,
        /// Largest queue size the device offers.
        pub queue_max: u16,
        /// Driver option `max_batch` (0: the default).
        pub option_batch: u16,
        /// The answers, in order (when they run out, requests go unanswered).
        pub replies: Vec<ReplyIn>,
        /// The calls.
        pub ops: Vec<OpIn>,
    }
}

struct Fake {
    mem: DirtyMemory,
    status: u8,
    offered: u64,
    config: [u8; 16],
    queue_max: u16,
    queue: Option<(u16, QueueAddrs)>,
    last_avail: u16,
    used_idx: u16,
    interrupt: u32,
    replies: VecDeque<ReplyIn>,
}

impl Fake {
    fn read<T: vm_memory::ByteValued>(&self, addr: u64) -> Option<T> {
        self.mem.read_obj(GuestAddress(addr)).ok()
    }

    fn serve_all(&mut self) {
        let Some((size, addrs)) = self.queue else {
            return;
        };
        let Some(avail_idx) = self.read::<u16>(addrs.driver + 2) else {
            return;
        };
        for _ in 0..size {
            if self.last_avail == avail_idx {
                return;
            }
            let slot = u64::from(self.last_avail % size);
            self.last_avail = self.last_avail.wrapping_add(1);
            if let Some(head) = self.read::<u16>(addrs.driver + 4 + 2 * slot) {
                self.serve(size, addrs, head);
            }
        }
    }

    fn serve(&mut self, size: u16, addrs: QueueAddrs, head: u16) {
        let mut request = Vec::new();
        let mut writable: Vec<(u64, u32)> = Vec::new();
        let mut index = head;
        for _ in 0..size {
            let at = addrs.desc + 16 * u64::from(index % size);
            let (Some(addr), Some(len), Some(flags), Some(next)) = (
                self.read::<u64>(at),
                self.read::<u32>(at + 8),
                self.read::<u16>(at + 12),
                self.read::<u16>(at + 14),
            ) else {
                return;
            };
            if flags & 2 != 0 {
                writable.push((addr, len));
            } else if request.len() + len as usize <= MAX_REQUEST {
                let mut buf = vec![0u8; len as usize];
                if self.mem.read_slice(&mut buf, GuestAddress(addr)).is_err() {
                    return;
                }
                request.extend(buf);
            }
            if flags & 1 == 0 {
                break;
            }
            index = next;
        }
        let Some(reply) = self.replies.pop_front() else {
            return;
        };
        if reply.mode & 3 == 3 {
            return;
        }
        let mut bytes = answer(&reply, &request);
        if !bytes.is_empty() {
            let n = bytes.len();
            for (offset, xor) in &reply.patches {
                bytes[usize::from(*offset) % n] ^= xor;
            }
        }
        let mut written = 0usize;
        for (addr, len) in writable {
            let n = (len as usize).min(bytes.len() - written);
            if n == 0 {
                break;
            }
            if self
                .mem
                .write_slice(&bytes[written..written + n], GuestAddress(addr))
                .is_err()
            {
                break;
            }
            written += n;
        }
        let len = if reply.mode & 4 != 0 {
            reply.used_len
        } else {
            written as u32
        };
        let id = if reply.mode & 8 != 0 {
            reply.id
        } else {
            u32::from(head)
        };
        let at = addrs.device + 4 + 8 * u64::from(self.used_idx % size);
        let _ = self.mem.write_obj(id, GuestAddress(at));
        let _ = self.mem.write_obj(len, GuestAddress(at + 4));
        self.used_idx = self
            .used_idx
            .wrapping_add(if reply.mode & 16 != 0 { 2 } else { 1 });
        let _ = self
            .mem
            .write_obj(self.used_idx, GuestAddress(addrs.device + 2));
        self.interrupt |= 1;
    }
}

/// The reply bytes `reply` describes for `request`.
fn answer(reply: &ReplyIn, request: &[u8]) -> Vec<u8> {
    let Some(header) = Request::peek_header(request) else {
        return reply.raw.0.clone();
    };
    let (opcode, device, tag) = (header.opcode, header.device.get(), header.tag.get());
    let decoded = Request::decode(request, Negotiated::v1(pvirq_proto::MAX_BATCH_LIMIT)).ok();
    let count = u32::from(reply.count);
    let mut grants: Vec<Grant> = Vec::new();
    let outcome = match (reply.mode & 3, decoded.map(|r| r.op)) {
        (1, Some(Operation::Query)) => Outcome::Queried {
            info: DeviceInfo {
                kinds: KindSet::from_bits(u32::from(reply.detail & 7)).unwrap_or(KindSet::EMPTY),
                msi_max: 8,
                msix_table_size: reply.info as u16,
                ims_slots: reply.info >> 16,
                granted: count,
                vm_quota: reply.info,
                available: count,
                ext: None,
            },
            quota_remaining: reply.info,
        },
        (1, Some(Operation::Alloc(a))) => {
            let n = count % (u32::from(a.max) + 2);
            grants = (0..n)
                .map(|i| {
                    let index = match a.index {
                        IndexSpec::Any | IndexSpec::AnyContiguous => i,
                        IndexSpec::At(f) => f.wrapping_add(i),
                    };
                    let msg = RemappableMsi {
                        handle: i as u16,
                        subhandle: Some(0),
                    };
                    Grant::new(index, msg.message())
                })
                .collect();
            Outcome::Allocated {
                grants: GrantSlice::Basic(&[]),
                quota_remaining: reply.info,
            }
        }
        (1, Some(Operation::Free(r))) => Outcome::Freed {
            count: if reply.detail & 1 == 0 {
                u32::from(r.count())
            } else {
                count
            },
            quota_remaining: reply.info,
        },
        (1, Some(Operation::Retarget(r))) => Outcome::Retargeted {
            count: if reply.detail & 1 == 0 {
                u32::from(r.indices.count())
            } else {
                count
            },
            quota_remaining: reply.info,
        },
        (1, Some(Operation::Reset)) => Outcome::Reset {
            count,
            quota_remaining: reply.info,
        },
        // Version 1's codes: the driver negotiates no extension (issue 13).
        (2, _) => match Refusal::from_wire(reply.count, reply.detail, reply.info)
            .filter(|r| !r.needs_info())
        {
            Some(r) => Outcome::Refused(r),
            None => return reply.raw.0.clone(),
        },
        _ => return reply.raw.0.clone(),
    };
    let outcome = match outcome {
        Outcome::Allocated {
            quota_remaining, ..
        } => Outcome::Allocated {
            grants: GrantSlice::Basic(&grants),
            quota_remaining,
        },
        other => other,
    };
    let response = Response {
        opcode,
        device,
        tag,
        outcome,
    };
    let mut bytes = vec![0u8; response.encoded_len()];
    match response.encode(&mut bytes) {
        Ok(n) => {
            bytes.truncate(n);
            bytes
        }
        Err(_) => reply.raw.0.clone(),
    }
}

/// The fake behind the driver's `Transport`.
struct FakeTransport(Fake);

impl Transport for FakeTransport {
    fn device_id(&self) -> u32 {
        pvirq_proto::VIRTIO_ID_PVIRQ
    }
    fn device_features(&mut self) -> u64 {
        self.0.offered
    }
    fn set_driver_features(&mut self, _features: u64) {}
    fn status(&self) -> u8 {
        self.0.status
    }
    fn set_status(&mut self, status: u8) {
        self.0.status = status;
        if status == 0 {
            self.0.queue = None;
            self.0.last_avail = 0;
            self.0.used_idx = 0;
        }
    }
    fn max_queue_size(&mut self, _queue: u16) -> u16 {
        self.0.queue_max
    }
    fn queue_ready(&mut self, _queue: u16) -> bool {
        self.0.queue.is_some()
    }
    fn setup_queue(&mut self, _queue: u16, size: u16, addrs: QueueAddrs) {
        self.0.queue = Some((size, addrs));
    }
    fn notify(&mut self, _queue: u16) {
        self.0.serve_all();
    }
    fn ack_interrupt(&mut self) -> u32 {
        std::mem::take(&mut self.0.interrupt)
    }
    fn config_generation(&self) -> u32 {
        0
    }
    fn read_config_u16(&self, offset: usize) -> u16 {
        let b = self.0.config.get(offset..offset + 2).unwrap_or(&[0, 0]);
        u16::from_le_bytes([b[0], b[1]])
    }
    fn read_config_u32(&self, offset: usize) -> u32 {
        let b = self.0.config.get(offset..offset + 4).unwrap_or(&[0; 4]);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

fn kind(byte: u8) -> Kind {
    match byte % 3 {
        0 => Kind::Msi,
        1 => Kind::MsiX,
        _ => Kind::Ims,
    }
}

/// The guest memory HAL, which also notes the end of the highest page it handed out: the
/// driver writes those pages through host pointers, which the dirty log does not see, so
/// the harness zeroes them itself afterwards.
struct TrackedHal {
    inner: GuestMemoryHal<AtomicBitmap>,
    high: Rc<Cell<u64>>,
}

// SAFETY: every allocation is the inner HAL's, with its guarantees; noting where it ends
// changes nothing about the memory handed out.
unsafe impl Hal for TrackedHal {
    fn dma_alloc(&self, pages: usize) -> Option<(PhysAddr, NonNull<u8>)> {
        let (paddr, vaddr) = self.inner.dma_alloc(pages)?;
        let end = paddr.saturating_add((pages.saturating_mul(PAGE_SIZE)) as u64);
        self.high.set(self.high.get().max(end));
        Some((paddr, vaddr))
    }

    unsafe fn dma_dealloc(&self, paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) {
        // SAFETY: the caller's promises are the inner HAL's preconditions.
        unsafe { self.inner.dma_dealloc(paddr, vaddr, pages) }
    }
}

type FuzzDriver = Driver<TrackedHal, FakeTransport>;

thread_local! {
    /// Guest memory, mapped once per process and zero again after every input.
    static MEMORY: ScratchMemory = ScratchMemory::new(MEM_SIZE as u64);
}

/// One call; whether it succeeded.
fn call(driver: &mut FuzzDriver, op: &OpIn) -> bool {
    let device = u32::from(op.device);
    let kind = kind(op.kind);
    let targets: Vec<Target> = op
        .targets
        .iter()
        .map(|(c, v)| Target::new(u32::from(*c), *v))
        .collect();
    let index = if op.flags & 1 == 1 {
        IndexSpec::Any
    } else {
        IndexSpec::At(op.first)
    };
    let pasid = (op.flags & 2 == 2).then_some(op.pasid);
    let (min, max) = (u16::from(op.min), u16::from(op.max));
    let short = usize::from(op.flags & 4 == 4);
    let range = IndexRange {
        kind,
        first: op.first,
        count: u16::from(op.min),
    };
    match op.op % 8 {
        0 => driver.query(device).is_ok(),
        1 => {
            let n = usize::from(max).saturating_sub(short);
            let mut grants = vec![Grant::new(0, Default::default()); n];
            let alloc = pvirq_proto::Alloc {
                kind,
                index,
                min,
                max,
                pasid,
                targeting: Targeting::PerVector,
                targets: &targets,
            };
            let Ok(a) = driver.alloc(device, alloc, &mut grants) else {
                return false;
            };
            let count = a.grants.len();
            assert!((usize::from(min)..=usize::from(max)).contains(&count));
            assert!(kind != Kind::Msi || count.is_power_of_two());
            if let IndexSpec::At(first) = index {
                for (i, g) in a.grants.iter().enumerate() {
                    assert_eq!(u64::from(g.index()), u64::from(first) + i as u64);
                }
            }
            true
        }
        2 => {
            let mut grants = vec![Grant::new(0, Default::default()); targets.len()];
            let Ok(a) = driver.alloc_irq_vectors(device, kind, min, &targets, &mut grants) else {
                return false;
            };
            assert!((usize::from(min)..=targets.len()).contains(&a.grants.len()));
            true
        }
        3 => {
            let target = targets.first().copied().unwrap_or(Target::new(0, 0x20));
            driver
                .alloc_irq_at(device, kind, index, target, pasid)
                .is_ok()
        }
        4 => {
            let Ok(done) = driver.free(device, range) else {
                return false;
            };
            assert_eq!(done.count, u32::from(range.count));
            true
        }
        5 => {
            let Ok(done) = driver.retarget(device, range, &targets) else {
                return false;
            };
            assert_eq!(done.count, u32::from(range.count));
            true
        }
        6 => driver.reset_device(device).is_ok(),
        _ => {
            let Ok(token) = driver.submit(device, Operation::Query) else {
                return false;
            };
            let _ = driver.handle_interrupt();
            let _ = driver.poll();
            let _ = driver.is_complete(token);
            let mut reply = vec![0; driver.max_reply_len()];
            matches!(driver.take(token, &mut reply), Ok(Some(_)))
        }
    }
}

/// Runs one input; how many calls succeeded.
pub fn run(input: &DriverInput) -> usize {
    MEMORY.with(|memory| {
        let high = Rc::new(Cell::new(DMA_BASE));
        let ok = run_in(memory.mem(), &high, input);
        memory.reset(Some(DMA_BASE..high.get()));
        if cfg!(test) {
            assert!(memory.is_zero(), "guest memory not zero after the input");
        }
        ok
    })
}

fn run_in(mem: &DirtyMemory, high: &Rc<Cell<u64>>, input: &DriverInput) -> usize {
    let mut offered = feature::V1 & !u64::from(input.features_off & 0x1F);
    if input.features_off & 0x80 != 0 {
        offered &= !feature::VERSION_1;
    }
    let mut config = [0u8; 16];
    let version = if input.version == 0 {
        pvirq_proto::PROTOCOL_VERSION
    } else {
        input.version
    };
    config[0..2].copy_from_slice(&version.to_le_bytes());
    config[2..4].copy_from_slice(&input.max_batch.to_le_bytes());
    config[4..8].copy_from_slice(&4u32.to_le_bytes());
    config[8..12].copy_from_slice(&64u32.to_le_bytes());
    config[12..16].copy_from_slice(&2u32.to_le_bytes());
    let fake = Fake {
        mem: mem.clone(),
        status: 0,
        offered,
        config,
        queue_max: input.queue_max,
        queue: None,
        last_avail: 0,
        used_idx: 0,
        interrupt: 0,
        replies: input.replies.iter().cloned().collect(),
    };
    let hal = TrackedHal {
        inner: GuestMemoryHal::new(
            mem.clone(),
            GuestAddress(DMA_BASE),
            MEM_SIZE as u64 - DMA_BASE,
        ),
        high: Rc::clone(high),
    };
    let options = Options {
        features: feature::V1,
        max_batch: if input.option_batch == 0 {
            pvirq_proto::MAX_BATCH_LIMIT
        } else {
            input.option_batch
        },
        spin_limit: Some(8),
        reset_spins: 4,
    };
    let Ok(mut driver) = FuzzDriver::new(hal, FakeTransport(fake), options) else {
        return 0;
    };
    input
        .ops
        .iter()
        .take(64)
        .filter(|op| call(&mut driver, op))
        .count()
}

/// Representative inputs: the seeds of the corpus.
pub fn seeds() -> Vec<DriverInput> {
    let ok = |count| ReplyIn {
        mode: 1,
        count,
        info: 10,
        ..ReplyIn::default()
    };
    let op = |op, kind, flags, first, min, max, n: usize| OpIn {
        op,
        device: 0,
        kind,
        flags,
        first,
        min,
        max,
        pasid: 3,
        targets: (0..n).map(|i| (i as u8 % 2, 0x40 + i as u8)).collect(),
    };
    let ops = vec![
        op(0, 0, 0, 0, 0, 0, 0),
        op(1, 1, 1, 0, 1, 4, 4),
        op(1, 1, 0, 8, 2, 2, 2),
        op(1, 0, 1, 0, 2, 4, 4),
        op(2, 2, 2, 0, 1, 3, 3),
        op(3, 2, 3, 0, 1, 1, 1),
        op(4, 1, 0, 0, 2, 0, 0),
        op(5, 1, 0, 0, 2, 0, 2),
        op(6, 0, 0, 0, 0, 0, 0),
        op(7, 0, 0, 0, 0, 0, 0),
    ];
    let base = DriverInput {
        features_off: 0,
        max_batch: 64,
        version: 0,
        queue_max: 256,
        option_batch: 0,
        replies: (0..10).map(|i| ok(2 + i)).collect(),
        ops,
    };
    let mut refused = base.clone();
    refused.replies = (1..=11)
        .map(|status| ReplyIn {
            mode: 2,
            count: status,
            detail: 1,
            info: 3,
            ..ReplyIn::default()
        })
        .collect();
    let mut lying = base.clone();
    lying.replies = vec![
        ReplyIn {
            mode: 1 | 4,
            used_len: 0xFFFF_FFFF,
            ..ok(1)
        },
        ReplyIn {
            mode: 1 | 8,
            id: 7,
            ..ok(2)
        },
        ReplyIn {
            mode: 1 | 16,
            ..ok(9)
        },
        ReplyIn {
            patches: vec![(8, 1), (1, 0x80)],
            ..ok(4)
        },
        ReplyIn {
            mode: 0,
            raw: Blob(vec![2, 0, 0, 0, 0, 0, 0, 0, 1]),
            ..ReplyIn::default()
        },
        ReplyIn {
            mode: 3,
            ..ReplyIn::default()
        },
    ];
    // Then honest answers again: the driver must recover from the lies.
    lying.replies.extend((0..4).map(|i| ok(2 + i)));
    let mut odd_device = base.clone();
    odd_device.queue_max = 3;
    odd_device.max_batch = 2;
    odd_device.option_batch = 1;
    odd_device.features_off = 0b10101;
    vec![base, refused, lying, odd_device]
}
