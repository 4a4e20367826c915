//! One vCPU: entered in 64-bit mode at the image's entry with the image's own page tables
//! and GDT, then run on its own thread; every exit is dispatched here.

use super::error::VmmError;
use super::exits::ExitCounters;
use super::mailbox::MailboxSync;
use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, kvm_mp_state, kvm_segment,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use pvirq_guest_image_abi::layout::{
    BootHeader, FAULT_PORT, KERNEL_CS, KERNEL_DS, MAILBOX_DOORBELL, MAILBOX_FAULT, MAILBOX_STOP,
    STOP_PORT, kernel_stack_top,
};
use std::io;
use std::sync::Arc;
use vm_device::bus::MmioAddress;
use vm_device::device_manager::{IoManager, MmioManager};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_: if code { 0xB } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

/// The CPUID KVM supports, which the vCPUs get as is (long mode needs LM in it).
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VmmError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VmmError::Kvm {
            step: "KVM_GET_SUPPORTED_CPUID",
            source,
        })
}

/// Puts vCPU `index` at the image's entry in long mode: CR3 and GDT from the header, its
/// kernel stack, its APIC ID `apic_id` in `rdi`.
pub fn configure(
    vcpu: &VcpuFd,
    index: usize,
    apic_id: u32,
    header: &BootHeader,
    cpuid: &CpuId,
) -> Result<(), VmmError> {
    let step = |step| {
        move |source| VmmError::Vcpu {
            vcpu: index,
            step,
            source,
        }
    };
    vcpu.set_cpuid2(cpuid).map_err(step("KVM_SET_CPUID2"))?;
    let mut sregs = vcpu.get_sregs().map_err(step("KVM_GET_SREGS"))?;
    sregs.cs = segment(KERNEL_CS, true);
    let data = segment(KERNEL_DS, false);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.gdt.base = header.gdt;
    sregs.gdt.limit = u16::try_from(header.gdt_limit).unwrap_or(u16::MAX);
    sregs.cr3 = header.pml4;
    sregs.cr4 = CR4_PAE;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(step("KVM_SET_SREGS"))?;

    let mut regs = vcpu.get_regs().map_err(step("KVM_GET_REGS"))?;
    regs.rip = if index == 0 {
        header.bsp_entry
    } else {
        header.ap_entry
    };
    regs.rsp = kernel_stack_top(index);
    regs.rdi = u64::from(apic_id);
    regs.rflags = 1 << 1;
    vcpu.set_regs(&regs).map_err(step("KVM_SET_REGS"))?;
    // With the in-kernel irqchip every vCPU but 0 waits for INIT/SIPI; there is no
    // firmware to send them, so make each runnable directly.
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    })
    .map_err(step("KVM_SET_MP_STATE"))
}

/// What a vCPU thread shares with the VM.
pub struct VcpuContext {
    /// The MMIO bus.
    pub bus: Arc<IoManager>,
    /// Exit counters.
    pub exits: Arc<ExitCounters>,
    /// The mailbox hand-over (vCPU 0 uses it).
    pub mailbox: Arc<MailboxSync>,
    /// Guest memory (to describe a guest exception).
    pub mem: GuestMemoryMmap,
}

/// Runs vCPU `index` until the guest writes the stop port (or, for vCPU 0, the mailbox is
/// closed while it waits).
pub fn run(mut vcpu: VcpuFd, index: usize, ctx: VcpuContext) -> Result<(), VmmError> {
    loop {
        match vcpu.run() {
            Ok(VcpuExit::MmioWrite(MAILBOX_DOORBELL, _)) => {
                ctx.exits.mailbox();
                if !ctx.mailbox.guest_reported() {
                    return Ok(());
                }
            }
            Ok(VcpuExit::MmioWrite(MAILBOX_STOP, _)) => return Ok(()),
            Ok(VcpuExit::MmioWrite(MAILBOX_FAULT, data)) => {
                return Err(VmmError::GuestException {
                    vcpu: index,
                    vector: data.first().copied().unwrap_or(u8::MAX),
                    frame: [0; 6],
                });
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                ctx.exits.mmio(addr);
                // Writes nobody owns are dropped, as on a bus with no device there.
                let _ = ctx.bus.mmio_write(MmioAddress(addr), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                ctx.exits.mmio(addr);
                if ctx.bus.mmio_read(MmioAddress(addr), data).is_err() {
                    data.fill(0xFF);
                }
            }
            Ok(VcpuExit::IoOut(STOP_PORT, _)) => return Ok(()),
            Ok(VcpuExit::IoOut(FAULT_PORT, data)) => {
                let vector = data.first().copied().unwrap_or(u8::MAX);
                return Err(VmmError::GuestException {
                    vcpu: index,
                    vector,
                    frame: exception_frame(&vcpu, &ctx.mem),
                });
            }
            Ok(VcpuExit::InternalError) => {
                return Err(VmmError::UnexpectedExit {
                    vcpu: index,
                    exit: internal_error(&mut vcpu),
                });
            }
            Ok(exit) => {
                let exit = format!("{exit:?}");
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
                return Err(VmmError::UnexpectedExit {
                    vcpu: index,
                    exit: format!("{exit} at rip {rip:#x}"),
                });
            }
            Err(source) => match io::Error::from(source).kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => {}
                _ => {
                    return Err(VmmError::Vcpu {
                        vcpu: index,
                        step: "KVM_RUN",
                        source,
                    });
                }
            },
        }
    }
}

/// The interrupt frame of an exception the guest reported: the handler pushed three
/// registers on top of the vector, so `[rsp + 32..]` holds the error code (when the
/// exception has one) or RIP, then the rest of the frame. Six words, raw.
fn exception_frame(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> [u64; 6] {
    let mut frame = [0u64; 6];
    if let Ok(regs) = vcpu.get_regs() {
        for (i, w) in frame.iter_mut().enumerate() {
            *w = mem
                .read_obj(GuestAddress(regs.rsp.wrapping_add(32 + 8 * i as u64)))
                .unwrap_or(u64::MAX);
        }
    }
    frame
}

/// Describes a `KVM_EXIT_INTERNAL_ERROR` (for an emulation failure, the instruction bytes).
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
