//! The few CPU instructions the CPL-3 driver uses: TSC, pause, and the VMM's doorbell
//! registers (MMIO: port I/O is not available at CPL 3 under PVM).

use pvirq_guest_image_abi::layout;

/// The time-stamp counter (CR4.TSD is clear, so this works at CPL 3).
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` reads a counter; no memory is touched.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Writes `value` to one of the VMM's doorbell registers (an MMIO exit).
pub fn doorbell(register: u64, value: u32) {
    // SAFETY: the mailbox registers are an MMIO window of the VMM's (layout), mapped and
    // user-accessible; the write has no effect on guest memory.
    unsafe { core::ptr::write_volatile(register as *mut u32, value) }
}

/// Reports an unexpected condition to the VMM and stops making progress.
pub fn fault(code: u8) -> ! {
    loop {
        doorbell(layout::MAILBOX_FAULT, u32::from(code));
        core::hint::spin_loop();
    }
}

/// TSC ticks per millisecond, as the VMM measured them (at least 1).
pub fn ticks_per_ms() -> u64 {
    // SAFETY: TSC_KHZ is a `u32` of the mailbox area the VMM writes before boot.
    let khz = unsafe { core::ptr::read_volatile(layout::TSC_KHZ as *const u32) };
    u64::from(khz).max(1)
}

/// Spins until `done` holds or `ms` milliseconds pass; whether `done` held.
pub fn spin_until(ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let end = rdtsc().saturating_add(ms.saturating_mul(ticks_per_ms()));
    loop {
        if done() {
            return true;
        }
        if rdtsc() >= end {
            return false;
        }
        core::hint::spin_loop();
    }
}

/// Interrupts counted on (`apic_id`, `vector`) so far.
pub fn count(apic_id: u8, vector: u8) -> u32 {
    // SAFETY: the counter array covers every (APIC ID, vector) pair and lies in RAM the
    // handler updates atomically; a volatile read sees its latest value.
    unsafe { core::ptr::read_volatile(layout::counter(apic_id, vector) as *const u32) }
}

/// The TSC stamped by the last interrupt handler run on `apic_id`.
pub fn last_interrupt_tsc(apic_id: u8) -> u64 {
    // SAFETY: as in `count`.
    unsafe { core::ptr::read_volatile(layout::last_tsc(apic_id) as *const u64) }
}
