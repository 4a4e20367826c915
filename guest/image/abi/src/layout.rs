//! Guest physical memory and I/O layout. The guest identity-maps the low 4 GiB, so these are
//! also its virtual addresses.

/// Magic at the start of [`BootHeader`]: "PVIRQIMG".
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"PVIRQIMG");
/// Where the image is linked and loaded; its [`BootHeader`] is the first thing there.
pub const IMAGE_BASE: u64 = 0x8_0000;
/// The most the image may occupy (code, data, page tables, IDT).
pub const IMAGE_MAX: u64 = 0x4_0000;

/// The image's header, at [`IMAGE_BASE`]: what the VMM needs to enter it in long mode with
/// the image's own page tables and GDT. All fields little-endian `u64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BootHeader {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// Physical address of the PML4 (CR3).
    pub pml4: u64,
    /// Physical address of the GDT.
    pub gdt: u64,
    /// GDT limit (bytes - 1).
    pub gdt_limit: u64,
    /// Entry of the bootstrap vCPU.
    pub bsp_entry: u64,
    /// Entry of every other vCPU.
    pub ap_entry: u64,
}

/// [`BootHeader`] size in bytes.
pub const BOOT_HEADER_SIZE: usize = 6 * 8;

impl BootHeader {
    /// Decodes the header from its bytes.
    pub fn decode(bytes: &[u8; BOOT_HEADER_SIZE]) -> Self {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            for (k, b) in w.iter_mut().enumerate() {
                *b = bytes.get(i * 8 + k).copied().unwrap_or(0);
            }
            u64::from_le_bytes(w)
        };
        BootHeader {
            magic: word(0),
            pml4: word(1),
            gdt: word(2),
            gdt_limit: word(3),
            bsp_entry: word(4),
            ap_entry: word(5),
        }
    }
}

/// GDT selector of the 64-bit kernel code segment.
pub const KERNEL_CS: u16 = 0x08;
/// GDT selector of the kernel data segment.
pub const KERNEL_DS: u16 = 0x10;

/// The mailbox (see [`crate::mailbox`]): 64 KiB.
pub const MAILBOX: u64 = 0x1_0000;
/// Bytes of the mailbox.
pub const MAILBOX_SIZE: u64 = 0x1_0000;
/// One `u32` per APIC ID, set to 1 once that vCPU's APIC is enabled and interrupts are on.
pub const READY: u64 = 0x2_0000;
/// One `u64` per APIC ID: the TSC when that vCPU last entered an interrupt handler.
pub const LAST_TSC: u64 = 0x2_1000;
/// What the VMM tells the image before it starts: one `u32`, a [`Mode`] value.
pub const BOOT_MODE: u64 = 0x2_2000;
/// The TSC frequency in kHz, one `u32`, written by the VMM before the guest starts (the
/// guest's timeouts; every figure is reported in cycles and converted by the VMM).
pub const TSC_KHZ: u64 = 0x2_2004;
/// The VM's vCPU count, one `u32`, written by the VMM before the guest starts.
pub const VCPU_COUNT: u64 = 0x2_2008;
/// vCPU `n`'s APIC ID, one `u32` per vCPU index in index order, written by the VMM before
/// the guest starts: what a firmware's MADT tells a guest kernel. A version-1 target names a
/// vCPU index and the guest finds the APIC ID its interrupt arrives on here; with `APIC_ID`
/// targets name the APIC ID itself.
pub const VCPU_APIC_IDS: u64 = 0x2_2100;
/// The largest APIC ID the guest supports: it runs its local APIC in xAPIC mode, where
/// physical destination 0xFF is the broadcast, and counts by APIC ID below 256.
pub const MAX_APIC_ID: u32 = 0xFE;
/// Interrupt counters: `u32` at `COUNTERS + (apic_id * 256 + vector) * 4`, for every APIC ID
/// up to 255, so the handler needs no bounds check.
pub const COUNTERS: u64 = 0x4_0000;
/// Bytes of counters.
pub const COUNTERS_SIZE: u64 = 256 * 256 * 4;
/// Kernel stacks, [`KERNEL_STACK_SIZE`] each, aligned to their size; vCPU `n`'s from
/// `KERNEL_STACKS + n * KERNEL_STACK_SIZE`. The lowest `u64` of each holds the vCPU's APIC
/// ID, which is how the interrupt handler knows where it runs without an APIC read.
pub const KERNEL_STACKS: u64 = 0xC_0000;
/// Bytes per kernel stack.
pub const KERNEL_STACK_SIZE: u64 = 0x1000;
/// The most vCPUs the kernel-stack area holds.
pub const MAX_VCPUS: usize = ((0x10_0000 - KERNEL_STACKS) / KERNEL_STACK_SIZE) as usize;
/// Guest memory the image needs to boot and count interrupts ([`Mode::Counter`]).
pub const MIN_MEM_SIZE: usize = 0x10_0000;
/// The driver's CPL-3 stack, top at [`USER_STACK_TOP`].
pub const USER_STACK_BASE: u64 = 0x10_0000;
/// Top of the CPL-3 stack.
pub const USER_STACK_TOP: u64 = 0x20_0000;
/// Start of the memory the driver hands to the device (virtqueue and request buffers).
pub const DMA_BASE: u64 = 0x20_0000;
/// End of the driver's DMA window.
pub const DMA_END: u64 = 0x50_0000;
/// The image's zero-initialised data (the driver's bookkeeping), linked here and never
/// loaded: it only exists in [`Mode::Driver`]'s larger memory.
pub const BSS_BASE: u64 = 0x50_0000;
/// End of the zero-initialised data.
pub const BSS_END: u64 = 0x60_0000;
/// IMS slot arrays in guest RAM, as IDXD keeps them: device `n`'s at
/// `IMS_AREA + n * IMS_AREA_PER_DEVICE`.
pub const IMS_AREA: u64 = 0x60_0000;
/// Bytes of one device's IMS slot array (1,024 slots).
pub const IMS_AREA_PER_DEVICE: u64 = 0x4000;
/// Guest memory [`Mode::Driver`] needs.
pub const DRIVER_MIN_MEM_SIZE: usize = 0x80_0000;
/// The most guest memory: RAM stays below the MMIO window.
pub const MAX_MEM_SIZE: usize = 0xC000_0000;

/// Top of vCPU `index`'s kernel stack.
pub const fn kernel_stack_top(index: usize) -> u64 {
    KERNEL_STACKS + (index as u64 + 1) * KERNEL_STACK_SIZE
}

/// Address of the counter for (`apic_id`, `vector`).
pub const fn counter(apic_id: u8, vector: u8) -> u64 {
    COUNTERS + (apic_id as u64 * 256 + vector as u64) * 4
}

/// Address of the ready flag of `apic_id`.
pub const fn ready_flag(apic_id: u8) -> u64 {
    READY + apic_id as u64 * 4
}

/// Address of the last-interrupt TSC of `apic_id`.
pub const fn last_tsc(apic_id: u8) -> u64 {
    LAST_TSC + apic_id as u64 * 8
}

/// Address of the APIC ID of vCPU `index` (below [`MAX_VCPUS`]).
pub const fn vcpu_apic_id(index: usize) -> u64 {
    VCPU_APIC_IDS + index as u64 * 4
}

// The vCPU table fits below the counters and past the boot words.
const _: () = assert!(VCPU_APIC_IDS + MAX_VCPUS as u64 * 4 <= COUNTERS);
const _: () = assert!(VCPU_COUNT + 4 <= VCPU_APIC_IDS);

/// What the bootstrap vCPU does once its descriptor tables and APIC are up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Mode {
    /// Stay at CPL 0 and count interrupts in `hlt` like every other vCPU.
    Counter = 0,
    /// Drop to CPL 3 and run the pvirq driver, taking commands from the mailbox.
    Driver = 1,
}

/// Port the guest writes (any value) to stop its vCPU: from the NMI handler, or after a
/// `Shutdown` command.
pub const STOP_PORT: u16 = 0xF4;
/// Port the guest writes the vector of an unexpected CPU exception to.
pub const FAULT_PORT: u16 = 0xF6;
/// The mailbox doorbell: the CPL-3 driver writes it when its report is in the mailbox; the
/// VMM holds the vCPU in this exit until it has posted the next command. (MMIO, not a port:
/// under PVM, IOPL 3 does not survive the return to CPL 3, so user-mode port I/O faults.)
pub const MAILBOX_DOORBELL: u64 = 0xD000_2000;
/// Written by the CPL-3 driver to stop its vCPU (after `Shutdown`).
pub const MAILBOX_STOP: u64 = 0xD000_2004;
/// Written by the CPL-3 driver with a fault code (a panic: 0xFF).
pub const MAILBOX_FAULT: u64 = 0xD000_2008;

/// The pvirq virtio-mmio window.
pub const PVIRQ_MMIO: u64 = 0xD000_0000;
/// Bytes of the pvirq window.
pub const PVIRQ_MMIO_SIZE: u64 = 0x1000;
/// A register that does nothing: one write is the bare cost of an MMIO exit to the VMM.
pub const NULL_MMIO: u64 = 0xD000_1000;
/// Bytes of the null window.
pub const NULL_MMIO_SIZE: u64 = 0x1000;
/// BAR of pass-through device `n`: `DEVICE_BARS + n * DEVICE_BAR_SIZE`.
pub const DEVICE_BARS: u64 = 0xD010_0000;
/// Bytes per pass-through device BAR.
pub const DEVICE_BAR_SIZE: u64 = 0x1_0000;
/// The most pass-through devices one VM gets.
pub const MAX_DEVICES: usize = 16;

/// BAR of pass-through device `index`.
pub const fn device_bar(index: usize) -> u64 {
    DEVICE_BARS + index as u64 * DEVICE_BAR_SIZE
}

/// The vector the pvirq device's used-buffer interrupt arrives on (vCPU 0).
pub const PVIRQ_VECTOR: u8 = 0x30;
/// The vector the benchmark's plain irqfd (no pvirq in the path) arrives on (vCPU 0).
pub const PLAIN_IRQFD_VECTOR: u8 = 0x31;
