//! Wire format of **pvirq**, the paravirtual interrupt-allocation protocol.
//!
//! A guest driver asks a pvirq device for MSI, MSI-X or IMS vectors for a device it owns;
//! the host reserves everything delivery needs before it answers, and answers either with
//! the message to program for each vector or with a typed reason. The protocol is written
//! down in `spec/pvirq-v1.md` in this repository; section numbers in these docs refer to it.
//!
//! This crate is `no_std` and never allocates. It gives:
//! - the byte-exact wire structs ([`wire`]), all alignment 1, little-endian, no padding;
//! - validated, typed requests and responses ([`Request`], [`Response`]) with `decode`
//!   (never panics, never reads out of bounds, each rejection an [`Error`] naming the field)
//!   and `encode`;
//! - host events on the event queue ([`Event`]);
//! - MSI messages in remappable and compatibility format ([`RemappableMsi`], [`CompatMsi`]);
//! - the device's identity, features and configuration layout ([`Config`], [`feature`]).
//!
//! The protocol grows by feature bits (spec §2.2). Requests are decoded against the
//! channel's [`Negotiated`] parameters and responses against the negotiated features; a
//! driver that negotiated no extension ([`feature::V1`]) sees exactly version 1's bytes.
//!
//! ```
//! use pvirq_proto::{Alloc, IndexSpec, Kind, Negotiated, Operation, Request, Target, Targeting};
//!
//! let targets = [Target::new(0, 0x30), Target::new(1, 0x31)];
//! let request = Request {
//!     device: 7,
//!     tag: 42,
//!     op: Operation::Alloc(Alloc {
//!         kind: Kind::MsiX,
//!         index: IndexSpec::Any,
//!         min: 1,
//!         max: 2,
//!         pasid: None,
//!         targeting: Targeting::PerVector,
//!         targets: &targets,
//!     }),
//! };
//! let mut buf = [0u8; 64];
//! let len = request.encode(&mut buf).unwrap();
//! assert_eq!(Request::decode(&buf[..len], Negotiated::v1(256)), Ok(request));
//! ```
#![no_std]
#![deny(missing_docs)]
// `deny`, not `forbid`: the optional `vm-memory` feature needs `unsafe impl ByteValued` for
// the wire structs (`wire::byte_valued`), and that one module alone allows it.
#![deny(unsafe_code)]
// No panic reachable from device or guest bytes, by construction (issue 11): no indexing, no
// unwrap.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

#[cfg(test)]
#[macro_use]
extern crate std;

mod device;
mod error;
mod event;
pub mod feature;
mod le;
mod msi;
mod negotiated;
mod refusal;
mod request;
mod response;
mod types;
pub mod wire;

pub use device::{
    Config, EVENT_QUEUE, MAX_BATCH_LIMIT, NUM_QUEUES, PROTOCOL_VERSION, REQUEST_QUEUE,
    VIRTIO_ID_PVIRQ,
};
pub use error::Error;
pub use event::{EVENT_LEN, Event, EventBody};
pub use le::{Le16, Le32, Le64};
pub use msi::{CompatMsi, DeliveryMode, MSI_ADDRESS_BASE, MsiMessage, RemappableMsi};
pub use negotiated::Negotiated;
pub use refusal::Refusal;
pub use request::{
    Alloc, IndexList, IndexRange, IndexSpec, Indices, MAX_MSI_VECTORS, MAX_PASID, MIN_GUEST_VECTOR,
    Operation, Request, Retarget, RetargetTo, Target, Targeting, spread_position,
};
pub use response::{
    DeviceInfo, DeviceInfoExt, Grant, GrantInfo, GrantIter, GrantSlice, Outcome, PciIdentity,
    Response,
};
pub use types::{
    EventType, Field, GrantMode, Kind, KindSet, MessageFormat, Opcode, Resource, Status,
};

/// Size of the request header.
pub const HEADER_LEN: usize = core::mem::size_of::<wire::RequestHeader>();
/// Size of the response header.
pub const RESPONSE_HEADER_LEN: usize = core::mem::size_of::<wire::ResponseHeader>();
