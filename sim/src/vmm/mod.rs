//! A small real VMM for the pvirq guest image.
//!
//! - [`image`]: the bare-metal guest (`guest/image`), built by `build.rs` and loaded with
//!   linux-loader.
//! - [`MachineBuilder`] / [`Machine`]: one KVM VM, vCPU threads, MMIO exits on a
//!   `vm-device` bus, exit counters, and the [`mailbox`] through which the guest takes
//!   commands and reports what it saw.
//! - [`GuestVm`]: a scenario VM: the pvirq virtio-mmio front, pass-through device BARs
//!   ([`bar`], in windows a device added later is plugged into) and the null register on
//!   the bus, routes and irqfds through [`wiring`] (with `migration`, which moves the VM's
//!   pvirq side to another host, the only modules that call into `pvirq_host`).
//! - [`tsc`]: the TSC calibration every in-guest figure is converted with.

pub mod bar;
mod bar_slots;
pub mod bench_vm;
pub mod error;
pub mod exits;
mod guest_vm;
pub mod image;
mod machine;
pub mod mailbox;
mod migration;
mod null;
mod poller;
pub mod tsc;
mod vcpu;
pub mod wiring;

#[cfg(test)]
mod bar_tests;

pub use error::VmmError;
pub use exits::{ExitCounters, ExitSnapshot};
pub use guest_vm::{GUEST_VM_MEM, GuestVm, GuestVmConfig};
pub use machine::{Machine, MachineBuilder};
pub use mailbox::{Command, Report};
