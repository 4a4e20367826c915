//! Test support (feature `test-utils`, as `virtio-queue` ships its mock): a driver that
//! writes requests and chains into guest memory through virtio-queue's `MockSplitQueue`
//! and reads back used entries and replies, a register-level virtio-mmio driver, and the
//! host and VM shapes the device tests use. The host's own tests and the fuzz targets
//! (`fuzz/common`) share it.
//!
//! The `try_*` methods say `None` where their plain twins panic (a full table, a full data
//! area): a fuzz harness lays out whatever its input describes and stops where it no longer
//! fits.
// Test support, never on a path a guest reaches: a helper that cannot do what the test
// asked fails that test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::device::{InterruptType, PvirqDevice, VirtioInterrupt};
use super::mmio::{MmioInterrupt, MmioTransport, NotifyMode};
use crate::config::{DeviceSpec, VmConfig};
use crate::model::{ModelConfig, ModelHost};
use crate::routes::MemoryRoutes;
use crate::vm::Vm;
use pvirq_proto::{EVENT_LEN, Event, Request, Status, feature};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// The address space the device tests give the device.
pub type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// `mem` as the device's address space.
pub fn atomic(mem: &GuestMemoryMmap) -> Mem {
    GuestMemoryAtomic::new(mem.clone())
}

/// Size of [`guest_memory`]: 4 MiB from 0.
pub const MEM_SIZE: u64 = 4 << 20;
/// Where [`Driver::new`] puts request and reply buffers: from 1 MiB (the rings sit at 0).
pub const DATA: u64 = 1 << 20;

/// Guest memory of [`MEM_SIZE`] bytes from 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// An assigned device with every kind: 8 MSI, 64 MSI-X, 64 IMS slots.
pub fn spec(requester_id: u16) -> DeviceSpec {
    DeviceSpec {
        requester_id,
        msi_max: 8,
        msix_table_size: 64,
        ims_slots: 64,
        ..DeviceSpec::default()
    }
}

/// A VM of two vCPUs and two devices ([`spec`] at requester IDs `base` and `base + 1`),
/// `max_batch` 64, KVM-like in-memory routes.
pub fn vm(host: &ModelHost, base: u16, quota: u32) -> Vm {
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
    .unwrap()
}

/// The default modelled host (one VT-d unit of 65,536 IRTEs).
pub fn host() -> ModelHost {
    ModelHost::new(&ModelConfig::default()).unwrap()
}

/// A device over `vm`, activated on `q`'s queue with every feature.
pub fn active_device(
    vm: Vm,
    mem: &GuestMemoryMmap,
    q: &MockSplitQueue<'_, GuestMemoryMmap>,
) -> (PvirqDevice<Mem>, Arc<MmioInterrupt>) {
    let irq = Arc::new(MmioInterrupt::new());
    let mut dev = PvirqDevice::new(vm).unwrap();
    dev.ack_features(feature::V1);
    let queue = q.create_queue().unwrap();
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    dev.activate(atomic(mem), irq.clone(), vec![queue], vec![evt])
        .unwrap();
    (dev, irq)
}

/// Encodes a request.
pub fn encode(request: &Request<'_>) -> Vec<u8> {
    let mut bytes = vec![0u8; request.encoded_len()];
    let n = request.encode(&mut bytes).unwrap();
    bytes.truncate(n);
    bytes
}

/// A driver-side view of one queue in guest memory `M`: the rings at 0, buffers taken in
/// order from a data area.
pub struct Driver<'a, M: GuestMemory = GuestMemoryMmap> {
    /// The guest memory.
    pub mem: &'a M,
    /// The queue's rings.
    pub q: MockSplitQueue<'a, M>,
    size: u16,
    next_desc: u16,
    next_data: u64,
    data_end: u64,
}

/// A buffer of a chain: where, how long, writable or not.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Whether the device writes it.
    pub write: bool,
}

impl<'a, M: GuestMemory> Driver<'a, M> {
    /// A queue of `size` at 0, buffers from [`DATA`] to [`MEM_SIZE`].
    pub fn new(mem: &'a M, size: u16) -> Self {
        Self::with_data(mem, size, DATA..MEM_SIZE)
    }

    /// A queue of `size` at 0, buffers within `data`.
    pub fn with_data(mem: &'a M, size: u16, data: Range<u64>) -> Self {
        Self::at(mem, 0, size, data)
    }

    /// A queue of `size` whose rings start at `ring`, its buffers taken within `data`.
    pub fn at(mem: &'a M, ring: u64, size: u16, data: Range<u64>) -> Self {
        Driver {
            mem,
            q: MockSplitQueue::create(mem, GuestAddress(ring), size),
            size,
            next_desc: 0,
            next_data: data.start,
            data_end: data.end,
        }
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Space for `len` bytes in the data area (64-byte aligned); `None` if it is full.
    pub fn try_alloc(&mut self, len: u32) -> Option<u64> {
        let addr = self.next_data;
        let end = addr.checked_add(u64::from(len).max(1).next_multiple_of(64))?;
        if end > self.data_end {
            return None;
        }
        self.next_data = end;
        Some(addr)
    }

    /// [`Driver::try_alloc`], which must fit.
    pub fn alloc(&mut self, len: u32) -> u64 {
        self.try_alloc(len).expect("the data area is full")
    }

    /// Offers one chain of `bufs`, linked in order, in the next free table entries, and
    /// makes it available. The head index; `None` (nothing written) if the table has no
    /// room for it.
    pub fn try_offer(&mut self, bufs: &[Buf]) -> Option<u16> {
        let first = self.next_desc;
        let end = usize::from(first) + bufs.len();
        if end > usize::from(self.size) {
            return None;
        }
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let last = i + 1 == bufs.len();
                let mut flags = if b.write {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                };
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(Descriptor::new(b.addr, b.len, flags, first + i as u16 + 1))
            })
            .collect();
        self.q.add_desc_chains(&descs, first).ok()?;
        self.next_desc = end as u16;
        Some(first)
    }

    /// [`Driver::try_offer`], which must fit.
    pub fn offer(&mut self, bufs: &[Buf]) -> u16 {
        self.try_offer(bufs).expect("the descriptor table is full")
    }

    /// Offers raw descriptors (table index `first..`) as one chain headed at `first`.
    pub fn offer_raw(&mut self, descs: &[RawDescriptor]) {
        let first = self.next_desc;
        self.q.add_desc_chains(descs, first).unwrap();
        self.next_desc += descs.len() as u16;
    }

    /// Offers a request with one readable buffer and writable buffers of `reply_lens`.
    /// Returns the writable buffers.
    pub fn send(&mut self, request: &[u8], reply_lens: &[u32]) -> Vec<Buf> {
        let addr = self.alloc(request.len() as u32);
        self.mem.write_slice(request, GuestAddress(addr)).unwrap();
        let mut bufs = vec![Buf {
            addr,
            len: request.len() as u32,
            write: false,
        }];
        let replies: Vec<Buf> = reply_lens
            .iter()
            .map(|len| Buf {
                addr: self.alloc(*len),
                len: *len,
                write: true,
            })
            .collect();
        bufs.extend(&replies);
        self.offer(&bufs);
        replies
    }

    /// Used-ring entry `i`: (head, len).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let base = self.q.used_addr().0 + 4 + u64::from(i) * 8;
        let id: u32 = self.mem.read_obj(GuestAddress(base)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(base + 4)).unwrap();
        (id, len)
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.q.used_addr().0 + 2))
            .unwrap()
    }

    /// `len` bytes of reply gathered from `bufs`.
    pub fn reply(&self, bufs: &[Buf], len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bufs {
            let n = (len as usize - out.len()).min(b.len as usize);
            let mut chunk = vec![0u8; n];
            self.mem
                .read_slice(&mut chunk, GuestAddress(b.addr))
                .unwrap();
            out.extend(chunk);
        }
        out
    }

    /// The available ring's index.
    pub fn avail_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.q.avail_addr().0 + 2))
            .unwrap_or(0)
    }

    /// Sets the avail index directly (to corrupt it).
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.q.avail_addr().0 + 2))
            .unwrap();
    }

    /// Writes raw descriptors at table index `first..` without making anything available.
    pub fn write_descs(&self, first: u16, descs: &[RawDescriptor]) {
        for (i, d) in descs.iter().enumerate() {
            self.q.desc_table().store(first + i as u16, *d).unwrap();
        }
    }

    /// Writes one raw descriptor at table index `index` modulo the queue size.
    pub fn write_desc_wrapping(&self, index: u16, desc: RawDescriptor) {
        // The index is within the table, which lies in guest memory.
        let _ = self.q.desc_table().store(index % self.size, desc);
    }

    /// Makes the chain headed at `head` available once more (a head may be published any
    /// number of times: a driver bug the device cannot tell from a fresh chain).
    pub fn publish(&self, head: u16) {
        let avail = self.q.avail_addr().0;
        let idx = self.avail_idx();
        let at = avail + 4 + u64::from(idx % self.size) * 2;
        self.mem.write_obj(head, GuestAddress(at)).unwrap();
        self.set_avail_idx(idx.wrapping_add(1));
    }
}

/// Drives the MMIO registers as a guest driver would.
pub struct Regs(pub MmioTransport<Mem>);

impl Regs {
    /// Reads the 32-bit register at `off`.
    pub fn r(&self, off: u32) -> u32 {
        let mut b = [0u8; 4];
        self.0.read(u64::from(off), &mut b);
        u32::from_le_bytes(b)
    }
    /// Writes the 32-bit register at `off`.
    pub fn w(&mut self, off: u32, v: u32) {
        self.0.write(u64::from(off), &v.to_le_bytes());
    }
    /// Sets `bits` in the status register.
    pub fn set_status(&mut self, bits: u32) {
        let s = self.r(VIRTIO_MMIO_STATUS);
        self.w(VIRTIO_MMIO_STATUS, s | bits);
    }
}

/// A virtio-mmio front over a device for a fresh [`vm`] (quota 16) on `host`.
pub fn mmio(
    mem: &GuestMemoryMmap,
    host: &ModelHost,
    mode: NotifyMode,
) -> (Regs, Arc<MmioInterrupt>) {
    let irq = Arc::new(MmioInterrupt::new());
    let dev = PvirqDevice::new(vm(host, 0x100, 16)).unwrap();
    let t = MmioTransport::new(Arc::new(Mutex::new(dev)), atomic(mem), irq.clone(), mode).unwrap();
    (Regs(t), irq)
}

/// Brings the device up as a virtio 1.x driver does, with a queue of 16: true if DRIVER_OK
/// reads back set and NEEDS_RESET clear.
pub fn bring_up(regs: &mut Regs, drv: &Driver<'_>, features: u64) -> bool {
    bring_up_with(regs, drv, features, 16)
}

/// [`bring_up`] writing `queue_num` to QueueNum.
pub fn bring_up_with(regs: &mut Regs, drv: &Driver<'_>, features: u64, queue_num: u32) -> bool {
    regs.w(VIRTIO_MMIO_STATUS, 0);
    regs.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
    regs.set_status(VIRTIO_CONFIG_S_DRIVER);
    regs.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    regs.w(VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    regs.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    regs.w(VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    regs.set_status(VIRTIO_CONFIG_S_FEATURES_OK);
    if regs.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
        return false;
    }
    regs.w(VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(regs.r(VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    set_up_queue(regs, drv, queue_num);
    regs.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
    let status = regs.r(VIRTIO_MMIO_STATUS);
    status & VIRTIO_CONFIG_S_DRIVER_OK != 0 && status & VIRTIO_CONFIG_S_NEEDS_RESET == 0
}

/// Writes the selected queue's registers for `drv`'s rings, with `queue_num` as its size,
/// and makes it ready.
pub fn set_up_queue(regs: &mut Regs, drv: &Driver<'_>, queue_num: u32) {
    regs.w(VIRTIO_MMIO_QUEUE_NUM, queue_num);
    let addr = |a: GuestAddress| (a.0 as u32, (a.0 >> 32) as u32);
    let (lo, hi) = addr(drv.q.desc_table_addr());
    regs.w(VIRTIO_MMIO_QUEUE_DESC_LOW, lo);
    regs.w(VIRTIO_MMIO_QUEUE_DESC_HIGH, hi);
    let (lo, hi) = addr(drv.q.avail_addr());
    regs.w(VIRTIO_MMIO_QUEUE_AVAIL_LOW, lo);
    regs.w(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, hi);
    let (lo, hi) = addr(drv.q.used_addr());
    regs.w(VIRTIO_MMIO_QUEUE_USED_LOW, lo);
    regs.w(VIRTIO_MMIO_QUEUE_USED_HIGH, hi);
    regs.w(VIRTIO_MMIO_QUEUE_READY, 1);
}

/// Brings the device up as a driver that uses the event queue does: `features`, the request
/// queue of 16 and, if `evt_num` is given, the event queue with that size. True if DRIVER_OK
/// reads back set and NEEDS_RESET clear.
pub fn bring_up_events(
    regs: &mut Regs,
    req: &Driver<'_>,
    evt: &EventDriver<'_>,
    features: u64,
    evt_num: Option<u32>,
) -> bool {
    regs.w(VIRTIO_MMIO_STATUS, 0);
    regs.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
    regs.set_status(VIRTIO_CONFIG_S_DRIVER);
    regs.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    regs.w(VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    regs.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    regs.w(VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    regs.set_status(VIRTIO_CONFIG_S_FEATURES_OK);
    if regs.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
        return false;
    }
    regs.w(VIRTIO_MMIO_QUEUE_SEL, 0);
    set_up_queue(regs, req, 16);
    if let Some(num) = evt_num {
        regs.w(VIRTIO_MMIO_QUEUE_SEL, 1);
        set_up_queue(regs, &evt.drv, num);
    }
    regs.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
    let status = regs.r(VIRTIO_MMIO_STATUS);
    status & VIRTIO_CONFIG_S_DRIVER_OK != 0 && status & VIRTIO_CONFIG_S_NEEDS_RESET == 0
}

/// Where the event queue's rings lie in the device tests' guest memory (the request
/// queue's are at 0).
pub const EVENT_RING: u64 = 0x8_0000;
/// Where the event queue's buffers start (the request queue's start at [`DATA`]).
pub const EVENT_DATA: u64 = 3 << 20;

/// What a driver that uses the event queue negotiates (EVENTS needs INFO, spec §2.2).
pub const WITH_EVENTS: u64 = feature::V1 | feature::INFO | feature::EVENTS;

/// An interrupt that records what it was raised for.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Vec<InterruptType>>);

impl VirtioInterrupt for Recorder {
    fn trigger(&self, kind: InterruptType) -> std::io::Result<()> {
        self.0.lock().unwrap().push(kind);
        Ok(())
    }
}

impl Recorder {
    /// The interrupts raised since the last call.
    pub fn take(&self) -> Vec<InterruptType> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// The driver's side of the event queue: it makes writable buffers available and reads
/// back the records the device wrote, in used-ring order.
pub struct EventDriver<'a> {
    pub(crate) drv: Driver<'a>,
    /// Each buffer offered: its head and its descriptors.
    offered: Vec<(u16, Vec<Buf>)>,
    /// Used entries read so far.
    seen: u16,
}

impl<'a> EventDriver<'a> {
    /// An event queue of `size` at [`EVENT_RING`], its buffers from [`EVENT_DATA`].
    pub fn new(mem: &'a GuestMemoryMmap, size: u16) -> Self {
        EventDriver {
            drv: Driver::at(mem, EVENT_RING, size, EVENT_DATA..MEM_SIZE),
            offered: Vec::new(),
            seen: 0,
        }
    }

    /// Offers a buffer made of `bufs` (each `(len, writable)`).
    pub fn give_chain(&mut self, bufs: &[(u32, bool)]) -> u16 {
        let bufs: Vec<Buf> = bufs
            .iter()
            .map(|(len, write)| Buf {
                addr: self.drv.alloc(*len),
                len: *len,
                write: *write,
            })
            .collect();
        let head = self.drv.offer(&bufs);
        self.offered.push((head, bufs));
        head
    }

    /// Offers a buffer of `bufs` as given (addresses included).
    pub fn give_raw(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.drv.offer(bufs);
        self.offered.push((head, bufs.to_vec()));
        head
    }

    /// Offers `n` buffers of one 32-byte writable descriptor each.
    pub fn give(&mut self, n: usize) {
        for _ in 0..n {
            self.give_chain(&[(EVENT_LEN as u32, true)]);
        }
    }

    /// Makes the buffer headed at `head` available again: the driver handled its event.
    pub fn give_back(&self, head: u16) {
        self.drv.publish(head);
    }

    /// The used entries since the last call: the head, the used length, and the event the
    /// buffer holds if the length is a record's.
    pub fn used(&mut self) -> Vec<(u16, u32, Option<Event>)> {
        let mut out = Vec::new();
        while self.seen != self.drv.used_idx() {
            let size = (self.drv.q.desc_table().total_size() / 16) as u16;
            let (head, len) = self.drv.used(self.seen % size);
            self.seen += 1;
            let bufs = &self
                .offered
                .iter()
                .find(|(h, _)| u32::from(*h) == head)
                .expect("a head the driver offered")
                .1;
            let event = (len as usize == EVENT_LEN)
                .then(|| Event::decode(&self.drv.reply(bufs, len)).expect("a valid record"));
            out.push((head as u16, len, event));
        }
        out
    }

    /// The events written since the last call; every buffer returned must hold one.
    pub fn events(&mut self) -> Vec<Event> {
        self.used()
            .into_iter()
            .map(|(head, len, e)| e.unwrap_or_else(|| panic!("buffer {head}: used length {len}")))
            .collect()
    }
}

/// A device over `vm`, live with the request queue `req` and the event queue `evt`, its
/// driver having negotiated [`WITH_EVENTS`].
pub fn events_device(
    vm: Vm,
    mem: &GuestMemoryMmap,
    req: &Driver<'_>,
    evt: &EventDriver<'_>,
) -> (PvirqDevice<Mem>, Arc<Recorder>) {
    let irq = Arc::new(Recorder::default());
    let mut dev = PvirqDevice::new(vm).unwrap();
    dev.ack_features(WITH_EVENTS);
    let queues = vec![
        req.q.create_queue().unwrap(),
        evt.drv.q.create_queue().unwrap(),
    ];
    let evts = vec![
        EventFd::new(EFD_NONBLOCK).unwrap(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    ];
    dev.activate(atomic(mem), irq.clone(), queues, evts)
        .unwrap();
    (dev, irq)
}

/// A reply's header: status, detail, count, info (the same bytes with or without the
/// extensions, so a test reads them whatever the records after it look like).
pub fn header(reply: &[u8]) -> (Status, u8, u32, u32) {
    let word = |at: usize| u32::from_le_bytes(reply[at..at + 4].try_into().unwrap());
    (
        Status::from_wire(reply[1]).expect("a status"),
        reply[2],
        word(16),
        word(20),
    )
}
