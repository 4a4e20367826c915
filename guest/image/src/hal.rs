//! DMA memory for the driver: a bump allocator over the layout's DMA window that starts
//! over once everything it handed out is back (a virtio reset drops the whole driver).

use core::cell::Cell;
use core::ptr::NonNull;
use pvirq_guest::{Hal, PAGE_SIZE, PhysAddr};
use pvirq_guest_image_abi::layout::{DMA_BASE, DMA_END};

/// The guest's DMA allocator. Identity mapping: physical address = pointer.
pub struct DmaHal {
    next: Cell<u64>,
    live: Cell<usize>,
}

impl DmaHal {
    /// An allocator over the whole window.
    pub const fn new() -> Self {
        DmaHal {
            next: Cell::new(DMA_BASE),
            live: Cell::new(0),
        }
    }
}

// SAFETY: every allocation is a distinct, page-aligned run of guest RAM inside the DMA
// window, identity-mapped (the device sees the same bytes at the returned address), and is
// handed out again only after every allocation has been given back.
unsafe impl Hal for &'static DmaHal {
    fn dma_alloc(&self, pages: usize) -> Option<(PhysAddr, NonNull<u8>)> {
        let bytes = u64::try_from(pages.checked_mul(PAGE_SIZE)?).ok()?;
        let start = self.next.get();
        let end = start.checked_add(bytes)?;
        if end > DMA_END {
            return None;
        }
        self.next.set(end);
        self.live.set(self.live.get() + 1);
        let ptr = NonNull::new(start as *mut u8)?;
        Some((start, ptr))
    }

    unsafe fn dma_dealloc(&self, _paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) {
        let live = self.live.get().saturating_sub(1);
        self.live.set(live);
        if live == 0 {
            self.next.set(DMA_BASE);
        }
    }
}

// SAFETY: only the bootstrap vCPU's CPL-3 code (one thread, no reentrancy: the interrupt
// handler never allocates) touches the allocator.
unsafe impl Sync for DmaHal {}

/// The one allocator.
pub static HAL: DmaHal = DmaHal::new();
