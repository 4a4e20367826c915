//! A channel like [`pvirq_sim::Channel`] whose guest can hand the device a reply buffer
//! the device cannot fully write: the fault point for "the Nth guest-memory write of the
//! reply fails" (spec §6, [DEV-12]).
//!
//! The mechanism is the real one. The driver builds its chain as usual (a readable request
//! descriptor, then a writable response descriptor). When it writes QueueNotify, and a
//! [`ReplyFault`] is armed, the "guest" rewrites the chain's writable part before the
//! device sees it: `good` descriptors of `piece` bytes each, covering the start of the
//! driver's own response buffer, then one descriptor for the rest of the capacity that
//! lies outside guest memory (or straddles its end). The device's reply writer writes
//! descriptor by descriptor, so its `good + 1`-th guest-memory write fails. A reply that
//! fits in the good pieces lands in the driver's buffer exactly as without the fault.
//!
//! Only the chain just published is rewritten, using descriptors of the driver's free
//! slots: arm a fault only when that request is the only one in flight.

use pvirq_guest::Options;
use pvirq_host::model::ModelHost;
use pvirq_host::routes::GuestRoutes;
use pvirq_host::{Vm, VmConfig};
use pvirq_sim::channel::{ChannelDriver, GUEST_MEMORY_SIZE, WriteTap};
use pvirq_sim::{Channel, SimError};
use std::sync::{Arc, Mutex, PoisonError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// virtio-mmio v2 register offsets (virtio 1.2, §4.2.2) the guest side watches.
const QUEUE_NUM: u64 = 0x038;
const QUEUE_NOTIFY: u64 = 0x050;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_AVAIL_LOW: u64 = 0x090;
const QUEUE_AVAIL_HIGH: u64 = 0x094;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// Where the unwritable part of the reply buffer lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadBuffer {
    /// Entirely outside guest memory.
    Outside,
    /// Starting 4 bytes before the end of guest memory: the write is partial.
    Straddling,
}

impl BadBuffer {
    fn addr(self) -> u64 {
        match self {
            BadBuffer::Outside => GUEST_MEMORY_SIZE as u64 + (1 << 20),
            BadBuffer::Straddling => GUEST_MEMORY_SIZE as u64 - 4,
        }
    }
}

/// How the next request's reply buffer is cut up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyFault {
    /// Writable descriptors inside the driver's buffer before the bad one.
    pub good: usize,
    /// Bytes of each good descriptor.
    pub piece: u32,
    /// The bad descriptor.
    pub bad: BadBuffer,
}

/// The queue registers the driver wrote.
#[derive(Clone, Copy, Debug, Default)]
struct QueueRegs {
    size: u16,
    desc: u64,
    avail: u64,
}

impl QueueRegs {
    fn record(&mut self, offset: u64, v: u32) {
        let set_low = |a: &mut u64| *a = *a & !0xFFFF_FFFF | u64::from(v);
        let set_high = |a: &mut u64| *a = *a & 0xFFFF_FFFF | u64::from(v) << 32;
        match offset {
            QUEUE_NUM => self.size = v as u16,
            QUEUE_DESC_LOW => set_low(&mut self.desc),
            QUEUE_DESC_HIGH => set_high(&mut self.desc),
            QUEUE_AVAIL_LOW => set_low(&mut self.avail),
            QUEUE_AVAIL_HIGH => set_high(&mut self.avail),
            _ => {}
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn desc_at(mem: &GuestMemoryMmap, q: &QueueRegs, i: u16) -> Desc {
    let at = GuestAddress(q.desc + 16 * u64::from(i));
    let read = |off: u64| at.0 + off;
    Desc {
        addr: mem.read_obj(GuestAddress(read(0))).expect("desc addr"),
        len: mem.read_obj(GuestAddress(read(8))).expect("desc len"),
        flags: mem.read_obj(GuestAddress(read(12))).expect("desc flags"),
        next: mem.read_obj(GuestAddress(read(14))).expect("desc next"),
    }
}

fn set_desc(mem: &GuestMemoryMmap, q: &QueueRegs, i: u16, d: Desc) {
    let at = q.desc + 16 * u64::from(i);
    mem.write_obj(d.addr, GuestAddress(at)).expect("desc addr");
    mem.write_obj(d.len, GuestAddress(at + 8))
        .expect("desc len");
    mem.write_obj(d.flags, GuestAddress(at + 12))
        .expect("desc flags");
    mem.write_obj(d.next, GuestAddress(at + 14))
        .expect("desc next");
}

/// Rewrites the writable part of the chain published last, as `fault` says.
fn apply(mem: &GuestMemoryMmap, q: &QueueRegs, fault: ReplyFault) {
    let idx: u16 = mem.read_obj(GuestAddress(q.avail + 2)).expect("avail idx");
    let slot = u64::from(idx.wrapping_sub(1) % q.size);
    let head: u16 = mem
        .read_obj(GuestAddress(q.avail + 4 + 2 * slot))
        .expect("avail ring");
    let request = desc_at(mem, q, head);
    assert!(
        request.flags & DESC_F_NEXT != 0,
        "a chain of one descriptor"
    );
    let w = request.next;
    let reply = desc_at(mem, q, w);
    assert!(
        reply.flags & DESC_F_WRITE != 0,
        "second descriptor not writable"
    );
    let cap = u64::from(reply.len);
    let piece = u64::from(fault.piece.max(1));
    // Good pieces cover at most the capacity; a bad descriptor holds the rest, if any.
    let good = (fault.good as u64).min(cap.div_ceil(piece));
    let bad_len = cap.saturating_sub(good * piece);
    let count = good as usize + usize::from(bad_len > 0);
    let mut ids = vec![w];
    ids.extend((0..q.size).rev().filter(|i| *i != head && *i != w));
    assert!(
        ids.len() >= count,
        "not enough free descriptors for {count} pieces"
    );
    for (k, id) in ids.iter().take(count).enumerate() {
        let last = k + 1 == count;
        let (addr, len) = if (k as u64) < good {
            let off = k as u64 * piece;
            (reply.addr + off, piece.min(cap - off) as u32)
        } else {
            (fault.bad.addr(), bad_len as u32)
        };
        let next = ids.get(k + 1).copied().filter(|_| !last).unwrap_or(0);
        let flags = DESC_F_WRITE | if last { 0 } else { DESC_F_NEXT };
        set_desc(
            mem,
            q,
            *id,
            Desc {
                addr,
                len,
                flags,
                next,
            },
        );
    }
}

/// One VM's channel whose guest can arm a [`ReplyFault`] for its next request.
pub struct TamperChannel {
    channel: Channel,
    armed: Arc<Mutex<Option<ReplyFault>>>,
}

impl std::fmt::Debug for TamperChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TamperChannel")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl TamperChannel {
    /// Creates the VM on `host` and a driver for it, as [`pvirq_sim::Channel::new`] does,
    /// with a guest that watches its queue registers and, at QueueNotify, applies the armed
    /// fault to the chain just published.
    pub fn new(
        host: &ModelHost,
        config: VmConfig,
        routes: Box<dyn GuestRoutes>,
        options: Options,
    ) -> Result<TamperChannel, SimError> {
        Self::for_vm(host.create_vm(config, routes)?, options)
    }

    /// As [`TamperChannel::new`], for a VM made elsewhere.
    pub fn for_vm(vm: Vm, options: Options) -> Result<TamperChannel, SimError> {
        let armed: Arc<Mutex<Option<ReplyFault>>> = Arc::default();
        let queue: Mutex<QueueRegs> = Mutex::default();
        let fault = armed.clone();
        let tap: WriteTap = Arc::new(move |mem, offset, data| {
            if offset == QUEUE_NOTIFY {
                let armed = fault.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(f) = armed {
                    let q = *queue.lock().unwrap_or_else(PoisonError::into_inner);
                    apply(mem, &q, f);
                }
            } else if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
                q.record(offset, u32::from_le_bytes(bytes));
            }
        });
        let channel = Channel::for_vm_with_write_tap(vm, options, tap)?;
        Ok(TamperChannel { channel, armed })
    }

    /// Cuts up the reply buffer of the next request submitted.
    pub fn arm(&self, fault: ReplyFault) {
        *self.armed.lock().unwrap_or_else(PoisonError::into_inner) = Some(fault);
    }

    /// Whether an armed fault is still waiting for a request.
    pub fn is_armed(&self) -> bool {
        self.armed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// The guest driver.
    pub fn driver(&mut self) -> &mut ChannelDriver {
        self.channel.driver()
    }

    /// The host's view of the VM.
    pub fn vm(&self) -> &Vm {
        self.channel.vm()
    }
}
