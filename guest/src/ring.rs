//! The driver side of a virtio 1.x split virtqueue: descriptor table, available ring and
//! used ring in memory shared with the device.
//!
//! Every access to the shared memory is volatile. Memory barriers sit where virtio 1.x
//! (§2.7.13) puts them:
//! - the available-ring entry is written before the available index that publishes it
//!   (release fence between them);
//! - the available index is published before the used ring's `NO_NOTIFY` flag is read
//!   (full fence), so a device that goes to sleep after we read the flag sees our index;
//! - the used index is read before the used element and the buffers it returns (acquire
//!   fence after reading the index).
//!
//! The ring keeps no knowledge of requests: it publishes heads and returns used elements,
//! checking only what the ring itself can check (the used index not running ahead).

use crate::Error;
use crate::hal::PhysAddr;
use core::ptr::NonNull;
use core::sync::atomic::{Ordering, fence};

/// Descriptor flag: the chain continues at `next`.
pub(crate) const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub(crate) const DESC_F_WRITE: u16 = 2;
/// Available-ring flag: the driver does not want interrupts.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used-ring flag: the device does not want notifications.
const USED_F_NO_NOTIFY: u16 = 1;

const DESC_LEN: usize = 16;

/// One descriptor, as the driver writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Descriptor {
    /// Device-visible address of the buffer.
    pub(crate) addr: PhysAddr,
    /// Length of the buffer.
    pub(crate) len: u32,
    /// `DESC_F_*`.
    pub(crate) flags: u16,
    /// Next descriptor of the chain, with `DESC_F_NEXT`.
    pub(crate) next: u16,
}

/// One used-ring element: a chain the device returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UsedElem {
    /// Head descriptor of the chain, as the device reports it (not yet validated).
    pub(crate) id: u32,
    /// Bytes the device says it wrote.
    pub(crate) len: u32,
}

/// Device-visible addresses of the three parts of a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueueAddrs {
    /// Descriptor table.
    pub desc: PhysAddr,
    /// Available ring ("driver area").
    pub driver: PhysAddr,
    /// Used ring ("device area").
    pub device: PhysAddr,
}

/// Offsets of the three parts within one allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Offset of the available ring.
    pub(crate) avail: usize,
    /// Offset of the used ring.
    pub(crate) used: usize,
    /// Total bytes.
    pub(crate) total: usize,
}

impl Layout {
    /// The layout of a queue of `size` entries: descriptors (16-byte aligned), available
    /// ring (flags, idx, ring, used_event) and used ring (flags, idx, ring, avail_event,
    /// 4-byte aligned).
    pub(crate) const fn new(size: u16) -> Self {
        let n = size as usize;
        let avail = DESC_LEN * n;
        let avail_end = avail + 4 + 2 * n + 2;
        let used = avail_end.next_multiple_of(4);
        let total = used + 4 + 8 * n + 2;
        Layout { avail, used, total }
    }
}

/// The driver side of a split virtqueue.
#[derive(Debug)]
pub(crate) struct SplitRing {
    base: NonNull<u8>,
    paddr: PhysAddr,
    size: u16,
    layout: Layout,
    /// The available index we publish next (shadow of `avail.idx`).
    next_avail: u16,
    /// The used index up to which we consumed.
    last_used: u16,
}

// SAFETY: the ring owns its view of the shared memory exclusively (see `SplitRing::new`);
// nothing about that memory is tied to the thread that created it.
unsafe impl Send for SplitRing {}

impl SplitRing {
    /// A ring of `size` entries over `Layout::new(size).total` bytes at `base`, which the
    /// device sees at `paddr`. Zeroes the memory.
    ///
    /// # Safety
    ///
    /// `base` is valid for reads and writes of `Layout::new(size).total` bytes, aligned to
    /// 16, for as long as the ring lives, and nothing but the ring and the device accesses
    /// it. `size` is a power of two.
    pub(crate) unsafe fn new(base: NonNull<u8>, paddr: PhysAddr, size: u16) -> Self {
        let layout = Layout::new(size);
        // SAFETY: the caller guarantees `total` writable bytes; the device is not yet told
        // about the queue, so a plain write is fine.
        unsafe { core::ptr::write_bytes(base.as_ptr(), 0, layout.total) };
        SplitRing {
            base,
            paddr,
            size,
            layout,
            next_avail: 0,
            last_used: 0,
        }
    }

    /// Device-visible addresses of the three parts.
    pub(crate) fn addrs(&self) -> QueueAddrs {
        QueueAddrs {
            desc: self.paddr,
            driver: self.paddr + self.layout.avail as u64,
            device: self.paddr + self.layout.used as u64,
        }
    }

    /// Chains made available and not yet returned.
    pub(crate) fn outstanding(&self) -> u16 {
        self.next_avail.wrapping_sub(self.last_used)
    }

    fn write<T: Copy>(&mut self, offset: usize, value: T) {
        debug_assert!(offset + size_of::<T>() <= self.layout.total);
        // SAFETY: every caller passes an offset inside the layout, aligned for `T` (the
        // layout aligns each part and `base` is 16-byte aligned); `new`'s contract makes
        // the memory valid and ours.
        unsafe {
            self.base
                .as_ptr()
                .add(offset)
                .cast::<T>()
                .write_volatile(value)
        }
    }

    fn read<T: Copy>(&self, offset: usize) -> T {
        debug_assert!(offset + size_of::<T>() <= self.layout.total);
        // SAFETY: as in `write`.
        unsafe { self.base.as_ptr().add(offset).cast::<T>().read_volatile() }
    }

    /// Writes descriptor `index` (`index < size`; other indices are ignored).
    pub(crate) fn set_desc(&mut self, index: u16, desc: Descriptor) {
        if index >= self.size {
            debug_assert!(false, "descriptor {index} outside a ring of {}", self.size);
            return;
        }
        let at = DESC_LEN * usize::from(index);
        self.write(at, desc.addr.to_le());
        self.write(at + 8, desc.len.to_le());
        self.write(at + 12, desc.flags.to_le());
        self.write(at + 14, desc.next.to_le());
    }

    /// Makes the chain headed by `head` available to the device.
    pub(crate) fn publish(&mut self, head: u16) {
        let slot = usize::from(self.next_avail % self.size);
        self.write(self.layout.avail + 4 + 2 * slot, head.to_le());
        // The ring entry must be visible before the index that publishes it.
        fence(Ordering::Release);
        self.next_avail = self.next_avail.wrapping_add(1);
        self.write(self.layout.avail + 2, self.next_avail.to_le());
    }

    /// Whether the device wants a notification for what was just published.
    pub(crate) fn needs_notify(&self) -> bool {
        // The published index must be visible before we read the device's flag.
        fence(Ordering::SeqCst);
        let flags = u16::from_le(self.read(self.layout.used));
        flags & USED_F_NO_NOTIFY == 0
    }

    /// Asks the device not to interrupt (`true`) or to interrupt again (`false`). Advisory.
    pub(crate) fn suppress_interrupts(&mut self, suppress: bool) {
        let flags: u16 = if suppress { AVAIL_F_NO_INTERRUPT } else { 0 };
        self.write(self.layout.avail, flags.to_le());
        fence(Ordering::SeqCst);
    }

    /// Whether the device returned chains not yet popped (the used index moved).
    pub(crate) fn has_used(&self) -> bool {
        u16::from_le(self.read(self.layout.used + 2)) != self.last_used
    }

    /// The next chain the device returned, if any.
    ///
    /// Fails, consuming nothing, if the device's used index claims more returned chains
    /// than are outstanding.
    pub(crate) fn pop_used(&mut self) -> Result<Option<UsedElem>, Error> {
        let used_idx = u16::from_le(self.read(self.layout.used + 2));
        if used_idx == self.last_used {
            return Ok(None);
        }
        let ahead = used_idx.wrapping_sub(self.last_used);
        let outstanding = self.outstanding();
        if ahead > outstanding {
            return Err(Error::UsedIndexAhead { ahead, outstanding });
        }
        // The element and the buffers it returns must be read after the index.
        fence(Ordering::Acquire);
        let at = self.layout.used + 4 + 8 * usize::from(self.last_used % self.size);
        let id = u32::from_le(self.read(at));
        let len = u32::from_le(self.read(at + 4));
        self.last_used = self.last_used.wrapping_add(1);
        Ok(Some(UsedElem { id, len }))
    }
}
