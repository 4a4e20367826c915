//! A real KVM guest whose vCPUs record every interrupt they receive.
//!
//! [`KvmGuest`] runs a hand-assembled 32-bit program on each vCPU that counts interrupts by
//! (APIC ID, vector) in guest memory; the host reads the counts. Routes come from
//! [`pvirq_host::kvm`]: add one with [`KvmGuest::msi`] as its message, attach an eventfd,
//! commit, and writing the eventfd delivers the interrupt.

mod counts;
mod error;
mod guest;
mod layout;
mod program;
mod vcpu;

pub use counts::InterruptCounts;
pub use error::KvmGuestError;
pub use guest::KvmGuest;
pub use layout::{MAX_MEM_SIZE, MAX_VCPUS, MIN_MEM_SIZE};
pub use pvirq_host::kvm::require_kvm_or_skip;
