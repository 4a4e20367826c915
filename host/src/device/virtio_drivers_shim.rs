//! A guest driver built on the `virtio-drivers` crate (0.13), unmodified, run against the
//! device: its real `VirtQueue` lays out and drives the ring in guest memory, through
//! - [`GuestHal`], its `Hal` over the test's `GuestMemoryMmap` (DMA pages are guest pages;
//!   shared buffers are bounced through guest memory, as a confidential VM's driver does);
//! - [`RegsTransport`], its `Transport` over our register front, issuing exactly the register
//!   sequences of its own `MmioTransport` (virtio-mmio version 2).
//!
//! Its `MmioTransport` cannot be used itself: it reads a real MMIO window (nothing would trap
//! into our front), and its closed `DeviceType` rejects a device ID it does not know.

use super::test_utils::Regs;
use std::cell::RefCell;
use std::ptr::NonNull;
use virtio_bindings::virtio_mmio::*;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

const PAGE: u64 = 4096;

thread_local! {
    /// The guest memory of the test running on this thread and the next free page in it
    /// (`Hal` has no `self`, and tests run on threads of their own).
    static MEMORY: RefCell<Option<(GuestMemoryMmap, u64)>> = const { RefCell::new(None) };
}

/// `virtio-drivers`' `Hal` over guest memory: physical addresses are guest addresses.
pub(crate) struct GuestHal;

impl GuestHal {
    /// Gives this thread's driver `mem`, allocating from `first_free` upwards.
    pub(crate) fn install(mem: &GuestMemoryMmap, first_free: u64) {
        MEMORY.with(|m| *m.borrow_mut() = Some((mem.clone(), first_free)));
    }

    fn alloc(bytes: u64) -> (PhysAddr, NonNull<u8>) {
        MEMORY.with(|m| {
            let mut m = m.borrow_mut();
            let (mem, next) = m.as_mut().expect("GuestHal::install first");
            let paddr = *next;
            *next += bytes.next_multiple_of(PAGE);
            let zeros = vec![0u8; bytes as usize];
            mem.write_slice(&zeros, GuestAddress(paddr)).unwrap();
            let host = mem
                .physical_memory()
                .unwrap()
                .get_host_address(GuestAddress(paddr))
                .unwrap();
            (paddr, NonNull::new(host).unwrap())
        })
    }

    fn with_memory<R>(f: impl FnOnce(&GuestMemoryMmap) -> R) -> R {
        MEMORY.with(|m| f(&m.borrow().as_ref().expect("GuestHal::install first").0))
    }
}

// SAFETY: `dma_alloc` returns zeroed pages of guest memory that nothing else allocates (a
// bump allocator, never reused within a test), with their host mapping; `share` bounces the
// buffer through such pages, and `unshare` copies the device's writes back.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        Self::alloc(pages as u64 * PAGE)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0
    }

    unsafe fn mmio_phys_to_virt(_paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        unreachable!("the driver reaches the device through RegsTransport, not MMIO pointers")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let len = buffer.len() as u64;
        let (paddr, _) = Self::alloc(len.max(1));
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: the caller passes a buffer valid for reads of its length.
            let bytes = unsafe { buffer.as_ref() };
            Self::with_memory(|mem| mem.write_slice(bytes, GuestAddress(paddr)).unwrap());
        }
        paddr
    }

    unsafe fn unshare(paddr: PhysAddr, mut buffer: NonNull<[u8]>, direction: BufferDirection) {
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: the caller passes the buffer it shared, valid for writes.
            let bytes = unsafe { buffer.as_mut() };
            Self::with_memory(|mem| mem.read_slice(bytes, GuestAddress(paddr)).unwrap());
        }
    }
}

/// Reads of QueueReady after writing 0 before `queue_unset` gives up. `virtio-drivers` spins
/// without a bound; a conformant device reads 0 at the first read.
pub(crate) const UNSET_SPIN_LIMIT: u32 = 100_000;

/// `virtio-drivers`' `Transport` over our register front.
pub(crate) struct RegsTransport(pub(crate) Regs);

impl Transport for RegsTransport {
    fn device_type(&self) -> DeviceType {
        // The closed enum has no pvirq; `VirtQueue` never asks.
        DeviceType::Socket
    }

    fn read_device_features(&mut self) -> u64 {
        self.0.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.0.r(VIRTIO_MMIO_DEVICE_FEATURES));
        self.0.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        low | u64::from(self.0.r(VIRTIO_MMIO_DEVICE_FEATURES)) << 32
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.0.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.0
            .w(VIRTIO_MMIO_DRIVER_FEATURES, driver_features as u32);
        self.0.w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.0
            .w(VIRTIO_MMIO_DRIVER_FEATURES, (driver_features >> 32) as u32);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.0.w(VIRTIO_MMIO_QUEUE_SEL, u32::from(queue));
        self.0.r(VIRTIO_MMIO_QUEUE_NUM_MAX)
    }

    fn notify(&mut self, queue: u16) {
        self.0.w(VIRTIO_MMIO_QUEUE_NOTIFY, u32::from(queue));
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.0.r(VIRTIO_MMIO_STATUS))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.0.w(VIRTIO_MMIO_STATUS, status.bits());
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {
        // Modern (version 2) transport: no such register.
    }

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        let r = &mut self.0;
        r.w(VIRTIO_MMIO_QUEUE_SEL, u32::from(queue));
        r.w(VIRTIO_MMIO_QUEUE_NUM, size);
        r.w(VIRTIO_MMIO_QUEUE_DESC_LOW, descriptors as u32);
        r.w(VIRTIO_MMIO_QUEUE_DESC_HIGH, (descriptors >> 32) as u32);
        r.w(VIRTIO_MMIO_QUEUE_AVAIL_LOW, driver_area as u32);
        r.w(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (driver_area >> 32) as u32);
        r.w(VIRTIO_MMIO_QUEUE_USED_LOW, device_area as u32);
        r.w(VIRTIO_MMIO_QUEUE_USED_HIGH, (device_area >> 32) as u32);
        r.w(VIRTIO_MMIO_QUEUE_READY, 1);
    }

    /// What every `virtio-drivers` driver's `Drop` does: QueueReady ← 0, spin until it reads
    /// 0 (virtio 1.2 §4.2.2.2), then clear the size and the addresses. Panics where
    /// `virtio-drivers` would spin forever.
    fn queue_unset(&mut self, queue: u16) {
        let r = &mut self.0;
        r.w(VIRTIO_MMIO_QUEUE_SEL, u32::from(queue));
        r.w(VIRTIO_MMIO_QUEUE_READY, 0);
        let mut reads = 0;
        while r.r(VIRTIO_MMIO_QUEUE_READY) != 0 {
            reads += 1;
            assert!(
                reads < UNSET_SPIN_LIMIT,
                "QueueReady never reads back 0: virtio-drivers would spin forever"
            );
        }
        r.w(VIRTIO_MMIO_QUEUE_NUM, 0);
        r.w(VIRTIO_MMIO_QUEUE_DESC_LOW, 0);
        r.w(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
        r.w(VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0);
        r.w(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
        r.w(VIRTIO_MMIO_QUEUE_USED_LOW, 0);
        r.w(VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.0.w(VIRTIO_MMIO_QUEUE_SEL, u32::from(queue));
        self.0.r(VIRTIO_MMIO_QUEUE_READY) != 0
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let status = self.0.r(VIRTIO_MMIO_INTERRUPT_STATUS);
        if status != 0 {
            self.0.w(VIRTIO_MMIO_INTERRUPT_ACK, status);
        }
        InterruptStatus::from_bits_retain(status)
    }

    fn read_config_generation(&self) -> u32 {
        self.0.r(VIRTIO_MMIO_CONFIG_GENERATION)
    }

    fn read_config_space<T>(&self, _offset: usize) -> virtio_drivers::Result<T> {
        // The queue tests read no configuration; pvirq's layout is spec §2.4.
        Err(virtio_drivers::Error::Unsupported)
    }

    fn write_config_space<T>(&mut self, _offset: usize, _value: T) -> virtio_drivers::Result<()> {
        Err(virtio_drivers::Error::Unsupported)
    }
}
