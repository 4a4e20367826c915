//! A real KVM guest whose vCPUs record every interrupt they receive.
//!
//! [`KvmGuest`] boots the pvirq guest image ([`crate::vmm`]) in counter mode: every vCPU
//! idles in `hlt` and its IDT handler counts interrupts by (APIC ID, vector) in guest
//! memory; the host reads the counts. Routes come from [`pvirq_host::kvm`]: add one with
//! [`KvmGuest::msi`] as its message, attach an eventfd, commit, and writing the eventfd
//! delivers the interrupt.

mod counts;
mod error;
mod guest;

pub use counts::InterruptCounts;
pub use error::KvmGuestError;
pub use guest::KvmGuest;
pub use pvirq_guest_image_abi::layout::{MAX_MEM_SIZE, MAX_VCPUS, MIN_MEM_SIZE};
pub use pvirq_host::kvm::require_kvm_or_skip;
