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
//! # Extensions
//!
//! [`Options::features`] asks for the protocol's extension bits (spec §2.2); the default,
//! [`feature::V1`](proto::feature::V1), is a version-1 driver, which sends and accepts
//! exactly version 1's bytes whatever the device offers. The driver accepts what both sides
//! want, never a set that breaks a dependency, and [`Driver::negotiated`] says what that
//! was. The extensions come in the shape of Linux's irq-domain operations:
//!
//! | irq domain | call | request |
//! |---|---|---|
//! | `alloc` | [`Driver::alloc_parked`] | ALLOC `PARKED` |
//! | `activate`, `set_affinity` | [`Driver::activate`], [`Driver::set_affinity`] | RETARGET |
//! | `deactivate` | [`Driver::deactivate`] | RETARGET `PARK` |
//! | `free` | [`Driver::free_indices`] with [`index_list`] | FREE `LIST` |
//!
//! and [`Driver::alloc_spread`] (spread over CPUs once the count is known),
//! [`pvirq_proto::IndexSpec::AnyContiguous`] in [`Driver::alloc`], [`Driver::device_info`]
//! (which PCI function a handle is, its message format, share and free runs). Grants come
//! back as [`pvirq_proto::GrantInfo`] (mode, parked, PASID) or [`pvirq_proto::Grant`],
//! whichever buffer the caller passes ([`GrantRecord`]). Targets name x2APIC IDs with
//! `APIC_ID` ([`Driver::targets_name_apic_ids`]).
//!
//! ```
//! use pvirq_guest::proto::{IndexSpec, Kind, Le32, Target, feature};
//! use pvirq_guest::proto::{Grant, GrantInfo};
//! use pvirq_guest::{Driver, Error, Hal, Options, Transport, index_list};
//!
//! /// Allocates up to eight parked MSI-X vectors, then activates them on the CPUs with
//! /// x2APIC IDs 0, 2, 4, ... once the count is known, the way Linux does.
//! fn parked_then_active<H: Hal, T: Transport>(hal: H, transport: T) -> Result<(), Error> {
//!     let options = Options { features: feature::ALL, ..Options::default() };
//!     let mut pvirq: Driver<H, T> = Driver::new(hal, transport, options)?;
//!     let blank = GrantInfo::from_grant(Grant::new(0, Default::default()));
//!     let mut grants = [blank; 8];
//!     let got = pvirq.alloc_parked(0, Kind::MsiX, IndexSpec::Any, 1, 8, None, &mut grants)?;
//!     let mut indices = [Le32::new(0); 8];
//!     let mut targets = [Target::new(0, 0x40); 8];
//!     for (i, grant) in got.grants.iter().enumerate() {
//!         let _program_while_masked = grant.message();
//!         indices[i] = Le32::new(grant.index());
//!         targets[i] = Target::new(2 * i as u32, 0x40);
//!     }
//!     let n = got.grants.len();
//!     // A list must be increasing: sort the (index, target) pairs first if the device may
//!     // choose indices out of order (the reference device takes the lowest, in order).
//!     let list = index_list(Kind::MsiX, &indices[..n])?;
//!     pvirq.activate(0, list, &targets[..n])?;
//!     Ok(())
//! }
//! ```
//!
//! # Events
//!
//! With `EVENTS` the driver runs the event queue (spec §12): [`Driver::poll_events`] or
//! [`Driver::next_event`] hand each event over once, in order, validated, and make its
//! buffer available again as the acknowledgement. [`apply_event`] applies a REPROGRAM
//! (mask, program, unmask, replay) or a REVOKE to the caller's table through
//! [`ProgramMessages`]; [`Shortfall`] is the pattern for getting back, after an AVAILABLE,
//! what a fallback gave up. A configuration change ([`Driver::handle_interrupt`],
//! [`Driver::refresh_config`]) re-reads `num_devices` and `vm_quota`.
//!
//! # An untrusted device
//!
//! A device that lies (used lengths beyond the buffer, unknown descriptor ids, replies that
//! do not echo their request, garbage) gets a typed [`Error`], never a panic or an access
//! outside the driver's buffers. The device is not trusted after it answers either (as in a
//! confidential VM): a reply or event is copied out of the memory the device can write
//! once, and the driver validates and returns only its copy ([`Driver::take`]). The checks
//! are spec §8's: used length against the buffer and the record sizes, the echo, status,
//! detail and info consistent with each other and with the request (a refusal the request
//! cannot get is [`Error::ImplausibleRefusal`]), a QUERY consistent with itself and the
//! negotiation, an OK ALLOC's count within `min..=max` at distinct indices inside the table
//! QUERY reported, at the indices asked for, parked and with the PASID as asked, posted or
//! parked only if negotiated; events in sequence, naming devices below `num_devices` and
//! kinds and modes negotiated.
//!
//! What the driver does not check: it keeps no record of the grants it holds, so "none
//! already held" (ALLOC) and "a grant the driver holds" (REPROGRAM, REVOKE) are the
//! caller's, who owns that bookkeeping (a kernel's irq descriptors). Replies and events
//! travel on two queues that virtio does not order, so a correct device can re-grant an
//! index whose REVOKE the driver has not read yet, or send a REPROGRAM of a grant the
//! driver freed after the event was queued; a check made here would reject correct
//! devices. Indices are checked against the table only for devices the driver has queried.
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
