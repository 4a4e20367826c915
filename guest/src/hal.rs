//! The hardware abstraction: memory shared with the device.

use core::ptr::NonNull;

/// A device-visible (guest-physical, or IOVA behind an IOMMU) address.
pub type PhysAddr = u64;

/// Size of the pages [`Hal::dma_alloc`] hands out.
pub const PAGE_SIZE: usize = 4096;

/// Memory shared with the device, in the spirit of the `virtio-drivers` crate's `Hal`.
///
/// The driver allocates everything it shares with the device once, at initialisation: the
/// virtqueue and one request/response buffer per in-flight slot. It never shares caller
/// memory, so no `share`/`unshare` bounce is needed. It gives the memory back with
/// [`Hal::dma_dealloc`] when dropped, after resetting the device.
///
/// # Safety
///
/// An implementation must return from [`Hal::dma_alloc`] a pointer to `pages * PAGE_SIZE`
/// bytes that are page-aligned, valid for reads and writes by the CPU and not used by
/// anything but the caller until passed to [`Hal::dma_dealloc`]; and the device must see
/// exactly those bytes at the returned physical address, contiguously (coherent DMA).
pub unsafe trait Hal {
    /// Allocates `pages` contiguous pages shared with the device, returning their
    /// device-visible address and a CPU pointer; `None` if memory is exhausted. The content
    /// need not be zeroed.
    fn dma_alloc(&self, pages: usize) -> Option<(PhysAddr, NonNull<u8>)>;

    /// Gives back an allocation.
    ///
    /// # Safety
    ///
    /// `paddr`, `vaddr` and `pages` are those of one earlier [`Hal::dma_alloc`] of this HAL,
    /// the device no longer accesses the memory, and the caller never uses `vaddr` again.
    unsafe fn dma_dealloc(&self, paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize);
}

/// One DMA allocation: its physical address, CPU pointer and size.
#[derive(Debug)]
pub(crate) struct Dma {
    paddr: PhysAddr,
    vaddr: NonNull<u8>,
    pages: usize,
}

// SAFETY: the allocation is plain memory owned by one driver; nothing ties it to the thread
// that allocated it.
unsafe impl Send for Dma {}

impl Dma {
    /// Allocates at least `bytes` bytes.
    pub(crate) fn alloc<H: Hal>(hal: &H, bytes: usize) -> Result<Self, crate::Error> {
        let pages = bytes.div_ceil(PAGE_SIZE).max(1);
        let (paddr, vaddr) = hal
            .dma_alloc(pages)
            .ok_or(crate::Error::DmaAlloc { pages })?;
        Ok(Dma {
            paddr,
            vaddr,
            pages,
        })
    }

    /// Gives the memory back.
    ///
    /// # Safety
    ///
    /// The device no longer accesses the memory, and no pointer derived from it is used
    /// afterwards.
    pub(crate) unsafe fn free<H: Hal>(self, hal: &H) {
        // SAFETY: the values come from `hal.dma_alloc`; the caller vouches for the rest.
        unsafe { hal.dma_dealloc(self.paddr, self.vaddr, self.pages) }
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }

    /// The device-visible address of byte `offset`.
    pub(crate) fn paddr(&self, offset: usize) -> PhysAddr {
        self.paddr + offset as u64
    }

    /// The CPU pointer to the start.
    pub(crate) fn vaddr(&self) -> NonNull<u8> {
        self.vaddr
    }

    /// Copies the `dst.len()` bytes at byte `offset` into `dst`, reading each byte exactly
    /// once, or `None` if they do not all lie in the allocation.
    ///
    /// This is how bytes the device may write leave shared memory: the device can change
    /// them at any time, so everything the driver checks and uses is read from `dst` after
    /// one pass here, never from the shared memory again (no double fetch).
    pub(crate) fn copy_out(&self, offset: usize, dst: &mut [u8]) -> Option<()> {
        let end = offset.checked_add(dst.len())?;
        if end > self.len() {
            return None;
        }
        let src = self.vaddr.as_ptr();
        for (at, byte) in (offset..end).zip(dst.iter_mut()) {
            // SAFETY: `at < end <= len()`, inside the allocation `Hal::dma_alloc` made valid
            // for reads. Volatile: the device may write the byte concurrently, so the
            // compiler must neither assume it stable nor read it twice.
            *byte = unsafe { src.add(at).read_volatile() };
        }
        Some(())
    }
}
