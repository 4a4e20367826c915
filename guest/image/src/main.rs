//! The pvirq guest image: a bare-metal x86-64 guest that runs `pvirq-guest` as guest code.
//!
//! Ring 0 ([`boot`]) is descriptor tables, paging and interrupt entry only. The bootstrap
//! vCPU then drops to CPL 3 with IOPL 3 and runs [`dispatch::run`]: it brings the pvirq
//! channel up over virtio-mmio, allocates for its pass-through devices, programs the grants
//! into MSI-X tables or IMS slots (parked, spread, by index list), handles the host's
//! events (reprogramming its own tables from REPROGRAM through `pvirq_guest::apply_event`),
//! rings doorbells and counts what its IDT handler saw, all on the VMM's command through
//! the mailbox ([`pvirq_guest_image_abi::mailbox`]).
//! The other vCPUs idle in `hlt` at CPL 0 and count the interrupts they receive.
#![no_std]
#![no_main]
#![deny(missing_docs)]
// A panic ends the vCPU (see `panic` below): none may be reachable from what the device or
// the VMM write, so no indexing, no unwrap, by construction.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod alloc;
mod bench;
mod boot;
mod commands;
mod cpu;
mod devices;
mod dispatch;
mod events;
mod fire;
mod hal;
mod lists;
mod mailbox;
mod state;
mod topology;

/// Any panic (none is expected: every driver error is a value) reports vector 0xFF on the
/// fault port, which ends the vCPU with an error the VMM names.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    cpu::fault(0xFF)
}

/// Where the bootstrap vCPU arrives at CPL 3.
#[unsafe(no_mangle)]
pub extern "C" fn user_main() -> ! {
    dispatch::run()
}
