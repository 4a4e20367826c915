//! Target `guest_driver`: the guest library against a fake device that answers with
//! fuzzer-chosen used ids, used lengths and response bytes (well-formed responses with
//! chosen fields, patched ones, refusals, or raw bytes), or not at all, on a channel with
//! the extension bits the input chooses (none: a version-1 driver). The driver must never
//! panic or read out of bounds, and what it returns as success must keep its own promises
//! (grant counts within `min..=max`, MSI powers of two, distinct indices, fixed indices in
//! order, one run for `ANY_CONTIGUOUS`, records parked and with the PASID as asked,
//! posted only if negotiated, FREE/RETARGET counts equal to what was named).

mod fake;

pub use fake::{Fake, FakeTransport, kind};

use crate::memory::{DirtyMemory, ScratchMemory};
use crate::wire::Blob;
use crate::wire_struct;
use pvirq_guest::test_utils::GuestMemoryHal;
use pvirq_guest::{Driver, Hal, Options, PAGE_SIZE, PhysAddr, index_list};
use pvirq_proto::{
    Alloc, Grant, GrantInfo, GrantMode, IndexRange, IndexSpec, Indices, Kind, Le32, Operation,
    Target, Targeting, feature,
};
use std::cell::Cell;
use std::ptr::NonNull;
use std::rc::Rc;
use vm_memory::GuestAddress;
use vm_memory::bitmap::AtomicBitmap;

const MEM_SIZE: usize = 4 << 20;
const DMA_BASE: u64 = 1 << 20;

wire_struct! {
    /// How the fake answers one request.
    pub struct ReplyIn {
        /// Bits 0–1: 0 raw bytes, 1 a well-formed OK (with INFO, `detail` bit 4 makes its
        /// grants posted, bit 5 flips their parked flag, bit 6 drops their PASID), 2 a
        /// refusal, 3 no answer.
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
        /// submit + poll + take, device_info, alloc_parked, alloc_spread, alloc
        /// ANY_CONTIGUOUS, activate / deactivate, free_indices (modulo 14).
        pub op: u8,
        /// Device handle.
        pub device: u8,
        /// Kind (modulo 3).
        pub kind: u8,
        /// Bit 0: ANY_INDEX; bit 1: PASID; bit 2: a grant buffer one short; bit 3: a
        /// `Grant` buffer (else `GrantInfo`); bit 4: an index list (else a run); bit 5:
        /// deactivate (else activate).
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
        /// Extension bits the driver asks for and the device offers: bit `n` is feature
        /// bit `n + 5` (APIC_ID .. INDEX_LIST), bit 8 `ACCESS_PLATFORM`; 0 is a version-1
        /// driver.
        pub extensions: u16,
    }
}

/// The extension feature bits `bits` selects (see [`DriverInput::extensions`]).
pub fn extension_features(bits: u16) -> u64 {
    (u64::from(bits & 0xFF) << 5)
        | if bits & 0x100 != 0 {
            feature::ACCESS_PLATFORM
        } else {
            0
        }
}

/// The guest memory HAL, which also notes the end of the highest page it handed out: the
/// driver writes those pages through host pointers, which the dirty log does not see, so
/// the harness zeroes them itself afterwards.
pub(crate) struct TrackedHal {
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

pub(crate) type FuzzDriver = Driver<TrackedHal, FakeTransport>;

thread_local! {
    /// Guest memory, mapped once per process and zero again after every input.
    static MEMORY: ScratchMemory = ScratchMemory::new(MEM_SIZE as u64);
}

/// What a successful ALLOC promises (spec §4.5, §8), whichever layout it came in.
fn check_grants(driver: &FuzzDriver, alloc: &Alloc<'_>, grants: &[GrantInfo], info: bool) {
    let n = grants.len();
    assert!((usize::from(alloc.min)..=usize::from(alloc.max)).contains(&n));
    assert!(alloc.kind != Kind::Msi || n.is_power_of_two());
    let indices: Vec<u32> = grants.iter().map(|g| g.index()).collect();
    for (i, index) in indices.iter().enumerate() {
        assert!(!indices[..i].contains(index), "index {index} granted twice");
        if let IndexSpec::At(first) = alloc.index {
            assert_eq!(u64::from(*index), u64::from(first) + i as u64);
        }
    }
    if alloc.index == IndexSpec::AnyContiguous {
        let lowest = indices.iter().min().copied().unwrap_or(0);
        assert!(
            indices
                .iter()
                .all(|i| u64::from(*i) < u64::from(lowest) + n as u64)
        );
    }
    if info {
        for g in grants {
            assert_eq!(g.parked(), alloc.targeting == Targeting::Parked);
            assert_eq!(g.pasid(), alloc.pasid);
            assert!(g.mode() == GrantMode::Remapped || driver.has(feature::POSTED));
        }
    }
}

/// Runs `alloc` into a `Grant` or a `GrantInfo` buffer (`flags` bit 3), one entry short
/// with bit 2; checks what it returns.
fn alloc_into(driver: &mut FuzzDriver, device: u32, alloc: Alloc<'_>, flags: u8) -> bool {
    let short = usize::from(flags & 4 == 4);
    let info = driver.has(feature::INFO);
    if flags & 8 != 0 {
        let n = driver
            .grant_entries::<Grant>(alloc.max)
            .saturating_sub(short);
        let mut grants = vec![Grant::new(0, Default::default()); n];
        let Ok(a) = driver.alloc(device, alloc, &mut grants) else {
            return false;
        };
        let as_info: Vec<GrantInfo> = a.grants.iter().map(|g| GrantInfo::from_grant(*g)).collect();
        check_grants(driver, &alloc, &as_info, false);
    } else {
        let n = usize::from(alloc.max).saturating_sub(short);
        let mut grants = vec![GrantInfo::from_grant(Grant::new(0, Default::default())); n];
        let Ok(a) = driver.alloc(device, alloc, &mut grants) else {
            return false;
        };
        let got = a.grants.to_vec();
        check_grants(driver, &alloc, &got, info);
    }
    true
}

/// One call; whether it succeeded.
pub(crate) fn call(driver: &mut FuzzDriver, op: &OpIn) -> bool {
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
    let range = IndexRange {
        kind,
        first: op.first,
        count: u16::from(op.min),
    };
    // A list of `min` indices from `first`, three apart (out of order once they wrap).
    let list: Vec<Le32> = (0..u32::from(op.min))
        .map(|i| Le32::new(op.first.wrapping_add(3 * i)))
        .collect();
    let indices = if op.flags & 16 != 0 {
        index_list(kind, &list)
    } else {
        Ok(Indices::Run(range))
    };
    let alloc = Alloc {
        kind,
        index,
        min,
        max,
        pasid,
        targeting: Targeting::PerVector,
        targets: &targets,
    };
    match op.op % 14 {
        0 => driver.query(device).is_ok(),
        1 => alloc_into(driver, device, alloc, op.flags),
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
        7 => {
            let Ok(token) = driver.submit(device, Operation::Query) else {
                return false;
            };
            let _ = driver.handle_interrupt();
            let _ = driver.poll();
            let _ = driver.is_complete(token);
            let mut reply = vec![0; driver.max_reply_len()];
            matches!(driver.take(token, &mut reply), Ok(Some(_)))
        }
        8 => driver.device_info(device).is_ok(),
        9 => {
            let parked = Alloc {
                targeting: Targeting::Parked,
                targets: &[],
                ..alloc
            };
            alloc_into(driver, device, parked, op.flags)
        }
        10 => {
            let spread = Alloc {
                targeting: Targeting::Spread,
                ..alloc
            };
            alloc_into(driver, device, spread, op.flags)
        }
        11 => {
            let run = Alloc {
                index: IndexSpec::AnyContiguous,
                ..alloc
            };
            alloc_into(driver, device, run, op.flags)
        }
        12 => {
            let Ok(indices) = indices else {
                return false;
            };
            let done = if op.flags & 32 != 0 {
                driver.deactivate(device, indices)
            } else {
                driver.activate(device, indices, &targets)
            };
            let Ok(done) = done else {
                return false;
            };
            assert_eq!(done.count, u32::from(indices.count()));
            true
        }
        _ => {
            let Ok(indices) = indices else {
                return false;
            };
            let Ok(done) = driver.free_indices(device, indices) else {
                return false;
            };
            assert_eq!(done.count, u32::from(indices.count()));
            true
        }
    }
}

/// The device configuration the inputs describe.
pub(crate) fn config_bytes(max_batch: u16, version: u16) -> [u8; 16] {
    let mut config = [0u8; 16];
    let version = if version == 0 {
        pvirq_proto::PROTOCOL_VERSION
    } else {
        version
    };
    config[0..2].copy_from_slice(&version.to_le_bytes());
    config[2..4].copy_from_slice(&max_batch.to_le_bytes());
    config[4..8].copy_from_slice(&4u32.to_le_bytes());
    config[8..12].copy_from_slice(&64u32.to_le_bytes());
    config[12..16].copy_from_slice(&2u32.to_le_bytes());
    config
}

/// Runs `f` on the process's guest memory and a HAL over its upper part, then zeroes what
/// the input wrote (the dirty log, and the pages the HAL handed out).
pub(crate) fn with_memory<R>(f: impl FnOnce(DirtyMemory, TrackedHal) -> R) -> R {
    MEMORY.with(|memory| {
        let high = Rc::new(Cell::new(DMA_BASE));
        let hal = TrackedHal {
            inner: GuestMemoryHal::new(
                memory.mem().clone(),
                GuestAddress(DMA_BASE),
                MEM_SIZE as u64 - DMA_BASE,
            ),
            high: Rc::clone(&high),
        };
        let result = f(memory.mem().clone(), hal);
        memory.reset(Some(DMA_BASE..high.get()));
        if cfg!(test) {
            assert!(memory.is_zero(), "guest memory not zero after the input");
        }
        result
    })
}

/// Driver options asking for `features`, never waiting long.
pub(crate) fn options(features: u64, max_batch: u16) -> Options {
    Options {
        features,
        max_batch: if max_batch == 0 {
            pvirq_proto::MAX_BATCH_LIMIT
        } else {
            max_batch
        },
        spin_limit: Some(8),
        reset_spins: 4,
    }
}

/// Runs one input; how many calls succeeded.
pub fn run(input: &DriverInput) -> usize {
    with_memory(|mem, hal| run_in(mem, hal, input))
}

fn run_in(mem: DirtyMemory, hal: TrackedHal, input: &DriverInput) -> usize {
    let extensions = extension_features(input.extensions);
    let mut offered = (feature::V1 | extensions) & !u64::from(input.features_off & 0x1F);
    if input.features_off & 0x80 != 0 {
        offered &= !feature::VERSION_1;
    }
    let config = config_bytes(input.max_batch, input.version);
    let mut fake = Fake::new(
        mem,
        offered,
        config,
        input.replies.iter().cloned().collect(),
    );
    fake.queue_max = input.queue_max;
    let options = options(feature::V1 | extensions, input.option_batch);
    let Ok(mut driver) = FuzzDriver::new(hal, FakeTransport::new(fake), options) else {
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
        extensions: 0,
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
    // Every extension: the irq-domain calls, both grant layouts, lists.
    let mut extended = base.clone();
    extended.extensions = 0x1FF;
    extended.ops = vec![
        op(8, 0, 0, 0, 0, 0, 0),
        op(1, 1, 1, 0, 1, 4, 4),
        op(1, 1, 8, 8, 2, 2, 2),
        op(9, 1, 1, 0, 1, 4, 0),
        op(10, 1, 1, 0, 1, 6, 2),
        op(11, 1, 1 | 8, 0, 3, 3, 3),
        op(12, 1, 16, 0, 2, 0, 2),
        op(12, 1, 16 | 32, 0, 2, 0, 0),
        op(13, 1, 16, 4, 3, 0, 0),
        op(9, 2, 1 | 2, 0, 1, 2, 0),
    ];
    // Counts each call accepts (`count % (max + 2)` grants); QUERY names every kind.
    extended.replies = [0, 3, 2, 4, 5, 3, 0, 0, 0, 2].map(ok).to_vec();
    extended.replies[0].detail = 7;
    // 64 MSI-X entries and 16 IMS slots: the driver checks later grants against them.
    extended.replies[0].info = 16 << 16 | 64;
    let mut hostile_records = extended.clone();
    for (i, reply) in hostile_records.replies.iter_mut().enumerate().skip(1) {
        reply.detail = [0x10, 0x20, 0x40][i % 3];
    }
    vec![base, refused, lying, odd_device, extended, hostile_records]
}
