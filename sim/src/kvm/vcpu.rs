//! One vCPU: put it in flat 32-bit protected mode at the program's entry, then run it on its
//! own thread until the guest asks to stop.

use std::io;

use kvm_bindings::{KVM_MP_STATE_RUNNABLE, kvm_dtable, kvm_mp_state, kvm_segment};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::error::KvmGuestError;
use super::layout::{FAULT_PORT, GDT, IDT, STOP_PORT, stack_top};
use super::program::{CODE_SELECTOR, DATA_SELECTOR, ENTRY, GDT_ENTRIES, IDT_ENTRIES};

/// CR0.PE: protected mode.
const CR0_PE: u64 = 1 << 0;
/// CR0.NW and CR0.CD: set at reset; cleared so the guest runs with caches on.
const CR0_NW_CD: u64 = (1 << 29) | (1 << 30);
/// RFLAGS bit 1 is always set; IF starts clear, the guest enables it with `sti`.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// A flat 4 GiB segment; its cached descriptor matches the GDT entry for `selector`.
fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        ..Default::default()
    }
}

/// Points vCPU `index` at the program: protected mode, flat segments, the GDT and IDT, its
/// own stack. KVM gives vCPU `index` APIC ID `index`.
pub(crate) fn configure(vcpu: &VcpuFd, index: usize) -> Result<(), KvmGuestError> {
    let setup = |step| {
        move |source| KvmGuestError::SetupVcpu {
            vcpu: index,
            step,
            source,
        }
    };
    let mut sregs = vcpu.get_sregs().map_err(setup("KVM_GET_SREGS"))?;
    // Execute/read, accessed (0xB) and read/write, accessed (0x3), as in the GDT.
    sregs.cs = flat_segment(CODE_SELECTOR, 0xB);
    let data = flat_segment(DATA_SELECTOR, 0x3);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.gdt = kvm_dtable {
        base: GDT,
        limit: (GDT_ENTRIES.len() * 8 - 1) as u16,
        ..Default::default()
    };
    // Loaded here rather than by the guest, so an NMI that arrives before the first
    // instruction already finds its handler.
    sregs.idt = kvm_dtable {
        base: IDT,
        limit: (IDT_ENTRIES * 8 - 1) as u16,
        ..Default::default()
    };
    sregs.cr0 = (sregs.cr0 | CR0_PE) & !CR0_NW_CD;
    vcpu.set_sregs(&sregs).map_err(setup("KVM_SET_SREGS"))?;

    let mut regs = vcpu.get_regs().map_err(setup("KVM_GET_REGS"))?;
    regs.rip = ENTRY;
    regs.rsp = stack_top(index);
    regs.rflags = RFLAGS_RESERVED;
    vcpu.set_regs(&regs).map_err(setup("KVM_SET_REGS"))?;

    // With the in-kernel irqchip, every vCPU but 0 starts waiting for INIT/SIPI and KVM_RUN
    // would block; there is no firmware to wake it, so make it runnable directly.
    let runnable = kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    };
    vcpu.set_mp_state(runnable)
        .map_err(setup("KVM_SET_MP_STATE"))
}

/// Runs vCPU `index` until the guest writes [`STOP_PORT`]. With the in-kernel irqchip,
/// `hlt` and interrupt delivery stay inside KVM, so any other exit is an error.
pub(crate) fn run(mut vcpu: VcpuFd, index: usize) -> Result<(), KvmGuestError> {
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(STOP_PORT, _)) => return Ok(()),
            Ok(VcpuExit::IoOut(FAULT_PORT, data)) => {
                return Err(KvmGuestError::GuestException {
                    vcpu: index,
                    vector: data.first().copied().unwrap_or(u8::MAX),
                });
            }
            Ok(VcpuExit::InternalError) => {
                return Err(KvmGuestError::UnexpectedExit {
                    vcpu: index,
                    exit: internal_error(&mut vcpu),
                });
            }
            Ok(exit) => {
                return Err(KvmGuestError::UnexpectedExit {
                    vcpu: index,
                    exit: format!("{exit:?}"),
                });
            }
            Err(source) => match io::Error::from(source).kind() {
                // A signal or a pending request interrupted KVM_RUN: just enter again.
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => {}
                _ => {
                    return Err(KvmGuestError::Run {
                        vcpu: index,
                        source,
                    });
                }
            },
        }
    }
}

/// Describes a `KVM_EXIT_INTERNAL_ERROR`: KVM's suberror and the data it attached (for an
/// emulation failure, the instruction bytes and where it was).
fn internal_error(vcpu: &mut VcpuFd) -> String {
    // SAFETY: KVM filled the `internal` member: the exit reason was INTERNAL_ERROR.
    let internal = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
    let data = internal
        .data
        .get(..internal.ndata as usize)
        .unwrap_or(&internal.data);
    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
    format!(
        "InternalError(suberror {}, data {data:x?}, rip {rip:#x})",
        internal.suberror
    )
}
