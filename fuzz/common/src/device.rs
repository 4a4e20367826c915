//! Target `device_queue`: the host's virtio device fed arbitrary guest memory, ring state
//! and descriptor chains. Nothing may panic or hang; after every request the host's
//! invariants hold; another VM on the same host is untouched; a device reset releases
//! everything the VM held.
//!
//! The input also chooses which extension bits the driver negotiates (spec §2.2), so the
//! host's extended transactions are fuzzed as well as version 1's; with the event queue,
//! event buffers are laid out on queue 1 and the VMM changes the VM's limits and devices
//! between rounds (spec §12).
//!
//! The host, the bystander VM and the guest memory are built once per process ([`Rig`]);
//! each input gets its own VM (its quota is part of the input) and device, and must leave
//! the host holding exactly what the bystander holds, and the memory zero.

use crate::memory::{DirtyMemory, ScratchMemory};
use crate::wire::Blob;
use crate::wire_struct;
use pvirq_host::device::test_utils::{Buf, Driver, encode, vm};
use pvirq_host::model::{HostOccupancy, ModelConfig, ModelHost, RemapConfig};
use pvirq_host::{MmioInterrupt, PvirqDevice, Vm, VmOccupancy};
use pvirq_proto::{
    Alloc, IndexRange, IndexSpec, Kind, Operation, Request, Retarget, Target, Targeting, feature,
};
use std::cell::RefCell;
use std::sync::Arc;
use virtio_queue::Queue;
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Guest memory: 1 MiB.
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
        /// Extension bits the driver also negotiates: bits 0–7 are feature bits 5–12; bit
        /// 15 keeps a set whose dependencies are broken (the device must refuse it).
        pub extensions: u16,
        /// With the event queue: the lengths of the writable buffers offered on it.
        pub event_buffers: Vec<u16>,
        /// VMM changes made after each round of requests (see [`vmm_change`]).
        pub vmm: Vec<VmmIn>,
    }
}

wire_struct! {
    /// A change the VMM makes while the VM runs.
    pub struct VmmIn {
        /// 0: quota, 1: a device's share, 2: shared resources released elsewhere,
        /// 3: remove a device (modulo 4).
        pub op: u8,
        /// The device handle.
        pub device: u8,
        /// The new quota or share (a share of 0 means none).
        pub value: u8,
    }
}

/// Guest memory: the request queue's rings from 0, its buffers from [`DATA`].
const DATA_AREA: std::ops::Range<u64> = DATA..EVENT_DATA;
/// The event queue's rings (at most 64 entries: they end below [`DATA`]).
const EVENT_RING: u64 = 0x3000;
/// The event queue's buffers.
const EVENT_DATA: u64 = 0xC_0000;
/// The event queue's size (its `QueueNumMax`).
const EVENT_QUEUE_SIZE: u16 = 64;

/// The host's IRTEs per unit: the fuzzed VM's quota is at most 255 and the bystander holds
/// 2, so no input can tell this table from VT-d's 65,536 entries (allocation is lowest
/// first), and the table is built once per process anyway.
const IRTES: u32 = 1024;

/// What every input runs against, built once per process: the host, a bystander VM holding
/// grants of its own, the guest memory and the queue eventfd. Each input must hand all of
/// it back as it found it, which [`Rig::check_returned`] checks.
struct Rig {
    host: ModelHost,
    bystander: Vm,
    /// The bystander's occupancy and grants, which no input may change.
    bystander_state: (VmOccupancy, Grants, Grants),
    /// What the host holds with only the bystander's grants.
    baseline: HostOccupancy,
    memory: ScratchMemory,
    atomic: GuestMemoryAtomic<DirtyMemory>,
    /// Given to the device at activation and taken back at its reset.
    evt: Option<EventFd>,
}

type FuzzDevice = PvirqDevice<GuestMemoryAtomic<DirtyMemory>>;

type Grants = Vec<(Kind, u32, pvirq_host::grants::GrantRecord)>;

impl Rig {
    fn new() -> Self {
        let host = ModelHost::new(&ModelConfig {
            remap: RemapConfig {
                units: 1,
                entries_per_unit: IRTES,
            },
            ..ModelConfig::default()
        })
        .expect("the fuzz host");
        let bystander = vm(&host, 0x200, 8);
        let targets = [Target::new(1, 0x50), Target::new(0, 0x51)];
        bystander.call(&Request {
            device: 0,
            tag: 1,
            op: Operation::Alloc(Alloc::any(Kind::MsiX, 2, &targets)),
        });
        let bystander_state = (
            bystander.occupancy(),
            bystander.grants(0),
            bystander.grants(1),
        );
        assert_eq!(bystander_state.0.held, 2, "the bystander holds its grants");
        let memory = ScratchMemory::new(MEM_SIZE);
        let atomic = GuestMemoryAtomic::new(memory.mem().clone());
        Rig {
            baseline: host.occupancy(),
            host,
            bystander,
            bystander_state,
            memory,
            atomic,
            evt: None,
        }
    }

    /// After an input: the bystander untouched, the host back to the bystander's
    /// holdings with no other VM, the guest memory zero again.
    fn check_returned(&self) {
        check(&self.host, "after the input");
        assert_eq!(
            (
                self.bystander.occupancy(),
                self.bystander.grants(0),
                self.bystander.grants(1)
            ),
            self.bystander_state,
            "the fuzzed VM changed another VM's grants"
        );
        let now = self.host.occupancy();
        assert_eq!(
            (&now.units, now.vectors_used, now.vectors_free),
            (
                &self.baseline.units,
                self.baseline.vectors_used,
                self.baseline.vectors_free
            ),
            "the host holds more than the bystander's grants"
        );
        assert_eq!(now.vms, 1, "a VM outlived its input");
        if cfg!(test) {
            assert!(self.memory.is_zero(), "guest memory not zero after reset");
        }
    }
}

thread_local! {
    static RIG: RefCell<Rig> = RefCell::new(Rig::new());
}

fn check(host: &ModelHost, when: &str) {
    if let Err(errors) = host.check_invariants() {
        panic!("invariants broken {when}: {errors:#?}");
    }
}

/// Lays out and publishes what `input` describes through `drv`; the chains' heads and
/// what was published after them (what a republish offers again).
fn lay_out(drv: &mut Driver<'_, DirtyMemory>, input: &DeviceInput) -> Vec<u16> {
    let mut heads = Vec::new();
    for c in &input.chains {
        match chain(drv, c) {
            Some(head) => heads.push(head),
            None => break,
        }
    }
    for d in &input.descs {
        let raw = Descriptor::new(u64::from(d.addr), d.len, d.flags, d.next);
        drv.write_desc_wrapping(d.index, RawDescriptor::from(raw));
    }
    for head in &input.avail {
        drv.publish(*head);
    }
    let idx = drv.avail_idx();
    drv.set_avail_idx(idx.wrapping_add(input.avail_extra));
    let mem = drv.mem;
    for p in &input.pokes {
        let addr = u64::from(p.addr) % MEM_SIZE;
        let n = (p.bytes.0.len() as u64).min(MEM_SIZE - addr) as usize;
        let _ = mem.write_slice(&p.bytes.0[..n], GuestAddress(addr));
    }
    heads.extend(&input.avail);
    heads
}

/// Lays one well-formed chain out and offers it; `None` when the table or the data area
/// is full.
fn chain(drv: &mut Driver<'_, DirtyMemory>, c: &ChainIn) -> Option<u16> {
    let req = &c.request.0;
    let split = usize::from(c.split) % (req.len() + 1);
    let parts: Vec<&[u8]> = if split == 0 {
        vec![req]
    } else {
        vec![&req[..split], &req[split..]]
    };
    let mut bufs: Vec<Buf> = Vec::new();
    for part in &parts {
        let addr = drv.try_alloc(part.len() as u32)?;
        let _ = drv.mem.write_slice(part, GuestAddress(addr));
        bufs.push(Buf {
            addr,
            len: part.len() as u32,
            write: false,
        });
    }
    for len in &c.replies {
        let addr = drv.try_alloc(u32::from(*len))?;
        bufs.push(Buf {
            addr,
            len: u32::from(*len),
            write: true,
        });
    }
    if c.order & 1 == 1 && bufs.len() > 1 && bufs.last().is_some_and(|b| b.write) {
        let w = bufs.remove(parts.len());
        bufs.insert(0, w);
    }
    drv.try_offer(&bufs)
}

/// Processes one chain at a time until the queue is idle, checking the invariants after
/// every request; how many chains were returned.
fn drain(dev: &mut FuzzDevice, host: &ModelHost) -> usize {
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

/// What one input came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// Request chains the device returned.
    pub chains: usize,
    /// Event buffers it filled.
    pub events: usize,
}

/// Runs one input; how many chains the device returned and event buffers it filled.
pub fn run(input: &DeviceInput) -> Handled {
    RIG.with_borrow_mut(|rig| {
        let handled = run_on(rig, input);
        rig.memory.reset(None);
        rig.check_returned();
        handled
    })
}

fn run_on(rig: &mut Rig, input: &DeviceInput) -> Handled {
    // A VM per input (its quota is part of the input): building one costs little next to
    // the host, and everything it allocated is freed with it, which keeps libFuzzer's
    // malloc/free balance (its leak check reruns any input that ends with more mallocs).
    let mut dev = PvirqDevice::new(vm(&rig.host, 0x100, u32::from(input.quota))).expect("device");
    let handled = run_device(rig, &mut dev, input);
    if let Some(mut parts) = dev.reset() {
        rig.evt = parts.queue_evts.pop();
    }
    check(&rig.host, "after the device reset");
    assert_eq!(
        dev.vm().occupancy().held,
        0,
        "device reset left grants behind"
    );
    handled
}

fn run_device(rig: &mut Rig, dev: &mut FuzzDevice, input: &DeviceInput) -> Handled {
    let size = 1u16 << (input.queue_size % 9);
    let mut drv = Driver::with_data(rig.memory.mem(), size, DATA_AREA);
    let entries = lay_out(&mut drv, input);
    let Ok(queue) = drv.q.create_queue::<Queue>() else {
        return Handled::default();
    };
    let features = features(input);
    dev.ack_features(features);
    let evt = match rig.evt.take() {
        Some(evt) => evt,
        None => EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    };
    let mut queues = vec![queue];
    let mut evts = vec![evt];
    // The event queue, when negotiated: the driver's buffers laid out on queue 1.
    let mut events = None;
    if features & feature::EVENTS != 0 {
        let mut edrv = Driver::at(
            rig.memory.mem(),
            EVENT_RING,
            EVENT_QUEUE_SIZE,
            EVENT_DATA..MEM_SIZE,
        );
        for len in input
            .event_buffers
            .iter()
            .take(usize::from(EVENT_QUEUE_SIZE))
        {
            let Some(addr) = edrv.try_alloc(u32::from(*len)) else {
                break;
            };
            let buf = Buf {
                addr,
                len: u32::from(*len),
                write: true,
            };
            if edrv.try_offer(&[buf]).is_none() {
                break;
            }
        }
        let Ok(q1) = edrv.q.create_queue::<Queue>() else {
            return Handled::default();
        };
        queues.push(q1);
        evts.push(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        events = Some(edrv);
    }
    let irq = Arc::new(MmioInterrupt::new());
    if dev.activate(rig.atomic.clone(), irq, queues, evts).is_err() {
        // A broken feature set, a bad queue: nothing may be held.
        assert_eq!(
            dev.vm().occupancy().held,
            0,
            "a refused activation holds grants"
        );
        return Handled::default();
    }
    let mut chains = drain(dev, &rig.host);
    let mut changes = input.vmm.iter().take(16);
    for _ in 0..input.republish % 4 {
        // The driver offers the same chains again (heads the device already returned).
        for head in &entries {
            drv.publish(*head);
        }
        chains += drain(dev, &rig.host);
        if let Some(change) = changes.next() {
            vmm_change(dev, change);
            check(&rig.host, "after a VMM change");
        }
    }
    for change in changes {
        vmm_change(dev, change);
        check(&rig.host, "after a VMM change");
    }
    let mut written = 0;
    if let Some(edrv) = &events {
        // The driver notifies the event queue: the device writes what waits, bounded by the
        // buffers there are. (It also writes events itself, after each round of requests
        // and each VMM change: the used ring counts them all.)
        for _ in 0..MAX_CALLS {
            let done = dev.process_queue(1, usize::from(EVENT_QUEUE_SIZE));
            if done.chains == 0 && !done.more {
                break;
            }
        }
        check(&rig.host, "after the events");
        written = usize::from(edrv.used_idx());
    }
    Handled {
        chains,
        events: written,
    }
}

/// The features the driver acknowledges: version 1's minus `features_off`, plus the
/// extension bits `extensions` selects, with every bit whose prerequisite is missing
/// dropped (a driver never accepts such a set), unless bit 15 keeps the set as it is.
fn features(input: &DeviceInput) -> u64 {
    let mut features = (feature::V1 & !u64::from(input.features_off & 0x1F))
        | (u64::from(input.extensions & 0xFF) << 5);
    if input.extensions & 0x8000 == 0 {
        while let Some(bit) = feature::missing_dependency(features) {
            features &= !bit;
        }
    }
    features
}

/// A change the VMM makes to the live VM (spec §2.4, §3.7, §12): it may queue events,
/// never touch another VM, and never leave more held than the limits allow to grow.
fn vmm_change(dev: &mut FuzzDevice, change: &VmmIn) {
    let device = u32::from(change.device % 4);
    match change.op % 4 {
        0 => dev.set_quota(u32::from(change.value)),
        1 => {
            let share = (change.value != 0).then_some(u32::from(change.value));
            let _ = dev.set_device_share(device, share);
        }
        2 => dev.resources_changed(),
        _ => {
            let _ = dev.remove_device(device);
        }
    }
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
    // MSI-X and RETARGET off (IMS too would leave PASID without the bit it needs, which
    // the device refuses at activation, spec [DEV-23]: no chain would be handled).
    again.features_off = 0b10010;
    again.quota = 3;
    let mut poked = base.clone();
    poked.pokes = vec![Poke {
        addr: (DATA + 64) as u32,
        bytes: Blob(vec![0xFF; 8]),
    }];
    // The extensions: every new request shape, negotiated (bits 5-12 but POSTED, EVENTS),
    // with replies large enough for 24-byte records.
    let mut extended = base.clone();
    extended.queue_size = 5;
    extended.extensions = 0b1110_1011;
    extended.chains = requests
        .iter()
        .chain(sample_extended_requests().iter())
        .map(|r| chain(r, vec![24 + 24 * 4]))
        .collect();
    // The event queue: buffers on queue 1 and the VMM lowering the quota, releasing
    // resources elsewhere and removing a device between rounds.
    let mut events = extended.clone();
    events.extensions = 0b1111_1111;
    events.event_buffers = vec![32, 32, 16, 64, 32];
    events.republish = 2;
    events.vmm = vec![
        VmmIn {
            op: 0,
            device: 0,
            value: 2,
        },
        VmmIn {
            op: 2,
            device: 0,
            value: 0,
        },
        VmmIn {
            op: 1,
            device: 1,
            value: 1,
        },
        VmmIn {
            op: 3,
            device: 1,
            value: 0,
        },
    ];
    // Last: an available index far ahead of the ring (the device must refuse the ring).
    let mut wild = base.clone();
    wild.avail_extra = 1000;
    vec![base, odd, raw, again, poked, extended, events, wild]
}
