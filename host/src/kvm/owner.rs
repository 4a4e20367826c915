//! `RouteOwner`: the VM's KVM routing table, as the VMM owns it.
//!
//! `KVM_SET_GSI_ROUTING` replaces a VM's whole table, so one owner must hold every route of
//! the VM — the VMM's other MSI devices' as well as pvirq's (cloud-hypervisor keeps one
//! `gsi_msi_routes` list for exactly this reason). pvirq never replaces the table behind
//! the VMM's back: it reserves GSIs from the owner and hands it its changes, which the
//! owner applies together with everything else it holds, in one ioctl.
//!
//! [`super::KvmRouteTable`] is the owner for a VMM that has none of its own.

use super::error::KvmRouteError;
use super::msi::Gsi;
use pvirq_proto::MsiMessage;
use std::sync::{Arc, Mutex};

/// The VM's routing table, shared by every device of the VMM.
pub trait RouteOwner: Send {
    /// Takes a GSI for the caller's exclusive use until [`RouteOwner::release_gsi`]. It has
    /// no route yet.
    fn reserve_gsi(&mut self) -> Result<Gsi, KvmRouteError>;
    /// Gives a reserved GSI back; its route must already have been removed by a commit.
    fn release_gsi(&mut self, gsi: Gsi);
    /// Sets the route of each GSI to the message given (`None`: no route) and sends the
    /// whole table — the owner's other routes included — to KVM with one
    /// `KVM_SET_GSI_ROUTING`. All or nothing: on error the table is as it was.
    fn commit(&mut self, changes: &[(Gsi, Option<MsiMessage>)]) -> Result<(), KvmRouteError>;
}

/// An owner the VMM shares between its devices.
impl<T: RouteOwner> RouteOwner for Arc<Mutex<T>> {
    fn reserve_gsi(&mut self) -> Result<Gsi, KvmRouteError> {
        crate::sync::lock(self).reserve_gsi()
    }

    fn release_gsi(&mut self, gsi: Gsi) {
        crate::sync::lock(self).release_gsi(gsi)
    }

    fn commit(&mut self, changes: &[(Gsi, Option<MsiMessage>)]) -> Result<(), KvmRouteError> {
        crate::sync::lock(self).commit(changes)
    }
}
