//! End-to-end tests of pvirq live in `tests/tests/`; this library holds their shared helpers.
//!
//! - [`setup`]: hosts, VMs, channels and targets of a given shape; full snapshots.
//! - [`tamper`]: a channel whose guest can hand the device an unwritable reply buffer.
//! - [`model`]: a reference model of the host's semantics, for the model test and fuzzing.
//! - [`workload`]: a guest's interrupt setup on two pass-through devices, fired afterwards
//!   (snapshot, restore and migration tests).
#![deny(missing_docs)]

pub mod model;
pub mod setup;
pub mod tamper;
pub mod workload;
