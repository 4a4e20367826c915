//! Guest memory mapped once per process and handed back all zero after every input.
//!
//! Mapping fresh memory for each input cost more than the input itself (an mmap, a page
//! fault per touched page, a munmap). Instead every write through vm-memory (the harness's,
//! the fake devices', the host device's) marks its page in the region's dirty bitmap, and
//! [`ScratchMemory::reset`] zeroes exactly those pages, plus any range written behind
//! vm-memory's back (the guest driver writes its DMA pages through host pointers). The
//! tests of this crate check, after every seed, that the whole memory reads zero again.

use std::ops::Range;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest memory whose writes are logged page by page.
pub type DirtyMemory = GuestMemoryMmap<AtomicBitmap>;

/// Zeroes written one page at a time.
const ZEROS: [u8; 4096] = [0; 4096];

/// One region of guest memory from 0, reused across inputs.
#[derive(Debug)]
pub struct ScratchMemory {
    mem: DirtyMemory,
    size: u64,
}

impl ScratchMemory {
    /// `size` bytes (a multiple of 4 KiB) from guest address 0.
    ///
    /// # Panics
    ///
    /// If the memory cannot be mapped.
    pub fn new(size: u64) -> Self {
        let mem = DirtyMemory::from_ranges(&[(GuestAddress(0), size as usize)])
            .unwrap_or_else(|e| panic!("guest memory of {size} bytes: {e}"));
        ScratchMemory { mem, size }
    }

    /// The memory.
    pub fn mem(&self) -> &DirtyMemory {
        &self.mem
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn region(&self) -> Option<&MmapRegion<AtomicBitmap>> {
        self.mem.find_region(GuestAddress(0)).map(|r| &**r)
    }

    /// Zeroes every page written through vm-memory since the last reset, and `unlogged`
    /// (bytes written through host pointers), then clears the log.
    pub fn reset(&self, unlogged: Option<Range<u64>>) {
        let Some(region) = self.region() else {
            return;
        };
        let bitmap = region.bitmap();
        let page = (bitmap.byte_size() / bitmap.len().max(1)).max(1) as u64;
        for (w, word) in bitmap.get_and_reset().into_iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let bit = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                self.zero((w as u64 * 64 + bit) * page..(w as u64 * 64 + bit + 1) * page);
            }
        }
        if let Some(range) = unlogged {
            self.zero(range);
        }
        // The zeroing itself was logged.
        bitmap.reset();
    }

    fn zero(&self, range: Range<u64>) {
        let end = range.end.min(self.size);
        let mut at = range.start;
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64);
            let _ = self.mem.write_slice(&ZEROS[..n as usize], GuestAddress(at));
            at += n;
        }
    }

    /// Whether every byte reads zero (a full scan, for tests).
    pub fn is_zero(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut at = 0;
        while at < self.size {
            let n = (self.size - at).min(buf.len() as u64) as usize;
            if self
                .mem
                .read_slice(&mut buf[..n], GuestAddress(at))
                .is_err()
                || buf[..n].iter().any(|b| *b != 0)
            {
                return false;
            }
            at += n as u64;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_zeroes_what_was_written_through_vm_memory_and_the_unlogged_range() {
        let m = ScratchMemory::new(64 << 10);
        m.mem().write_obj(0xABu8, GuestAddress(5)).unwrap();
        m.mem()
            .write_slice(&[7u8; 5000], GuestAddress(30 << 10))
            .unwrap();
        // Written behind vm-memory's back: not in the log.
        let host = m.mem().get_host_address(GuestAddress(50 << 10)).unwrap();
        // SAFETY: 16 bytes inside the 64 KiB mapping.
        unsafe { std::ptr::write_bytes(host, 9, 16) };
        assert!(!m.is_zero());
        m.reset(None);
        assert!(!m.is_zero(), "the unlogged write is still there");
        m.reset(Some((50 << 10)..(50 << 10) + 16));
        assert!(m.is_zero());
        // The log starts empty again: a reset with nothing written touches nothing.
        let bitmap = m.region().unwrap().bitmap();
        assert!(bitmap.get_and_reset().iter().all(|w| *w == 0));
    }
}
