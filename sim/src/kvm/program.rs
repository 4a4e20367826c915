//! The guest program, hand-assembled: 32-bit protected mode, no paging.
//!
//! Each vCPU enables its local APIC, marks itself ready, then idles in `sti; hlt`. Every
//! vector 0x20..=0xFF has a handler that counts the interrupt in
//! `COUNTERS[apic_id][vector]`, writes EOI and goes back to idling. An NMI is the stop request: its handler
//! writes to [`STOP_PORT`], which ends the vCPU's run loop. Any other exception writes its
//! vector to [`FAULT_PORT`], so a broken guest is reported, not silently wedged.

use super::layout::{
    APIC_EOI, APIC_ID, APIC_SVR, CODE, COUNTERS, FAULT_PORT, GDT, IDT, READY, STOP_PORT, STUBS,
};

/// Code segment selector (GDT entry 1).
pub(crate) const CODE_SELECTOR: u16 = 0x08;
/// Data segment selector (GDT entry 2).
pub(crate) const DATA_SELECTOR: u16 = 0x10;
/// Null, flat 4 GiB code (execute/read), flat 4 GiB data (read/write).
pub(crate) const GDT_ENTRIES: [u64; 3] = [0, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF];
/// Number of IDT gates.
pub(crate) const IDT_ENTRIES: usize = 256;
/// Present, DPL 0, 32-bit interrupt gate (clears IF on entry).
const INTERRUPT_GATE: u64 = 0x8E;
/// Bytes per vector stub: `push imm32` (5) + `jmp rel32` (5).
const STUB_SIZE: u64 = 10;
/// The NMI vector.
const NMI_VECTOR: usize = 2;
/// First vector that is an interrupt rather than a CPU exception.
const FIRST_INTERRUPT_VECTOR: usize = 0x20;

/// Where the vCPUs start.
pub(crate) const ENTRY: u64 = CODE;
/// The body every interrupt stub jumps to.
const COUNT_HANDLER: u64 = CODE + 0x100;
/// The NMI handler (the IDT points at it directly, no stub).
const NMI_HANDLER: u64 = CODE + 0x200;
/// The body every exception stub jumps to.
const FAULT_HANDLER: u64 = CODE + 0x300;

/// A byte buffer that knows the guest address it will be loaded at, with one method per
/// instruction form the program uses (encodings from the Intel SDM, 32-bit operand size).
struct Asm {
    base: u64,
    bytes: Vec<u8>,
}

impl Asm {
    fn at(base: u64) -> Self {
        Self {
            base,
            bytes: Vec::new(),
        }
    }

    /// Guest address of the next byte.
    fn here(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    fn emit_u32(&mut self, value: u32) {
        self.emit(&value.to_le_bytes());
    }

    /// `mov dword [addr], imm32` — C7 /0, ModRM 05 (disp32).
    fn mov_mem_imm32(&mut self, addr: u32, imm: u32) {
        self.emit(&[0xC7, 0x05]);
        self.emit_u32(addr);
        self.emit_u32(imm);
    }

    /// `mov dword [eax*4 + base], imm32` — C7 /0, ModRM 04 (SIB), SIB 85 (eax*4 + disp32).
    fn mov_eax4_imm32(&mut self, base: u32, imm: u32) {
        self.emit(&[0xC7, 0x04, 0x85]);
        self.emit_u32(base);
        self.emit_u32(imm);
    }

    /// `inc dword [eax*4 + base]` — FF /0, ModRM 04 (SIB), SIB 85.
    fn inc_eax4(&mut self, base: u32) {
        self.emit(&[0xFF, 0x04, 0x85]);
        self.emit_u32(base);
    }

    /// `mov eax, [addr]` — A1 moffs32.
    fn mov_eax_mem(&mut self, addr: u32) {
        self.emit(&[0xA1]);
        self.emit_u32(addr);
    }

    /// `shr eax, n` — C1 /5 ib.
    fn shr_eax(&mut self, n: u8) {
        self.emit(&[0xC1, 0xE8, n]);
    }

    /// `shl eax, n` — C1 /4 ib.
    fn shl_eax(&mut self, n: u8) {
        self.emit(&[0xC1, 0xE0, n]);
    }

    /// `add eax, [esp + disp8]` — 03 /r, ModRM 44 (SIB + disp8), SIB 24 (base esp).
    fn add_eax_stack(&mut self, disp: u8) {
        self.emit(&[0x03, 0x44, 0x24, disp]);
    }

    /// `add esp, imm8` — 83 /0 ib.
    fn add_esp(&mut self, n: u8) {
        self.emit(&[0x83, 0xC4, n]);
    }

    /// `pop eax` — 58.
    fn pop_eax(&mut self) {
        self.emit(&[0x58]);
    }

    /// `push imm32` — 68 id (imm32, so vectors >= 0x80 are not sign-extended).
    fn push_imm32(&mut self, imm: u32) {
        self.emit(&[0x68]);
        self.emit_u32(imm);
    }

    /// `out imm8, al` — E6 ib.
    fn out_al(&mut self, port: u16) {
        self.emit(&[0xE6, port as u8]);
    }

    /// `sti` — FB.
    fn sti(&mut self) {
        self.emit(&[0xFB]);
    }

    /// `hlt` — F4.
    fn hlt(&mut self) {
        self.emit(&[0xF4]);
    }

    /// `jmp rel8` — EB cb; `target` must be within -128..=127 of the next instruction.
    fn jmp_short(&mut self, target: u64) {
        let next = self.here() + 2;
        self.emit(&[0xEB, target.wrapping_sub(next) as u8]);
    }

    /// `jmp rel32` — E9 cd.
    fn jmp_near(&mut self, target: u64) {
        let next = self.here() + 5;
        self.emit(&[0xE9]);
        self.emit_u32(target.wrapping_sub(next) as u32);
    }

    /// Pads with `hlt` up to `addr`, so the next instruction lands there.
    fn align_to(&mut self, addr: u64) {
        while self.here() < addr {
            self.hlt();
        }
    }
}

/// Entry: enable the APIC, say ready, idle. Returns the address of the idle loop.
fn entry(a: &mut Asm) -> u64 {
    // Software-enable the local APIC (SVR bit 8), spurious vector 0xFF. Until this, KVM
    // drops fixed interrupts aimed at this vCPU.
    a.mov_mem_imm32(APIC_SVR, 0x1FF);
    // eax = APIC ID (APIC ID register bits 31:24).
    a.mov_eax_mem(APIC_ID);
    a.shr_eax(24);
    // READY[apic_id] = 1: the VMM waits for this before anyone sends interrupts.
    a.mov_eax4_imm32(READY as u32, 1);
    let idle = a.here();
    // `sti` takes effect after the next instruction, so no interrupt slips in between and
    // `hlt` always sleeps with interrupts enabled; KVM's in-kernel LAPIC wakes it.
    a.sti();
    a.hlt();
    a.jmp_short(idle);
    idle
}

/// The body of every interrupt handler. On entry the stack holds the vector (pushed by the
/// stub), then EIP, CS, EFLAGS (pushed by the CPU; no error code for interrupts).
///
/// It does not `iret`: on hosts where KVM runs a 32-bit guest through its instruction
/// emulator (measured here: `kvm_pvm`, no VMX), protected-mode `iret` is not emulated and
/// the vCPU dies with `KVM_INTERNAL_ERROR_EMULATION`. None is needed: interrupts are only
/// taken in the idle loop (IF is set nowhere else), which keeps no state, so the handler
/// drops the frame and jumps back to `idle`, whose `sti` sets IF again.
fn count_handler(a: &mut Asm, idle: u64) {
    // eax = APIC ID * 256 + vector: the counter's index.
    a.mov_eax_mem(APIC_ID);
    a.shr_eax(24);
    a.shl_eax(8);
    a.add_eax_stack(0);
    // COUNTERS[apic_id][vector] += 1. Only this vCPU writes its row, and the interrupt
    // gate keeps IF clear, so a plain `inc` cannot race.
    a.inc_eax4(COUNTERS as u32);
    // EOI, so the APIC delivers the next interrupt of this priority class.
    a.mov_mem_imm32(APIC_EOI, 0);
    // Drop the vector and the interrupt frame: the stack is as it was in the idle loop.
    a.add_esp(16);
    a.jmp_near(idle);
}

/// The NMI handler: ask the VMM to stop this vCPU. NMIs stay blocked until an `iret`, which
/// never comes; the `hlt` loop is only reached if the VMM resumes the vCPU anyway.
fn nmi_handler(a: &mut Asm) {
    a.out_al(STOP_PORT);
    let park = a.here();
    a.hlt();
    a.jmp_short(park);
}

/// The body of every exception handler: report the vector (pushed by the stub, on top of
/// any error code) to the VMM and park.
fn fault_handler(a: &mut Asm) {
    a.pop_eax();
    a.out_al(FAULT_PORT);
    let park = a.here();
    a.hlt();
    a.jmp_short(park);
}

/// A 32-bit interrupt gate to `offset` in the code segment.
fn gate(offset: u64) -> u64 {
    (offset & 0xFFFF)
        | u64::from(CODE_SELECTOR) << 16
        | INTERRUPT_GATE << 40
        | ((offset >> 16) & 0xFFFF) << 48
}

/// Where the IDT sends `vector`.
fn handler_of(vector: usize) -> u64 {
    if vector == NMI_VECTOR {
        NMI_HANDLER
    } else {
        STUBS + vector as u64 * STUB_SIZE
    }
}

/// The program as (guest address, bytes) chunks, ready to be written into guest memory.
pub(crate) fn image() -> Vec<(u64, Vec<u8>)> {
    let gdt = GDT_ENTRIES.iter().flat_map(|e| e.to_le_bytes()).collect();
    let idt = (0..IDT_ENTRIES)
        .flat_map(|vector| gate(handler_of(vector)).to_le_bytes())
        .collect();

    let mut code = Asm::at(CODE);
    let idle = entry(&mut code);
    code.align_to(COUNT_HANDLER);
    count_handler(&mut code, idle);
    code.align_to(NMI_HANDLER);
    nmi_handler(&mut code);
    code.align_to(FAULT_HANDLER);
    fault_handler(&mut code);

    let mut stubs = Asm::at(STUBS);
    for vector in 0..IDT_ENTRIES {
        // The NMI's gate skips its stub; emitting one anyway keeps stubs at fixed offsets.
        stubs.push_imm32(vector as u32);
        let body = if vector < FIRST_INTERRUPT_VECTOR {
            FAULT_HANDLER
        } else {
            COUNT_HANDLER
        };
        stubs.jmp_near(body);
    }

    vec![
        (GDT, gdt),
        (IDT, idt),
        (CODE, code.bytes),
        (STUBS, stubs.bytes),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(addr: u64) -> Vec<u8> {
        image().into_iter().find(|(a, _)| *a == addr).unwrap().1
    }

    fn idt_target(idt: &[u8], vector: usize) -> (u64, u16, u8) {
        let e = u64::from_le_bytes(idt[vector * 8..vector * 8 + 8].try_into().unwrap());
        let offset = (e & 0xFFFF) | ((e >> 48) << 16);
        (offset, (e >> 16) as u16, (e >> 40) as u8)
    }

    #[test]
    fn idt_gates_point_at_stubs_and_the_nmi_handler() {
        let idt = chunk(IDT);
        assert_eq!(idt.len(), 256 * 8);
        assert_eq!(idt_target(&idt, 2), (NMI_HANDLER, 0x08, 0x8E));
        assert_eq!(idt_target(&idt, 0x20), (STUBS + 0x20 * 10, 0x08, 0x8E));
        assert_eq!(idt_target(&idt, 0xFF), (STUBS + 0xFF * 10, 0x08, 0x8E));
    }

    #[test]
    fn each_stub_pushes_its_vector_and_jumps_to_its_body() {
        let stubs = chunk(STUBS);
        for vector in 0..256usize {
            let s = &stubs[vector * 10..vector * 10 + 10];
            assert_eq!(s[0], 0x68);
            assert_eq!(
                u32::from_le_bytes(s[1..5].try_into().unwrap()),
                vector as u32
            );
            assert_eq!(s[5], 0xE9);
            let rel = i32::from_le_bytes(s[6..10].try_into().unwrap());
            let next = STUBS + vector as u64 * 10 + 10;
            let target = next.wrapping_add_signed(i64::from(rel));
            let body = if vector < 0x20 {
                FAULT_HANDLER
            } else {
                COUNT_HANDLER
            };
            assert_eq!(target, body, "vector {vector:#x}");
        }
    }

    #[test]
    fn code_fits_before_the_stubs_and_idle_loop_jumps_back_to_sti() {
        let code = chunk(CODE);
        assert!(CODE + code.len() as u64 <= STUBS);
        // Entry is 10 + 5 + 3 + 11 bytes, then `sti; hlt; jmp -4`.
        assert_eq!(&code[29..33], &[0xFB, 0xF4, 0xEB, 0xFC]);
        let handler = (COUNT_HANDLER - CODE) as usize;
        // `inc dword [eax*4 + COUNTERS]`
        assert_eq!(&code[handler + 15..handler + 18], &[0xFF, 0x04, 0x85]);
        assert_eq!(
            u32::from_le_bytes(code[handler + 18..handler + 22].try_into().unwrap()),
            COUNTERS as u32
        );
        // `add esp, 16; jmp idle`: back to the `sti` at offset 29.
        let tail = handler + 32;
        assert_eq!(&code[tail..tail + 4], &[0x83, 0xC4, 0x10, 0xE9]);
        let rel = i32::from_le_bytes(code[tail + 4..tail + 8].try_into().unwrap());
        let next = COUNT_HANDLER + 32 + 8;
        assert_eq!(next.wrapping_add_signed(i64::from(rel)), CODE + 29);
    }

    #[test]
    fn gdt_is_null_code_data() {
        let gdt = chunk(GDT);
        assert_eq!(&gdt[8..16], &0x00CF_9A00_0000_FFFFu64.to_le_bytes());
        assert_eq!(&gdt[16..24], &0x00CF_9200_0000_FFFFu64.to_le_bytes());
        assert_eq!(DATA_SELECTOR as usize, 2 * 8);
    }
}
