//! Ring 0: the boot header, page tables, GDT and TSS, the IDT and interrupt entry. Nothing
//! else runs at CPL 0 — on PVM every CPL-0 instruction goes through an emulator (~2 µs
//! each), so this part is a few dozen instructions of assembly and the driver runs at CPL 3.
//!
//! - The VMM enters `bsp_entry` (vCPU 0) or `ap_entry` (the others) in 64-bit mode with
//!   CR3, the GDT and a kernel stack taken from the boot header and the layout; `rdi` holds
//!   the vCPU's APIC ID, which the VMM also wrote at the bottom of its kernel stack.
//! - Page tables: the low 4 GiB identity-mapped with 2 MiB pages, user-accessible (the
//!   driver at CPL 3 touches RAM, its MMIO windows and nothing else), the top GiB uncached.
//! - The IDT is assembled statically: the 256 stubs sit at a fixed address (link.ld), so
//!   every gate's offset is a constant. Gates are DPL-0 interrupt gates: an interrupt taken
//!   at CPL 3 switches to the TSS's RSP0, one taken in `hlt` stays on the kernel stack.
//! - The handler counts by (APIC ID, vector), stamps the TSC, writes the xAPIC EOI and
//!   returns: about twenty instructions at CPL 0. APIC IDs stay below 256 (xAPIC); an x2APIC
//!   guest would write EOI with WRMSR, also privileged, so the shape would not change.
//! - NMI stops the vCPU (the VMM's shutdown); any other exception reports its vector.

use core::arch::global_asm;
use pvirq_guest_image_abi::layout;

/// Where link.ld places the stubs.
pub const STUBS: u64 = 0x81000;

global_asm!(
    r#"
.section .boot_header, "a"
.global boot_header
boot_header:
    .quad {magic}
    .quad pml4
    .quad gdt
    .quad gdt_end - gdt - 1
    .quad bsp_entry
    .quad ap_entry

.section .data.pagetables, "aw"
.balign 4096
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x7
    .quad pd + 0x1000 + 0x7
    .quad pd + 0x2000 + 0x7
    .quad pd + 0x3000 + 0x7
    .fill 508, 8, 0
pd:
    .set page, 0
    .rept 1536
    .quad (page << 21) | 0x87
    .set page, page + 1
    .endr
    /* 3..4 GiB: MMIO windows and the local APIC, uncached (PCD | PWT). */
    .rept 512
    .quad (page << 21) | 0x9F
    .set page, page + 1
    .endr

.section .data.gdt, "aw"
.balign 16
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF   /* 0x08 kernel code, 64-bit */
    .quad 0x00CF92000000FFFF   /* 0x10 kernel data */
    .quad 0x00CFF2000000FFFF   /* 0x18 user data (selector 0x1B) */
    .quad 0x00AFFA000000FFFF   /* 0x20 user code, 64-bit (selector 0x23) */
tss_desc:
    .quad 0                    /* 0x28 TSS, filled by bsp_entry */
    .quad 0
gdt_end:

.balign 16
tss:
    .long 0
    .quad {kstack0_top}        /* RSP0: vCPU 0's kernel stack */
    .fill 88, 1, 0
    .word 0
    .word 104                  /* I/O map base past the limit: no bitmap, IOPL 3 rules */
tss_end:

.balign 16
idt:
    .set vec, 0
    .rept 256
    .set handler, {stubs} + vec * 16
    .quad (handler & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | ((handler >> 16) << 48)
    .quad 0
    .set vec, vec + 1
    .endr
idt_end:

.balign 8
idt_desc:
    .word idt_end - idt - 1
    .quad idt

.section .stubs, "ax"
    .set vec, 0
    .rept 256
    .balign 16
    .byte 0x68                 /* push imm32: the vector */
    .long vec
    jmp interrupt_common
    .set vec, vec + 1
    .endr

.section .text.boot, "ax"
.global bsp_entry
bsp_entry:
    cli
    lidt [idt_desc]
    /* TSS descriptor: limit 103, base split over the 16 bytes, type 0x89. */
    mov rax, offset tss
    mov rcx, rax
    and rcx, 0xFFFF
    shl rcx, 16
    or rcx, 103
    mov rdx, rax
    shr rdx, 16
    and rdx, 0xFF
    shl rdx, 32
    or rcx, rdx
    mov rdx, 0x89
    shl rdx, 40
    or rcx, rdx
    mov rdx, rax
    shr rdx, 24
    and rdx, 0xFF
    shl rdx, 56
    or rcx, rdx
    mov [tss_desc], rcx
    shr rax, 32
    mov [tss_desc + 8], rax
    mov ax, 0x28
    ltr ax
    call apic_on
    cmp dword ptr [{boot_mode}], {mode_driver}
    jne idle
    /* To CPL 3: IF set, IOPL 3 (port I/O for the mailbox), on the user stack. */
    push 0x1B
    mov rax, {user_stack_top}
    push rax
    push 0x3202
    push 0x23
    mov rax, offset user_entry
    push rax
    iretq

.global ap_entry
ap_entry:
    cli
    lidt [idt_desc]
    call apic_on
idle:
    sti
    hlt
    jmp idle

/* Software-enables the xAPIC (SVR = 0x1FF) and raises this vCPU's ready flag. */
apic_on:
    mov rax, 0xFEE000F0
    mov dword ptr [rax], 0x1FF
    mov dword ptr [{ready} + rdi * 4], 1
    ret

user_entry:
    call {user_main}
    ud2

interrupt_common:
    push rax
    push rcx
    push rdx
    mov rax, [rsp + 24]
    cmp rax, 32
    jb exception
    rdtsc
    shl rdx, 32
    or rdx, rax
    mov rcx, rsp
    and rcx, -{kstack_size}
    mov rcx, [rcx]
    mov [{last_tsc} + rcx * 8], rdx
    shl rcx, 8
    add rcx, [rsp + 24]
    lock inc dword ptr [{counters} + rcx * 4]
    mov rax, 0xFEE000B0
    mov dword ptr [rax], 0
    pop rdx
    pop rcx
    pop rax
    add rsp, 8
    iretq

exception:
    cmp rax, 2
    jne 1f
    mov dx, {stop_port}
    out dx, al
    jmp 2f
1:
    mov dx, {fault_port}
    out dx, al
2:
    hlt
    jmp 2b
"#,
    magic = const layout::BOOT_MAGIC,
    kstack0_top = const layout::kernel_stack_top(0),
    stubs = const STUBS,
    boot_mode = const layout::BOOT_MODE,
    mode_driver = const layout::Mode::Driver as u32,
    user_stack_top = const layout::USER_STACK_TOP,
    ready = const layout::READY,
    kstack_size = const layout::KERNEL_STACK_SIZE,
    last_tsc = const layout::LAST_TSC,
    counters = const layout::COUNTERS,
    stop_port = const layout::STOP_PORT,
    fault_port = const layout::FAULT_PORT,
    user_main = sym crate::user_main,
);
