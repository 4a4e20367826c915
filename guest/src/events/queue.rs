//! The event queue's ring and buffers (spec §2.3, §12): `size` device-writable buffers of
//! one record each, all available to the device except the one whose event is being
//! handled. Making a buffer available again is the driver's acknowledgement.

use crate::Error;
use crate::hal::{Dma, Hal};
use crate::ring::QueueAddrs;
use crate::ring::{DESC_F_WRITE, Descriptor, Layout, SplitRing, UsedElem};
use pvirq_proto::EVENT_LEN;

/// The most event buffers a driver keeps available (the event queue's size is this or the
/// device's maximum, whichever is smaller). The reference device offers 64 (spec §2.3).
pub const EVENT_BUFFERS: u16 = 64;

/// The driver side of the event queue.
#[derive(Debug)]
pub(crate) struct EventQueue {
    ring: SplitRing,
    mem: Option<Dma>,
    /// Offset of buffer 0 in `mem`.
    buffers_at: usize,
    size: u16,
    /// Bit `i`: the device holds buffer `i` (at most [`EVENT_BUFFERS`] = 64 buffers).
    held: u64,
    /// The buffer of the event [`crate::Driver::next_event`] returned last, made available
    /// again by the next call (its acknowledgement).
    pub(crate) in_hand: Option<u16>,
    /// Sequence number of the last event handed to the caller (0: none yet, spec §12).
    pub(crate) last_sequence: u32,
}

impl EventQueue {
    /// A queue of `size` buffers (a power of two, at most [`EVENT_BUFFERS`]), every buffer
    /// made available; the device is told about it afterwards.
    pub(crate) fn new<H: Hal>(hal: &H, size: u16) -> Result<Self, Error> {
        let size = size.min(EVENT_BUFFERS);
        let buffers_at = Layout::new(size).total.next_multiple_of(64);
        let mem = Dma::alloc(hal, buffers_at + usize::from(size) * EVENT_LEN)?;
        // SAFETY: `mem` holds the ring's `Layout::new(size).total` bytes, page-aligned, owned
        // by the driver until it is freed after the device is reset; `size` is a power of
        // two. The buffers start past the ring, so the ring never covers them.
        let ring = unsafe { SplitRing::new(mem.vaddr(), mem.paddr(0), size) };
        let mut queue = EventQueue {
            ring,
            mem: Some(mem),
            buffers_at,
            size,
            held: 0,
            in_hand: None,
            last_sequence: 0,
        };
        for id in 0..size {
            queue.repost(id);
        }
        Ok(queue)
    }

    /// Queue size (number of buffers).
    pub(crate) fn size(&self) -> u16 {
        self.size
    }

    /// Device-visible addresses of the ring.
    pub(crate) fn addrs(&self) -> QueueAddrs {
        self.ring.addrs()
    }

    /// Whether the device wants a notification for what was just made available.
    pub(crate) fn needs_notify(&self) -> bool {
        self.ring.needs_notify()
    }

    /// Asks the device not to interrupt for events (`true`), or to again. Advisory.
    pub(crate) fn suppress_interrupts(&mut self, suppress: bool) {
        self.ring.suppress_interrupts(suppress);
    }

    /// Whether the device returned buffers not yet popped.
    pub(crate) fn has_used(&self) -> bool {
        self.ring.has_used()
    }

    fn bit(id: u16) -> u64 {
        1u64 << (id % EVENT_BUFFERS)
    }

    /// Makes buffer `id` available to the device again (also at setup). The descriptor is
    /// written anew each time: the driver relies on nothing it left in shared memory.
    pub(crate) fn repost(&mut self, id: u16) {
        if id >= self.size {
            return;
        }
        let addr = self.mem.as_ref().map_or(0, |m| {
            m.paddr(self.buffers_at + usize::from(id) * EVENT_LEN)
        });
        self.ring.set_desc(
            id,
            Descriptor {
                addr,
                len: EVENT_LEN as u32,
                flags: DESC_F_WRITE,
                next: 0,
            },
        );
        self.held |= Self::bit(id);
        self.ring.publish(id);
    }

    /// The next buffer the device returned, with its used length: the id is checked to
    /// name a buffer the device held, which it then no longer does.
    pub(crate) fn pop(&mut self) -> Result<Option<(u16, u32)>, Error> {
        let Some(UsedElem { id, len }) = self.ring.pop_used()? else {
            return Ok(None);
        };
        let buffer = u16::try_from(id)
            .ok()
            .filter(|b| *b < self.size && self.held & Self::bit(*b) != 0)
            .ok_or(Error::UnknownEventBuffer(id))?;
        self.held &= !Self::bit(buffer);
        Ok(Some((buffer, len)))
    }

    /// Copies buffer `id`'s record out of shared memory, each byte read once (spec §8: the
    /// device may rewrite it at any time; only this copy is validated and used).
    pub(crate) fn copy_out(&self, id: u16) -> Option<[u8; EVENT_LEN]> {
        let mut record = [0u8; EVENT_LEN];
        let at = self.buffers_at + usize::from(id) * EVENT_LEN;
        self.mem.as_ref()?.copy_out(at, &mut record)?;
        Some(record)
    }

    /// Gives up the memory, for the driver to free once the device is reset.
    pub(crate) fn take_memory(&mut self) -> Option<Dma> {
        self.mem.take()
    }
}
