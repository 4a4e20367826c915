//! pvirq simulator: runs guests and the host together, in-process or in a real KVM VM.
//!
//! - [`channel`]: one VM's pvirq channel in one process, guest driver to host device
//!   through virtio-mmio registers and a ring in shared guest memory.
//! - [`kvm`]: a real KVM VM whose vCPUs record every interrupt they receive.
//! - [`vmm`]: a small real VMM running the bare-metal guest image (`guest/image`): the pvirq
//!   driver as guest code, pass-through device BARs, exits counted (`--kvm`).
//! - [`passthrough`]: a pass-through device whose MSI-X/IMS storage lives in guest memory
//!   and whose interrupts go through the host's remapping.
//! - [`scenario`]: multi-tenant scenarios read from TOML; [`run`] runs one on a shared
//!   host (and the hosts its VMs migrate to), a channel per VM, with the VMM's changes and
//!   the guests' events, and [`report`] shows what every guest was answered and told.
#![deny(missing_docs)]

pub mod channel;
pub mod error;
pub mod kvm;
pub mod passthrough;
pub mod report;
pub mod run;
pub mod scenario;
pub mod vmm;

pub use channel::Channel;
pub use error::SimError;
