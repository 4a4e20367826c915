//! KVM delivery plumbing: a VM's MSI routes, committed in batches, and their irqfds.
//!
//! [`KvmRouteTable`] keeps one VM's routes as its own list, because `KVM_SET_GSI_ROUTING`
//! only replaces the whole table, at a cost that grows with its size (measured on nested
//! KVM: ~10–80 µs for up to 64 routes, ~1 ms for 4000). Changes are staged — typically everything one guest request needs — and committed with a
//! single ioctl; a failed or abandoned batch leaves the table exactly as it was.
//!
//! [`KvmRoutes`] is the host's [`RouteLayer`](crate::layers::RouteLayer) on top of it: give
//! a VM one (`Host::create_vm(config, Box::new(KvmRoutes::new(table)))`) and every granted
//! vector becomes a GSI route with an irqfd, committed once per request; `Host::fire`
//! then writes the irqfd and KVM injects the interrupt into the vCPU the guest named.

mod availability;
mod error;
mod irqchip;
mod irqfd;
mod layer;
mod msi;
mod staging;
mod table;

#[cfg(test)]
mod layer_tests;
#[cfg(test)]
mod test_vm;
#[cfg(test)]
mod tests;

pub use availability::{KVM_DEVICE, REQUIRE_KVM_ENV, require_kvm_or_skip};
pub use error::KvmRouteError;
pub use irqchip::IrqchipRoutes;
pub use layer::{ApicIds, KvmRouteCounters, KvmRoutes};
pub use msi::{Gsi, kvm_msi};
pub use staging::RouteBatch;
pub use table::{KvmRouteTable, RouteTableConfig};
