//! The contract between the pvirq bare-metal guest image (`guest/image`, built for
//! `x86_64-unknown-none`) and the simulator's VMM (`pvirq-sim`): where things live in guest
//! physical memory, the ports and MMIO windows, the pass-through device's registers, and
//! the mailbox through which the VMM commands the guest and reads its reports.
//!
//! `no_std`, no dependencies: both sides compile this one crate, so they cannot disagree.
#![no_std]
#![deny(missing_docs)]
// No panic reachable from what the VMM writes into shared memory, by construction: no
// indexing, no unwrap.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

pub mod device;
pub mod layout;
pub mod mailbox;
