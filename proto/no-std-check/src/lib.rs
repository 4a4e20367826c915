//! Compiles only if `pvirq-proto` works without `std`.
//!
//! This crate is `no_std` and defines the panic handler itself. If `pvirq-proto` (or any of
//! its dependencies) linked `std`, the build would fail with a duplicate `panic_impl` lang
//! item. CI runs `cargo build --manifest-path proto/no-std-check/Cargo.toml`.
#![no_std]
#![deny(missing_docs)]

use pvirq_proto::{Event, Kind, KindSet, Negotiated, Request, Response, feature};

/// Decodes a request and answers whether it is an ALLOC, with no allocator and no std.
pub fn is_alloc(bytes: &[u8]) -> bool {
    let negotiated = Negotiated::new(256, feature::ALL);
    matches!(Request::decode(bytes, negotiated), Ok(r) if r.op.opcode() == pvirq_proto::Opcode::Alloc)
}

/// Whether a QUERY reply offers MSI-X.
pub fn offers_msix(bytes: &[u8]) -> bool {
    match Response::decode(bytes, feature::V1 | feature::INFO) {
        Ok(Response {
            outcome: pvirq_proto::Outcome::Queried { info, .. },
            ..
        }) => info.kinds.contains(Kind::MsiX) && info.kinds != KindSet::EMPTY,
        _ => false,
    }
}

/// The sequence number of an event record, if it is one.
pub fn event_sequence(bytes: &[u8]) -> Option<u32> {
    Event::decode(bytes).ok().map(|e| e.sequence)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
