//! Just enough of an NVMe driver, over VFIO from user space, to make the emulated
//! controller raise chosen MSI-X vectors: the admin queue completes on vector 0, and an
//! I/O completion queue created with interrupt vector k completes on vector k.
//!
//! DMA memory is an anonymous mapping given to the container; it is touched only through
//! volatile reads and writes on raw pointers, since the device writes it concurrently.

use std::sync::Arc;
use std::time::{Duration, Instant};
use vfio_bindings::bindings::vfio::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX};
use vfio_ioctls::{VfioContainer, VfioDevice};

const IOVA: u64 = 0x1000_0000;
const DMA_SIZE: usize = 1 << 21;
const ASQ: usize = 0x0000;
const ACQ: usize = 0x1000;
const IOSQ: usize = 0x2000;
const IOCQ: usize = 0x3000;
const BUF: usize = 0x4000;
const QUEUE_ENTRIES: u16 = 64;

/// Why the controller could not be driven.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// The DMA buffer could not be mapped.
    #[error("mmap of the DMA buffer failed")]
    Mmap,
    /// The container refused the DMA mapping.
    #[error("VFIO_IOMMU_MAP_DMA: {0}")]
    DmaMap(#[source] vfio_ioctls::VfioError),
    /// CSTS.RDY did not change in time.
    #[error("controller not ready (CSTS {0:#x})")]
    NotReady(u32),
    /// A command did not complete in time.
    #[error("command {opcode:#x} on queue {queue} timed out")]
    Timeout {
        /// The opcode.
        opcode: u8,
        /// The queue.
        queue: u16,
    },
    /// A command completed with an error status.
    #[error("command {opcode:#x} failed with status {status:#x}")]
    Status {
        /// The opcode.
        opcode: u8,
        /// The status field.
        status: u16,
    },
}

struct Queue {
    sq: usize,
    cq: usize,
    tail: u16,
    head: u16,
    phase: u16,
}

/// The controller.
pub struct Nvme {
    device: Arc<VfioDevice>,
    container: Arc<VfioContainer>,
    dma: *mut u8,
    stride: u32,
    admin: Queue,
    io: Option<Queue>,
    cid: u16,
}

impl Nvme {
    /// Maps DMA memory, enables bus mastering and brings the controller up with its admin
    /// queue (whose completions use MSI-X vector 0).
    pub fn new(device: Arc<VfioDevice>, container: Arc<VfioContainer>) -> Result<Self, NvmeError> {
        // SAFETY: an anonymous private mapping; checked for MAP_FAILED below.
        let dma = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                DMA_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if dma == libc::MAP_FAILED {
            return Err(NvmeError::Mmap);
        }
        let dma = dma.cast::<u8>();
        // SAFETY: the mapping lives as long as `Nvme` (never unmapped), and is only
        // accessed through raw pointers.
        unsafe { container.vfio_dma_map(IOVA, DMA_SIZE, dma) }.map_err(NvmeError::DmaMap)?;
        let mut nvme = Nvme {
            device,
            container,
            dma,
            stride: 4,
            admin: Queue {
                sq: ASQ,
                cq: ACQ,
                tail: 0,
                head: 0,
                phase: 1,
            },
            io: None,
            cid: 0,
        };
        nvme.enable()?;
        Ok(nvme)
    }

    fn rd32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.device
            .region_read(VFIO_PCI_BAR0_REGION_INDEX, &mut b, off);
        u32::from_le_bytes(b)
    }

    fn wr32(&self, off: u64, v: u32) {
        self.device
            .region_write(VFIO_PCI_BAR0_REGION_INDEX, &v.to_le_bytes(), off);
    }

    fn wait_ready(&self, ready: bool) -> Result<(), NvmeError> {
        let t0 = Instant::now();
        while (self.rd32(0x1c) & 1 == 1) != ready {
            if t0.elapsed() > Duration::from_secs(5) {
                return Err(NvmeError::NotReady(self.rd32(0x1c)));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(())
    }

    fn enable(&mut self) -> Result<(), NvmeError> {
        let mut cmd = [0u8; 2];
        self.device
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut cmd, 4);
        let cmd = u16::from_le_bytes(cmd) | 0x6; // memory space + bus master
        self.device
            .region_write(VFIO_PCI_CONFIG_REGION_INDEX, &cmd.to_le_bytes(), 4);
        let cap_hi = self.rd32(4);
        self.stride = 4 << (cap_hi & 0xf);
        self.wr32(0x14, 0);
        self.wait_ready(false)?;
        let q = u32::from(QUEUE_ENTRIES - 1);
        self.wr32(0x24, (q << 16) | q);
        let asq = IOVA + ASQ as u64;
        let acq = IOVA + ACQ as u64;
        self.wr32(0x28, asq as u32);
        self.wr32(0x2c, (asq >> 32) as u32);
        self.wr32(0x30, acq as u32);
        self.wr32(0x34, (acq >> 32) as u32);
        // IOCQES 16 bytes (4), IOSQES 64 bytes (6), enable.
        self.wr32(0x14, (4 << 20) | (6 << 16) | 1);
        self.wait_ready(true)
    }

    /// Submits a command on the admin (`io = false`) or I/O queue and polls for its
    /// completion (the interrupt is what the caller watches); returns the status.
    fn submit(
        &mut self,
        io: bool,
        opcode: u8,
        nsid: u32,
        prp1: u64,
        cdw10: u32,
        cdw11: u32,
    ) -> Result<u16, NvmeError> {
        self.cid = self.cid.wrapping_add(1);
        let cid = self.cid;
        let dma = self.dma;
        let stride = u64::from(self.stride);
        let (qid, q) = match (io, self.io.as_mut()) {
            (true, Some(q)) => (1u64, q),
            _ => (0u64, &mut self.admin),
        };
        let mut sqe = [0u32; 16];
        sqe[0] = u32::from(opcode) | (u32::from(cid) << 16);
        sqe[1] = nsid;
        sqe[6] = prp1 as u32;
        sqe[7] = (prp1 >> 32) as u32;
        sqe[10] = cdw10;
        sqe[11] = cdw11;
        let slot = q.sq + 64 * usize::from(q.tail);
        for (i, w) in sqe.iter().enumerate() {
            // SAFETY: inside the DMA mapping (slot < 0x2000 + 64 * 64 + 64 ≤ DMA_SIZE).
            unsafe { dma.add(slot + 4 * i).cast::<u32>().write_volatile(*w) };
        }
        q.tail = (q.tail + 1) % QUEUE_ENTRIES;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let tail = q.tail;
        let cq_slot = q.cq + 16 * usize::from(q.head);
        let phase = q.phase;
        self.device.region_write(
            VFIO_PCI_BAR0_REGION_INDEX,
            &u32::from(tail).to_le_bytes(),
            0x1000 + 2 * qid * stride,
        );
        let t0 = Instant::now();
        let status = loop {
            // SAFETY: inside the DMA mapping; the device writes it, so volatile.
            let dw3 = unsafe { dma.add(cq_slot + 12).cast::<u32>().read_volatile() };
            let (ccid, st) = (dw3 as u16, (dw3 >> 16) as u16);
            if st & 1 == phase && ccid == cid {
                break st >> 1;
            }
            if t0.elapsed() > Duration::from_secs(5) {
                return Err(NvmeError::Timeout {
                    opcode,
                    queue: qid as u16,
                });
            }
            std::hint::spin_loop();
        };
        let q = match (io, self.io.as_mut()) {
            (true, Some(q)) => q,
            _ => &mut self.admin,
        };
        q.head = (q.head + 1) % QUEUE_ENTRIES;
        if q.head == 0 {
            q.phase ^= 1;
        }
        let head = q.head;
        self.device.region_write(
            VFIO_PCI_BAR0_REGION_INDEX,
            &u32::from(head).to_le_bytes(),
            0x1000 + (2 * qid + 1) * stride,
        );
        if status != 0 {
            return Err(NvmeError::Status { opcode, status });
        }
        Ok(status)
    }

    /// Identify Controller on the admin queue (completes on vector 0); returns the model.
    pub fn identify(&mut self) -> Result<String, NvmeError> {
        self.submit(false, 0x06, 0, IOVA + BUF as u64, 1, 0)?;
        let mut model = Vec::with_capacity(40);
        for i in 24..64 {
            // SAFETY: inside the DMA mapping.
            model.push(unsafe { self.dma.add(BUF + i).read_volatile() });
        }
        Ok(String::from_utf8_lossy(&model).trim().to_string())
    }

    /// (Re)creates I/O queue pair 1 with its completions on MSI-X `vector`.
    pub fn io_queue_on(&mut self, vector: u16) -> Result<(), NvmeError> {
        if self.io.take().is_some() {
            self.submit(false, 0x00, 0, 0, 1, 0)?; // delete SQ 1
            self.submit(false, 0x04, 0, 0, 1, 0)?; // delete CQ 1
        }
        for i in 0..0x1000 {
            // SAFETY: inside the DMA mapping; clears the old completions' phase bits.
            unsafe { self.dma.add(IOCQ + i).write_volatile(0) };
        }
        let q = u32::from(QUEUE_ENTRIES - 1) << 16 | 1;
        self.submit(
            false,
            0x05,
            0,
            IOVA + IOCQ as u64,
            q,
            (u32::from(vector) << 16) | 3,
        )?;
        self.submit(false, 0x01, 0, IOVA + IOSQ as u64, q, (1 << 16) | 1)?;
        self.io = Some(Queue {
            sq: IOSQ,
            cq: IOCQ,
            tail: 0,
            head: 0,
            phase: 1,
        });
        Ok(())
    }

    /// A Flush on the I/O queue (completes on the I/O queue's vector).
    pub fn flush(&mut self) -> Result<(), NvmeError> {
        self.submit(true, 0x00, 1, 0, 0, 0).map(|_| ())
    }
}

impl Drop for Nvme {
    fn drop(&mut self) {
        // Disable the controller, give the IOVA range back, then the memory.
        self.wr32(0x14, 0);
        let _ = self.wait_ready(false);
        let _ = self.container.vfio_dma_unmap(IOVA, DMA_SIZE);
        // SAFETY: the mapping made in `new`, no longer reachable by the device.
        unsafe { libc::munmap(self.dma.cast(), DMA_SIZE) };
    }
}
