//! `KvmRouteTable`: one VM's MSI routes, kept as our own list because KVM only accepts the
//! whole table at once.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use kvm_bindings::{KVM_MAX_IRQ_ROUTES, KvmIrqRouting};
use kvm_ioctls::VmFd;

use super::error::KvmRouteError;
use super::irqchip::{IRQCHIP_GSIS, IrqchipRoutes};
use super::irqfd::Irqfd;
use super::msi::Gsi;
use super::staging::{Pending, RouteBatch};
use pvirq_proto::MsiMessage;

/// KVM rejects any GSI at or above this (`KVM_MAX_IRQ_ROUTES`).
const GSI_LIMIT: u32 = KVM_MAX_IRQ_ROUTES as u32;

/// How a [`KvmRouteTable`] allocates GSIs and what it sends along with its own routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTableConfig {
    /// GSIs this table hands out. Must lie inside `24..4096`: below are the irqchip's GSIs,
    /// above KVM refuses.
    pub gsi_range: Range<u32>,
    /// Whether commits keep the irqchip's default routes for GSIs 0–23.
    pub irqchip_routes: IrqchipRoutes,
}

impl Default for RouteTableConfig {
    fn default() -> Self {
        Self {
            gsi_range: IRQCHIP_GSIS..GSI_LIMIT,
            irqchip_routes: IrqchipRoutes::default(),
        }
    }
}

/// One route: the message KVM delivers for the GSI and the eventfd that triggers it, if any.
#[derive(Debug)]
pub(super) struct Route {
    pub(super) msi: MsiMessage,
    pub(super) irqfd: Option<Irqfd>,
}

/// The MSI routes of one VM.
///
/// With nothing staged the table is exactly what KVM has. Changes are staged (`stage_*`, or
/// scoped in a [`RouteBatch`]) and reach KVM with one `KVM_SET_GSI_ROUTING` on commit.
/// A VM must have a single table: each commit replaces KVM's whole routing table.
/// Dropping the table detaches its irqfds and removes its routes from KVM.
#[derive(Debug)]
pub struct KvmRouteTable {
    pub(super) vm: Arc<VmFd>,
    irqchip_routes: IrqchipRoutes,
    gsi_range: Range<u32>,
    pub(super) routes: BTreeMap<Gsi, Route>,
    /// GSIs of the range that carry no route and are not held by an open batch.
    pub(super) free: BTreeSet<Gsi>,
    /// Irqfds KVM refused to detach; dropping them tries again.
    pub(super) stale: Vec<Irqfd>,
    /// Changes staged and not yet committed.
    pub(super) pending: Pending,
    /// Whether a commit has replaced KVM's table, so dropping must restore it.
    wrote_kvm: bool,
}

impl KvmRouteTable {
    /// A table over GSIs 24..4096 that keeps the irqchip's default routes.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self::build(vm, RouteTableConfig::default())
    }

    /// A table with the given GSI range and irqchip policy.
    pub fn with_config(vm: Arc<VmFd>, config: RouteTableConfig) -> Result<Self, KvmRouteError> {
        let Range { start, end } = config.gsi_range;
        if start < IRQCHIP_GSIS || end > GSI_LIMIT || start >= end {
            return Err(KvmRouteError::InvalidGsiRange { start, end });
        }
        Ok(Self::build(vm, config))
    }

    /// No range check: lets tests hand out GSIs KVM rejects, to force a failing commit.
    #[cfg(test)]
    pub(crate) fn with_unchecked_config(vm: Arc<VmFd>, config: RouteTableConfig) -> Self {
        Self::build(vm, config)
    }

    fn build(vm: Arc<VmFd>, config: RouteTableConfig) -> Self {
        Self {
            vm,
            irqchip_routes: config.irqchip_routes,
            free: config.gsi_range.clone().map(Gsi::new).collect(),
            gsi_range: config.gsi_range,
            routes: BTreeMap::new(),
            stale: Vec::new(),
            pending: Pending::default(),
            wrote_kvm: false,
        }
    }

    /// The VM this table routes for.
    pub fn vm(&self) -> &Arc<VmFd> {
        &self.vm
    }

    /// The GSIs this table hands out.
    pub fn gsi_range(&self) -> Range<u32> {
        self.gsi_range.clone()
    }

    /// Whether commits keep the irqchip's default routes.
    pub fn irqchip_routes(&self) -> IrqchipRoutes {
        self.irqchip_routes
    }

    /// Number of routes in the table.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// How many routes can still be added: free GSIs, capped by what is left of KVM's 4096
    /// routing entries after the irqchip routes and ours.
    pub fn available(&self) -> usize {
        let entry_budget = KVM_MAX_IRQ_ROUTES
            .saturating_sub(self.irqchip_routes.len())
            .saturating_sub(self.routes.len());
        self.free.len().min(entry_budget)
    }

    /// The message `gsi` delivers, if the table has a route for it.
    pub fn route(&self, gsi: Gsi) -> Option<MsiMessage> {
        self.routes.get(&gsi).map(|route| route.msi)
    }

    /// Every route, by ascending GSI.
    pub fn routes(&self) -> impl Iterator<Item = (Gsi, MsiMessage)> + '_ {
        self.routes.iter().map(|(gsi, route)| (*gsi, route.msi))
    }

    /// Whether `gsi` has an irqfd attached.
    pub fn has_irqfd(&self, gsi: Gsi) -> bool {
        self.routes
            .get(&gsi)
            .is_some_and(|route| route.irqfd.is_some())
    }

    /// Opens a batch of changes; they reach KVM with one ioctl on [`RouteBatch::commit`], and
    /// are undone if the batch is dropped uncommitted or the commit fails.
    pub fn batch(&mut self) -> RouteBatch<'_> {
        RouteBatch::new(self)
    }

    /// Removes the routes of `gsis` (detaching their irqfds) with one commit. If any GSI is
    /// not in the table, nothing is removed.
    ///
    /// Changes staged before the call are committed with it.
    pub fn release(&mut self, gsis: &[Gsi]) -> Result<(), KvmRouteError> {
        let mut batch = self.batch();
        for &gsi in gsis {
            batch.remove(gsi)?;
        }
        batch.commit()
    }

    /// Removes every route with one commit.
    pub fn release_all(&mut self) -> Result<(), KvmRouteError> {
        let gsis: Vec<Gsi> = self.routes.keys().copied().collect();
        self.release(&gsis)
    }

    /// Sends the irqchip routes and every route of the table to KVM with one
    /// `KVM_SET_GSI_ROUTING`. KVM checks the whole table before swapping it in, so on error it
    /// keeps the previous one.
    pub(super) fn write_to_kvm(&mut self) -> Result<(), KvmRouteError> {
        let mut entries = self.irqchip_routes.entries();
        entries.extend(
            self.routes
                .iter()
                .map(|(gsi, route)| super::msi::routing_entry(*gsi, route.msi)),
        );
        let routing =
            KvmIrqRouting::from_entries(&entries).map_err(|_| KvmRouteError::TooManyEntries {
                entries: entries.len(),
            })?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|source| KvmRouteError::SetGsiRouting {
                entries: entries.len(),
                source,
            })?;
        self.wrote_kvm = true;
        Ok(())
    }
}

impl Drop for KvmRouteTable {
    fn drop(&mut self) {
        // Dropping the irqfds detaches them; then KVM gets back a table without our routes.
        self.abort();
        self.routes.clear();
        self.stale.clear();
        if self.wrote_kvm {
            let _ = self.write_to_kvm();
        }
    }
}
