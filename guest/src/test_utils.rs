//! Helpers for tests (std): a [`Hal`] over a vm-memory [`GuestMemoryMmap`] and an
//! [`MmioRegs`] adapter over byte-wise register accesses.
//!
//! Together they let a test run this driver against an in-process device that shares
//! the same `GuestMemoryMmap` as "physical memory": the HAL hands out guest-physical
//! pages and the host pointers behind them; the registers route to the device's
//! virtio-mmio front, `read(offset, &mut [u8])` / `write(offset, &[u8])`.

use crate::hal::{Hal, PAGE_SIZE, PhysAddr};
use crate::transport::MmioRegs;
use core::cell::Cell;
use core::ptr::NonNull;
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// A bump allocator over a window of guest-physical memory in a [`GuestMemoryMmap`].
///
/// Physical addresses are guest-physical addresses; pointers are the host addresses the
/// mmap gives them. Deallocation is a no-op (the window is reclaimed with the HAL).
#[derive(Debug)]
pub struct GuestMemoryHal<B: Bitmap + 'static = ()> {
    mem: GuestMemoryMmap<B>,
    next: Cell<u64>,
    end: u64,
}

impl<B: Bitmap + 'static> GuestMemoryHal<B> {
    /// A HAL allocating from `len` bytes of `mem` starting at `start` (rounded up to a
    /// page). The window should not overlap memory anything else uses.
    pub fn new(mem: GuestMemoryMmap<B>, start: GuestAddress, len: u64) -> Self {
        let first = start.0.next_multiple_of(PAGE_SIZE as u64);
        GuestMemoryHal {
            mem,
            next: Cell::new(first),
            end: start.0.saturating_add(len),
        }
    }

    /// The memory allocations come from.
    pub fn memory(&self) -> &GuestMemoryMmap<B> {
        &self.mem
    }

    /// The next address the allocator would hand out.
    pub fn next_free(&self) -> GuestAddress {
        GuestAddress(self.next.get())
    }
}

// SAFETY: each allocation is a distinct page-aligned window of the mmap (the bump pointer
// only grows), checked to lie within one region so the host pointer covers all of it, and
// the device reads the same bytes at the same guest-physical address.
unsafe impl<B: Bitmap + 'static> Hal for GuestMemoryHal<B> {
    fn dma_alloc(&self, pages: usize) -> Option<(PhysAddr, NonNull<u8>)> {
        let start = self.next.get();
        let len = pages.checked_mul(PAGE_SIZE)?;
        let end = start.checked_add(len as u64)?;
        if end > self.end {
            return None;
        }
        let addr = GuestAddress(start);
        // One region must hold the whole allocation.
        self.mem.get_slice(addr, len).ok()?;
        let ptr = NonNull::new(self.mem.get_host_address(addr).ok()?)?;
        self.next.set(end);
        Some((start, ptr))
    }

    unsafe fn dma_dealloc(&self, _paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) {}
}

/// [`MmioRegs`] over two closures doing byte-wise register accesses at an offset, as a
/// VMM's MMIO bus device does (`read(offset, data)`, `write(offset, data)`).
pub struct ByteRegs<R, W> {
    read: R,
    write: W,
}

impl<R, W> core::fmt::Debug for ByteRegs<R, W> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ByteRegs")
    }
}

impl<R: Fn(u64, &mut [u8]), W: Fn(u64, &[u8])> ByteRegs<R, W> {
    /// Registers served by `read` and `write`.
    pub fn new(read: R, write: W) -> Self {
        ByteRegs { read, write }
    }
}

impl<R: Fn(u64, &mut [u8]), W: Fn(u64, &[u8])> MmioRegs for ByteRegs<R, W> {
    fn read32(&self, offset: usize) -> u32 {
        let mut bytes = [0; 4];
        (self.read)(offset as u64, &mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn write32(&self, offset: usize, value: u32) {
        (self.write)(offset as u64, &value.to_le_bytes());
    }

    fn read16(&self, offset: usize) -> u16 {
        let mut bytes = [0; 2];
        (self.read)(offset as u64, &mut bytes);
        u16::from_le_bytes(bytes)
    }
}
