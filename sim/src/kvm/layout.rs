//! Where everything lives in the guest's physical memory (identity-mapped: paging is off and
//! all segments are flat, so these are also the guest's linear addresses).

/// The GDT: null, flat code (selector 0x08), flat data (selector 0x10).
pub(crate) const GDT: u64 = 0x1000;
/// The IDT: 256 32-bit interrupt gates.
pub(crate) const IDT: u64 = 0x2000;
/// Entry point and the shared handler bodies.
pub(crate) const CODE: u64 = 0x3000;
/// One 10-byte stub per vector: push the vector, jump to its handler body.
pub(crate) const STUBS: u64 = 0x4000;
/// One `u32` per APIC ID, set to 1 once that vCPU's APIC is enabled.
pub(crate) const READY: u64 = 0x5000;
/// vCPU stacks, [`STACK_SIZE`] each, vCPU n's above vCPU n-1's.
pub(crate) const STACKS: u64 = 0x1_0000;
/// Bytes of stack per vCPU (a handler uses 20).
pub(crate) const STACK_SIZE: u64 = 0x1000;
/// Interrupt counters: `u32` at `COUNTERS + (apic_id * 256 + vector) * 4`, for every
/// possible APIC ID, so the guest needs no bounds check.
pub(crate) const COUNTERS: u64 = 0x4_0000;
/// Bytes of counters: 256 APIC IDs × 256 vectors × 4.
pub(crate) const COUNTERS_SIZE: u64 = 256 * 256 * 4;

/// The most vCPUs the stack area holds.
pub const MAX_VCPUS: usize = ((COUNTERS - STACKS) / STACK_SIZE) as usize;
/// The least guest memory that holds the layout.
pub const MIN_MEM_SIZE: usize = (COUNTERS + COUNTERS_SIZE) as usize;
/// The most guest memory: RAM must stay below the 32-bit MMIO window and the APIC page.
pub const MAX_MEM_SIZE: usize = 0xC000_0000;

/// Local APIC registers, at the default APIC base (in-kernel LAPIC, no memslot there).
pub(crate) const APIC_ID: u32 = 0xFEE0_0020;
/// APIC end-of-interrupt register.
pub(crate) const APIC_EOI: u32 = 0xFEE0_00B0;
/// APIC spurious-interrupt vector register; bit 8 software-enables the APIC.
pub(crate) const APIC_SVR: u32 = 0xFEE0_00F0;

/// Port the guest writes to say "stop this vCPU" (from the NMI handler).
pub(crate) const STOP_PORT: u16 = 0xF4;
/// Port the guest writes the vector of an unexpected CPU exception to.
pub(crate) const FAULT_PORT: u16 = 0xF6;

/// Top of vCPU `index`'s stack.
pub(crate) const fn stack_top(index: usize) -> u64 {
    STACKS + (index as u64 + 1) * STACK_SIZE
}

/// Address of the counter for (`apic_id`, `vector`).
pub(crate) const fn counter(apic_id: u8, vector: u8) -> u64 {
    COUNTERS + (apic_id as u64 * 256 + vector as u64) * 4
}

/// Address of the ready flag of `apic_id`.
pub(crate) const fn ready_flag(apic_id: u8) -> u64 {
    READY + apic_id as u64 * 4
}
