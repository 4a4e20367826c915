//! End-to-end tests of pvirq live in `tests/tests/`; this library holds their shared helpers.
//!
//! - [`setup`]: hosts, VMs, channels and targets of a given shape; full snapshots.
//! - [`recording`]: a layer wrapper recording every reserving call (which layer a fault hit).
//! - [`tamper`]: a channel whose guest can hand the device an unwritable reply buffer.
#![deny(missing_docs)]

pub mod setup;
pub mod tamper;
