//! A guest driver that negotiates the event queue (spec §12), written here against the
//! virtio-mmio front with virtio-queue's mock rings: the in-process guest library speaks
//! version 1 only. It brings the device up with both queues, sends requests on queue 0,
//! keeps event buffers available on queue 1, and reads events in sequence order, checking
//! each sequence number is one above the last ([DRV-10]).
//!
//! For a migration it restores the device state on a destination VM behind a front of its
//! own over the same guest memory ([`EventsGuest::restore_on`]) and moves over to it
//! ([`EventsGuest::attach`]), as `pvirq_sim::channel` does for the version-1 driver.

use pvirq_host::device::{PersistError, PvirqDeviceState, RestoreParts};
use pvirq_host::snapshot::RestoredGrant;
use pvirq_host::{MmioInterrupt, MmioTransport, NotifyMode, PvirqDevice, Vm};
use pvirq_proto::{EVENT_LEN, Event, Request, Status};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

/// Guest memory: the request ring at 0, the event ring at [`EVENT_RING`], buffers from
/// [`DATA`].
const MEM_SIZE: usize = 1 << 20;
const EVENT_RING: u64 = 0x4000;
const DATA: u64 = 0x1_0000;
/// Both queues' size.
const QUEUE_SIZE: u16 = 16;

/// One queue as the driver lays it out.
struct Ring {
    q: MockSplitQueue<'static, GuestMemoryMmap>,
    next_desc: u16,
    seen: u16,
}

impl Ring {
    fn new(mem: &'static GuestMemoryMmap, at: u64) -> Ring {
        Ring {
            q: MockSplitQueue::create(mem, GuestAddress(at), QUEUE_SIZE),
            next_desc: 0,
            seen: 0,
        }
    }

    /// Makes a chain of `(addr, len, writable)` buffers available; its head.
    fn offer(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let first = self.next_desc;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, (addr, len, write))| {
                let mut flags = if *write { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(Descriptor::new(*addr, *len, flags, first + i as u16 + 1))
            })
            .collect();
        self.q
            .add_desc_chains(&descs, first)
            .expect("room in the ring");
        self.next_desc += bufs.len() as u16;
        first
    }

    /// The next used entry, if the device returned one: (head, length).
    fn next_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u32, u32)> {
        let used = self.q.used_addr().0;
        let idx: u16 = mem.read_obj(GuestAddress(used + 2)).expect("used idx");
        if idx == self.seen {
            return None;
        }
        let at = used + 4 + u64::from(self.seen % QUEUE_SIZE) * 8;
        self.seen = self.seen.wrapping_add(1);
        let head: u32 = mem.read_obj(GuestAddress(at)).expect("used id");
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used len");
        Some((head, len))
    }
}

/// The driver.
pub struct EventsGuest {
    /// Its memory, shared by every host side it is attached to.
    pub mem: &'static GuestMemoryMmap,
    front: MmioTransport,
    req: Ring,
    evt: Ring,
    next_data: u64,
    /// The event buffers offered: head → address.
    event_bufs: Vec<(u16, u64)>,
    /// The sequence number of the last event read (0: none yet).
    pub last_sequence: u32,
}

impl EventsGuest {
    /// A guest whose driver negotiates `features` (with `PVIRQ_F_EVENTS`) on a device
    /// serving `vm`, with `buffers` event buffers available.
    pub fn new(vm: Vm, features: u64, buffers: usize) -> EventsGuest {
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory"),
        ));
        let device = Arc::new(Mutex::new(PvirqDevice::new(vm).expect("device")));
        let front = MmioTransport::new(
            device,
            GuestMemoryAtomic::new(mem.clone()),
            Arc::new(MmioInterrupt::new()),
            NotifyMode::Inline,
        )
        .expect("front");
        let mut guest = EventsGuest {
            mem,
            front,
            req: Ring::new(mem, 0),
            evt: Ring::new(mem, EVENT_RING),
            next_data: DATA,
            event_bufs: Vec::new(),
            last_sequence: 0,
        };
        guest.bring_up(features);
        guest.give_event_buffers(buffers);
        guest
    }

    fn r(&self, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        self.front.read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }

    fn w(&mut self, offset: u32, value: u32) {
        self.front.write(u64::from(offset), &value.to_le_bytes());
    }

    fn set_status(&mut self, bits: u32) {
        let status = self.r(VIRTIO_MMIO_STATUS);
        self.w(VIRTIO_MMIO_STATUS, status | bits);
    }

    fn bring_up(&mut self, features: u64) {
        self.w(VIRTIO_MMIO_STATUS, 0);
        self.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        for page in 0..2 {
            self.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, page);
            self.w(
                VIRTIO_MMIO_DRIVER_FEATURES,
                (features >> (32 * page)) as u32,
            );
        }
        self.set_status(VIRTIO_CONFIG_S_FEATURES_OK);
        assert_ne!(
            self.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0,
            "FEATURES_OK refused"
        );
        for (sel, at) in [(0, 0), (1, EVENT_RING)] {
            let q = MockSplitQueue::create(self.mem, GuestAddress(at), QUEUE_SIZE);
            self.w(VIRTIO_MMIO_QUEUE_SEL, sel);
            self.w(VIRTIO_MMIO_QUEUE_NUM, u32::from(QUEUE_SIZE));
            for (lo, addr) in [
                (VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc_table_addr()),
                (VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail_addr()),
                (VIRTIO_MMIO_QUEUE_USED_LOW, q.used_addr()),
            ] {
                self.w(lo, addr.0 as u32);
                self.w(lo + 4, (addr.0 >> 32) as u32);
            }
            self.w(VIRTIO_MMIO_QUEUE_READY, 1);
        }
        self.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
        let status = self.r(VIRTIO_MMIO_STATUS);
        assert_ne!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
        assert_eq!(
            status & VIRTIO_CONFIG_S_NEEDS_RESET,
            0,
            "the device went live"
        );
    }

    fn alloc_data(&mut self, len: u32) -> u64 {
        let at = self.next_data;
        self.next_data += u64::from(len).next_multiple_of(64);
        assert!(self.next_data < MEM_SIZE as u64, "guest data area full");
        at
    }

    /// Makes `n` more 32-byte event buffers available and notifies the event queue.
    pub fn give_event_buffers(&mut self, n: usize) {
        for _ in 0..n {
            let at = self.alloc_data(EVENT_LEN as u32);
            let head = self.evt.offer(&[(at, EVENT_LEN as u32, true)]);
            self.event_bufs.push((head, at));
        }
        self.w(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    }

    /// Sends `request` and returns the reply's status, `count` and the reply bytes.
    pub fn call(&mut self, request: &Request<'_>) -> (Status, u32, Vec<u8>) {
        let mut bytes = vec![0u8; request.encoded_len()];
        let len = request.encode(&mut bytes).expect("encodable");
        let at = self.alloc_data(len as u32);
        self.mem
            .write_slice(&bytes[..len], GuestAddress(at))
            .unwrap();
        let reply_at = self.alloc_data(1024);
        self.req
            .offer(&[(at, len as u32, false), (reply_at, 1024, true)]);
        self.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        let (_, used) = self.req.next_used(self.mem).expect("an answer");
        let mut reply = vec![0u8; used as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(reply_at))
            .unwrap();
        let status = Status::from_wire(reply[1]).expect("a status");
        let count = u32::from_le_bytes(reply[16..20].try_into().unwrap());
        (status, count, reply)
    }

    /// The events the device wrote since the last call, in order. Every buffer returned
    /// holds one, numbered one above the one before.
    pub fn events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some((head, len)) = self.evt.next_used(self.mem) {
            assert_eq!(len as usize, EVENT_LEN, "buffer {head}: used length {len}");
            let at = self
                .event_bufs
                .iter()
                .find(|(h, _)| u32::from(*h) == head)
                .expect("a buffer the driver gave")
                .1;
            let mut record = [0u8; EVENT_LEN];
            self.mem.read_slice(&mut record, GuestAddress(at)).unwrap();
            let event = Event::decode(&record).expect("a valid record");
            assert_eq!(
                event.sequence,
                self.last_sequence.wrapping_add(1),
                "[DRV-10]"
            );
            self.last_sequence = event.sequence;
            out.push(event);
        }
        out
    }

    /// The device behind the front the guest is attached to.
    pub fn device(&self) -> &Arc<Mutex<PvirqDevice>> {
        self.front.device()
    }

    /// Pauses the device and takes its state, through its serialised form.
    pub fn pause_and_save(&self) -> PvirqDeviceState {
        let mut device = self.device().lock().unwrap();
        device.pause();
        let json = serde_json::to_string(&device.save()).unwrap();
        serde_json::from_str(&json).unwrap()
    }

    /// Restores `state` on `vm` behind a front of its own over this guest's memory, the
    /// transport's registers carried over.
    pub fn restore_on(
        &self,
        vm: Vm,
        state: &PvirqDeviceState,
    ) -> Result<(MmioTransport, Vec<RestoredGrant>), PersistError> {
        let placeholder = Arc::new(Mutex::new(PvirqDevice::new(vm.clone())?));
        let mut front = MmioTransport::new(
            placeholder,
            GuestMemoryAtomic::new(self.mem.clone()),
            Arc::new(MmioInterrupt::new()),
            NotifyMode::Inline,
        )?;
        let (mem, interrupt, queue_evts) = front.take_for_restore();
        let parts = RestoreParts {
            mem,
            interrupt,
            queue_evts,
        };
        let (device, report) = PvirqDevice::restore(vm, state, parts)?;
        *front.device().lock().unwrap() = device;
        front.restore_registers(self.front.registers());
        Ok((front, report))
    }

    /// From here on the guest's registers reach `front`, whose device resumes (the events
    /// waiting there are written). Returns the front it left.
    pub fn attach(&mut self, front: MmioTransport) -> MmioTransport {
        {
            let mut device = front.device().lock().unwrap();
            device.resume();
            device.process_all();
        }
        std::mem::replace(&mut self.front, front)
    }
}
