//! A small real VMM for the pvirq guest image.
//!
//! - [`image`]: the bare-metal guest (`guest/image`), built by `build.rs` and loaded with
//!   linux-loader.
//! - [`MachineBuilder`] / [`Machine`]: one KVM VM, vCPU threads, MMIO exits on a
//!   `vm-device` bus, exit counters, and the [`mailbox`] through which the guest takes
//!   commands and reports what it saw.
//! - [`tsc`]: the TSC calibration every in-guest figure is converted with.

pub mod error;
pub mod exits;
pub mod image;
mod machine;
pub mod mailbox;
pub mod tsc;
mod vcpu;

pub use error::VmmError;
pub use exits::{ExitCounters, ExitSnapshot};
pub use machine::{Machine, MachineBuilder};
pub use mailbox::{Command, Report};
