//! `KvmRouteTable`: a VM's whole KVM routing table, kept as our own list because KVM only
//! accepts the whole table at once. The [`RouteOwner`] for a VMM that has none.

use std::ops::Range;
use std::sync::Arc;

use kvm_bindings::{KVM_MAX_IRQ_ROUTES, KvmIrqRouting};
use kvm_ioctls::VmFd;

use super::error::KvmRouteError;
use super::irqchip::{IRQCHIP_GSIS, IrqchipRoutes};
use super::msi::{Gsi, routing_entry};
use super::owner::RouteOwner;
use crate::bitmap::IndexBitmap;
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

/// The MSI routes of one VM. With no commit in progress it is exactly what KVM has.
/// Dropping it sends KVM a table without its routes (if it ever wrote one).
#[derive(Debug)]
pub struct KvmRouteTable {
    vm: Arc<VmFd>,
    irqchip_routes: IrqchipRoutes,
    gsi_range: Range<u32>,
    /// Routes by GSI offset from `gsi_range.start`; grows up to the highest GSI used.
    routes: Vec<Option<MsiMessage>>,
    /// Number of `Some` routes.
    len: usize,
    /// GSIs of the range (as offsets) not reserved by anybody.
    free: IndexBitmap,
    /// Whether a commit has replaced KVM's table, so dropping must restore it.
    wrote_kvm: bool,
    /// Commits sent to KVM.
    commits: u64,
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
    #[cfg(any(test, feature = "test-utils"))]
    pub fn with_unchecked_config(vm: Arc<VmFd>, config: RouteTableConfig) -> Self {
        Self::build(vm, config)
    }

    fn build(vm: Arc<VmFd>, config: RouteTableConfig) -> Self {
        Self {
            vm,
            irqchip_routes: config.irqchip_routes,
            free: IndexBitmap::singles(config.gsi_range.len() as u32),
            gsi_range: config.gsi_range,
            routes: Vec::new(),
            len: 0,
            wrote_kvm: false,
            commits: 0,
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

    /// Number of routes in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Commits sent to KVM so far (each one `KVM_SET_GSI_ROUTING`).
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// GSIs that can still be reserved: free GSIs, capped by what is left of KVM's 4096
    /// routing entries after the irqchip routes.
    pub fn available(&self) -> usize {
        let reserved = self.free.len() - self.free.free_count();
        let entry_budget = KVM_MAX_IRQ_ROUTES
            .saturating_sub(self.irqchip_routes.len())
            .saturating_sub(reserved as usize);
        (self.free.free_count() as usize).min(entry_budget)
    }

    /// The message `gsi` delivers, if the table has a route for it.
    pub fn route(&self, gsi: Gsi) -> Option<MsiMessage> {
        self.routes.get(self.offset(gsi)?).copied().flatten()
    }

    /// Every route, by ascending GSI.
    pub fn routes(&self) -> impl Iterator<Item = (Gsi, MsiMessage)> + '_ {
        (self.gsi_range.start..)
            .zip(&self.routes)
            .filter_map(|(gsi, msi)| msi.map(|msi| (Gsi::new(gsi), msi)))
    }

    fn offset(&self, gsi: Gsi) -> Option<usize> {
        if self.gsi_range.contains(&gsi.raw()) {
            usize::try_from(gsi.raw() - self.gsi_range.start).ok()
        } else {
            None
        }
    }

    /// Sets the route of `gsi`; the previous one.
    fn set(&mut self, offset: usize, msi: Option<MsiMessage>) -> Option<MsiMessage> {
        if self.routes.len() <= offset {
            self.routes.resize(offset + 1, None);
        }
        let slot = self.routes.get_mut(offset)?;
        let previous = std::mem::replace(slot, msi);
        match (previous.is_some(), msi.is_some()) {
            (false, true) => self.len += 1,
            (true, false) => self.len -= 1,
            _ => {}
        }
        previous
    }

    /// Sends the irqchip routes and every route of the table to KVM with one
    /// `KVM_SET_GSI_ROUTING`. KVM checks the whole table before swapping it in, so on error it
    /// keeps the previous one.
    fn write_to_kvm(&mut self) -> Result<(), KvmRouteError> {
        let mut entries = self.irqchip_routes.entries();
        entries.reserve(self.len);
        entries.extend(self.routes().map(|(gsi, msi)| routing_entry(gsi, msi)));
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
        self.commits += 1;
        Ok(())
    }
}

impl RouteOwner for KvmRouteTable {
    fn reserve_gsi(&mut self) -> Result<Gsi, KvmRouteError> {
        let exhausted = KvmRouteError::Exhausted {
            requested: 1,
            available: 0,
        };
        if self.available() == 0 {
            return Err(exhausted);
        }
        let offset = self.free.first_free().ok_or(exhausted)?;
        self.free.take(offset);
        Ok(Gsi::new(self.gsi_range.start + offset))
    }

    fn release_gsi(&mut self, gsi: Gsi) {
        if let Some(offset) = self.offset(gsi) {
            self.set(offset, None);
            self.free.put(offset as u32);
        }
    }

    fn commit(&mut self, changes: &[(Gsi, Option<MsiMessage>)]) -> Result<(), KvmRouteError> {
        let mut undo = Vec::with_capacity(changes.len());
        for (gsi, msi) in changes {
            let Some(offset) = self.offset(*gsi) else {
                self.revert(undo);
                return Err(KvmRouteError::UnknownGsi(*gsi));
            };
            undo.push((offset, self.set(offset, *msi)));
        }
        let result = self.write_to_kvm();
        if result.is_err() {
            self.revert(undo);
        }
        result
    }
}

impl KvmRouteTable {
    fn revert(&mut self, undo: Vec<(usize, Option<MsiMessage>)>) {
        for (offset, previous) in undo.into_iter().rev() {
            self.set(offset, previous);
        }
    }
}

impl Drop for KvmRouteTable {
    fn drop(&mut self) {
        if self.wrote_kvm && self.len > 0 {
            self.routes.clear();
            self.len = 0;
            let _ = self.write_to_kvm();
        }
    }
}
