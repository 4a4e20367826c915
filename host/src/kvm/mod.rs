//! KVM delivery plumbing: a VM's MSI routes, in the VMM's routing table, with irqfds
//! registered once at VM setup.
//!
//! - [`RouteOwner`]: the VM's routing table as the VMM owns it (shared by all its devices);
//!   [`KvmRouteTable`] is the owner for a VMM that has none.
//! - [`KvmRoutes`]: the [`GuestRoutes`](crate::routes::GuestRoutes) of a VM on KVM: GSIs
//!   reserved from the owner, an irqfd each, one `KVM_SET_GSI_ROUTING` per request.

mod availability;
mod error;
mod irqchip;
mod irqfds;
mod msi;
mod owner;
mod routes;
mod table;

#[cfg(test)]
mod test_vm;
#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "test-utils"))]
pub use availability::require_kvm_or_skip;
pub use availability::{KVM_DEVICE, REQUIRE_KVM_ENV};
pub use error::KvmRouteError;
pub use irqchip::IrqchipRoutes;
pub use msi::{Gsi, kvm_msi};
pub use owner::RouteOwner;
pub use routes::{KvmRouteCounters, KvmRoutes, route_message};
pub use table::{KvmRouteTable, RouteTableConfig};
