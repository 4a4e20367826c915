//! Guest driver library for **pvirq**, the paravirtual interrupt-allocation device.
//!
//! A guest kernel, unikernel or firmware links this crate to ask the host, through a
//! virtio device, for MSI, MSI-X or IMS vectors for a device it owns. The host reserves
//! everything delivery needs before it answers; the driver gets the message to program per
//! vector, or a typed reason ([`Error::Refused`]) naming what ran out and how much is left.
//!
//! `no_std`, no allocator. The pieces:
//! - [`Hal`]: DMA memory shared with the device (physical address and CPU pointer);
//! - [`Transport`]: the virtio registers; [`MmioTransport`] implements it for virtio-mmio
//!   (layout version 2) over any [`MmioRegs`], with [`VolatileMmio`] for a real guest;
//! - [`Driver`]: initialisation, its own split virtqueue, several requests in flight
//!   ([`Driver::submit`], [`Driver::poll`], [`Driver::handle_interrupt`], [`Driver::take`])
//!   and the blocking calls ([`Driver::query`], [`Driver::alloc`], [`Driver::free`],
//!   [`Driver::retarget`], [`Driver::reset_device`]).
//!
//! ```
//! use pvirq_guest::proto::{Grant, Kind, Target};
//! use pvirq_guest::{Driver, Error, Hal, MmioRegs, MmioTransport, Options};
//!
//! /// Brings the channel up and gives device 0 up to four MSI-X vectors, one per vCPU.
//! fn bring_up<H: Hal, R: MmioRegs>(hal: H, regs: R) -> Result<(), Error> {
//!     let transport = MmioTransport::new(regs)?;
//!     let mut pvirq: Driver<H, _> = Driver::new(hal, transport, Options::default())?;
//!     let limits = pvirq.query(0)?;
//!     assert!(limits.info.kinds.contains(Kind::MsiX));
//!     let targets = [0, 1, 2, 3].map(|vcpu| Target::new(vcpu, 0x40));
//!     let mut grants = [Grant::new(0, Default::default()); 4];
//!     let allocation = match pvirq.alloc_irq_vectors(0, Kind::MsiX, 4, &targets, &mut grants) {
//!         Ok(allocation) => allocation,
//!         // Not enough for one each: take what is left, and share.
//!         Err(e) => match e.fallback_count() {
//!             Some(n) => pvirq.alloc_irq_vectors(0, Kind::MsiX, n, &targets, &mut grants)?,
//!             None => return Err(e),
//!         },
//!     };
//!     for grant in allocation.grants {
//!         let _program_and_unmask = (grant.index(), grant.message());
//!     }
//!     Ok(())
//! }
//! ```
//!
//! A device that lies (used lengths beyond the buffer, unknown descriptor ids, replies that
//! do not echo their request, garbage) gets a typed [`Error`], never a panic or an access
//! outside the driver's buffers. The device is not trusted after it answers either (as in a
//! confidential VM): a reply is copied out of the memory the device can write once, and the
//! driver validates and returns only its copy ([`Driver::take`]).
#![no_std]
#![deny(missing_docs)]
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

#[cfg(any(test, feature = "test-utils"))]
extern crate std;

mod api;
mod config;
mod domain;
mod driver;
mod error;
mod events;
mod grants;
mod hal;
mod init;
mod requests;
mod ring;
mod slot;
mod tables;
pub mod transport;
mod validate;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

#[cfg(test)]
mod tests;

/// The wire format this driver speaks (`pvirq-proto`), re-exported so callers use the
/// same version.
pub use pvirq_proto as proto;

pub use api::{Allocation, Done, Queried, into_result};
pub use domain::index_list;
pub use driver::Driver;
pub use error::{ConfigField, EchoField, Error, GrantField, QueryField};
pub use events::fallback::Shortfall;
pub use events::program::{Applied, ProgramMessages, VectorId, apply_event};
pub use events::queue::EVENT_BUFFERS;
pub use grants::GrantRecord;
pub use hal::{Hal, PAGE_SIZE, PhysAddr};
pub use init::{DeviceConfig, Options};
pub use requests::InterruptStatus;
pub use ring::QueueAddrs;
pub use slot::Token;
pub use transport::{MmioRegs, MmioTransport, Transport, VolatileMmio};
