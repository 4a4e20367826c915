//! The VM's vCPUs as the VMM described them before boot (the layout's vCPU table, what a
//! firmware's MADT tells a kernel): how many there are and each one's APIC ID. An interrupt
//! is counted by the APIC ID it arrives on, so every target the guest records is turned into
//! an APIC ID here.

use pvirq_guest_image_abi::layout::{MAX_APIC_ID, MAX_VCPUS, VCPU_COUNT, vcpu_apic_id};

/// The APIC ID of a target the guest cannot place (never a vCPU's: above [`MAX_APIC_ID`]).
/// Its counter never moves, so an interrupt expected there is reported missing.
pub const NO_APIC: u8 = 0xFF;

const _: () = assert!(MAX_APIC_ID < NO_APIC as u32);

fn read32(addr: u64) -> u32 {
    // SAFETY: the vCPU table lies in RAM the VMM wrote before boot, identity-mapped and
    // user-accessible; it is never written afterwards.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// The VM's vCPU count (at most the layout's).
pub fn vcpu_count() -> usize {
    (read32(VCPU_COUNT) as usize).min(MAX_VCPUS)
}

/// The APIC ID of vCPU `index`, if the VM has that vCPU and its ID is one the guest counts.
pub fn apic_of_vcpu(index: u32) -> Option<u8> {
    let index = usize::try_from(index).ok().filter(|i| *i < vcpu_count())?;
    let id = read32(vcpu_apic_id(index));
    u8::try_from(id)
        .ok()
        .filter(|id| u32::from(*id) <= MAX_APIC_ID)
}

/// The APIC ID an interrupt to the wire target `cpu` arrives on: the vCPU index's APIC ID,
/// or with `APIC_ID` negotiated (`apic_ids`) the value itself when it is one of the VM's.
/// [`NO_APIC`] for anything else.
pub fn apic_of_target(cpu: u32, apic_ids: bool) -> u8 {
    let found = if apic_ids {
        (0..vcpu_count() as u32).find(|i| apic_of_vcpu(*i).is_some_and(|id| u32::from(id) == cpu))
    } else {
        Some(cpu)
    };
    found.and_then(apic_of_vcpu).unwrap_or(NO_APIC)
}
