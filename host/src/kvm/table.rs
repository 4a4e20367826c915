//! `KvmRouteTable`: one VM's MSI routes, kept as our own list because KVM only accepts the
//! whole table at once.

use std::ops::Range;
use std::sync::Arc;

use kvm_bindings::{KVM_MAX_IRQ_ROUTES, KvmIrqRouting};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::error::KvmRouteError;
use super::irqchip::{IRQCHIP_GSIS, IrqchipRoutes};
use super::irqfd::Irqfd;
use super::msi::Gsi;
use super::staging::{Pending, RouteBatch};
use crate::layers::IndexBitmap;
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
///
/// The table owns the eventfd of every irqfd it attaches. Those detached again — by a
/// committed removal, or by rolling back the batch that attached them — are given back,
/// drained, through [`take_detached`](Self::take_detached), for the caller to reuse or
/// close; until then the table holds them.
#[derive(Debug)]
pub struct KvmRouteTable {
    pub(super) vm: Arc<VmFd>,
    irqchip_routes: IrqchipRoutes,
    gsi_range: Range<u32>,
    /// Routes by GSI offset from `gsi_range.start`; grows up to the highest GSI used.
    slots: Vec<Option<Route>>,
    /// Number of `Some` slots.
    len: usize,
    /// GSIs of the range (as offsets) that carry no route and are not held by an open batch.
    pub(super) free: IndexBitmap,
    /// Irqfds KVM refused to detach; dropping them tries again.
    pub(super) stale: Vec<Irqfd>,
    /// Eventfds detached and not yet taken back by the caller.
    pub(super) detached: Vec<EventFd>,
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
            free: IndexBitmap::singles(config.gsi_range.len() as u32),
            gsi_range: config.gsi_range,
            slots: Vec::new(),
            len: 0,
            stale: Vec::new(),
            detached: Vec::new(),
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
        self.len
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many routes can still be added: free GSIs, capped by what is left of KVM's 4096
    /// routing entries after the irqchip routes and ours.
    pub fn available(&self) -> usize {
        let entry_budget = KVM_MAX_IRQ_ROUTES
            .saturating_sub(self.irqchip_routes.len())
            .saturating_sub(self.len);
        (self.free.free_count() as usize).min(entry_budget)
    }

    /// The message `gsi` delivers, if the table has a route for it.
    pub fn route(&self, gsi: Gsi) -> Option<MsiMessage> {
        self.slot(gsi).map(|route| route.msi)
    }

    /// Every route, by ascending GSI.
    pub fn routes(&self) -> impl Iterator<Item = (Gsi, MsiMessage)> + '_ {
        let start = self.gsi_range.start;
        (start..)
            .zip(&self.slots)
            .filter_map(|(gsi, slot)| slot.as_ref().map(|route| (Gsi::new(gsi), route.msi)))
    }

    /// Whether `gsi` has an irqfd attached.
    pub fn has_irqfd(&self, gsi: Gsi) -> bool {
        self.slot(gsi).is_some_and(|route| route.irqfd.is_some())
    }

    /// Writes the irqfd of `gsi`: KVM delivers its route (once committed).
    pub fn trigger(&self, gsi: Gsi) -> Result<(), KvmRouteError> {
        let route = self.slot(gsi).ok_or(KvmRouteError::UnknownGsi(gsi))?;
        let irqfd = route.irqfd.as_ref().ok_or(KvmRouteError::NoIrqfd(gsi))?;
        irqfd
            .trigger()
            .map_err(|source| KvmRouteError::Trigger { gsi, source })
    }

    /// Takes back the eventfds detached since the last call, each with its counter drained:
    /// those of committed removals, of rolled-back attachments, and those the table refused
    /// to attach.
    pub fn take_detached(&mut self) -> std::vec::Drain<'_, EventFd> {
        self.detached.drain(..)
    }

    /// The offset of `gsi` in the slots, if it lies in the range.
    fn offset(&self, gsi: Gsi) -> Option<usize> {
        if self.gsi_range.contains(&gsi.raw()) {
            usize::try_from(gsi.raw() - self.gsi_range.start).ok()
        } else {
            None
        }
    }

    pub(super) fn slot(&self, gsi: Gsi) -> Option<&Route> {
        self.slots.get(self.offset(gsi)?)?.as_ref()
    }

    pub(super) fn slot_mut(&mut self, gsi: Gsi) -> Option<&mut Route> {
        let offset = self.offset(gsi)?;
        self.slots.get_mut(offset)?.as_mut()
    }

    /// Puts `route` at `gsi`, which must be in the range and empty; returns it otherwise.
    pub(super) fn insert(&mut self, gsi: Gsi, route: Route) -> Result<(), Route> {
        let Some(offset) = self.offset(gsi) else {
            return Err(route);
        };
        if self.slots.len() <= offset {
            self.slots.resize_with(offset + 1, || None);
        }
        match self.slots.get_mut(offset) {
            Some(slot @ None) => {
                *slot = Some(route);
                self.len += 1;
                Ok(())
            }
            _ => Err(route),
        }
    }

    pub(super) fn take(&mut self, gsi: Gsi) -> Option<Route> {
        let offset = self.offset(gsi)?;
        let route = self.slots.get_mut(offset)?.take()?;
        self.len -= 1;
        Some(route)
    }

    /// The GSI at `offset` in the range.
    pub(super) fn gsi_at(&self, offset: usize) -> Option<Gsi> {
        let offset = u32::try_from(offset).ok()?;
        let gsi = self.gsi_range.start.checked_add(offset)?;
        self.gsi_range.contains(&gsi).then_some(Gsi::new(gsi))
    }

    /// Returns `gsi` to the free pool.
    pub(super) fn free_gsi(&mut self, gsi: Gsi) {
        if let Some(offset) = self.offset(gsi).and_then(|o| u32::try_from(o).ok()) {
            self.free.put(offset);
        }
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
        let gsis: Vec<Gsi> = self.routes().map(|(gsi, _)| gsi).collect();
        self.release(&gsis)
    }

    /// Sends the irqchip routes and every route of the table to KVM with one
    /// `KVM_SET_GSI_ROUTING`. KVM checks the whole table before swapping it in, so on error it
    /// keeps the previous one.
    pub(super) fn write_to_kvm(&mut self) -> Result<(), KvmRouteError> {
        let mut entries = self.irqchip_routes.entries();
        entries.reserve(self.len);
        entries.extend(
            self.routes()
                .map(|(gsi, msi)| super::msi::routing_entry(gsi, msi)),
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
        self.slots.clear();
        self.stale.clear();
        if self.wrote_kvm {
            let _ = self.write_to_kvm();
        }
    }
}
