//! Staged route changes that reach KVM together, or not at all.
//!
//! The staging state lives in the table itself, so that a layer owning the table can stage
//! across several calls (one per vector of a guest request) and commit once. [`RouteBatch`]
//! is the scoped form of the same thing: it rolls back whatever it staged when dropped
//! uncommitted.

use std::mem;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::error::KvmRouteError;
use super::irqfd::{Irqfd, drain};
use super::msi::Gsi;
use super::table::{KvmRouteTable, Route};
use pvirq_proto::MsiMessage;

/// One staged change, with what is needed to take it back. Plain data, so that clearing
/// the log after a commit costs nothing per entry.
#[derive(Clone, Copy, Debug)]
pub(super) enum Undo {
    /// A route was added at this GSI.
    Added(Gsi),
    /// The route's message was replaced; this is the previous one.
    Updated(Gsi, MsiMessage),
    /// The route was removed; it waits in [`Pending::removed`].
    Removed,
    /// An irqfd was attached to the GSI (at once: attaching to a GSI before KVM knows its
    /// route is fine, KVM looks routes up again on each commit).
    IrqfdAttached(Gsi),
}

/// What is staged on a table and not yet committed.
#[derive(Debug, Default)]
pub(super) struct Pending {
    undo: Vec<Undo>,
    /// Removed routes, in the order removed. They are held here until commit detaches their
    /// irqfds and frees their GSIs, so a GSI cannot be handed out again before the commit.
    removed: Vec<(Gsi, Route)>,
    /// Whether KVM's routing table must be rewritten on commit (irqfds alone need not).
    routing_changed: bool,
}

impl KvmRouteTable {
    /// Whether changes are staged and not yet committed or aborted.
    pub fn has_staged(&self) -> bool {
        !self.pending.undo.is_empty()
    }

    /// Stages a route for `msi` on the lowest free GSI and returns that GSI.
    pub fn stage_add(&mut self, msi: MsiMessage) -> Result<Gsi, KvmRouteError> {
        let exhausted = || KvmRouteError::Exhausted {
            requested: 1,
            available: 0,
        };
        if self.available() == 0 {
            return Err(exhausted());
        }
        let offset = self.free.first_free().ok_or_else(exhausted)?;
        self.free.take(offset);
        let offset = offset as usize;
        // A free offset lies in the range and its slot is empty, so neither check fails.
        let gsi = self.gsi_at(offset).ok_or_else(exhausted)?;
        self.insert(gsi, Route { msi, irqfd: None })
            .map_err(|_| exhausted())?;
        self.pending.undo.push(Undo::Added(gsi));
        self.pending.routing_changed = true;
        Ok(gsi)
    }

    /// Stages a new message for an existing route (a retarget: same GSI, new address/data).
    pub fn stage_update(&mut self, gsi: Gsi, msi: MsiMessage) -> Result<(), KvmRouteError> {
        let route = self.slot_mut(gsi).ok_or(KvmRouteError::UnknownGsi(gsi))?;
        let previous = mem::replace(&mut route.msi, msi);
        self.pending.undo.push(Undo::Updated(gsi, previous));
        self.pending.routing_changed = true;
        Ok(())
    }

    /// Stages the removal of a route. Its irqfd is detached and its GSI freed once the
    /// commit succeeds.
    pub fn stage_remove(&mut self, gsi: Gsi) -> Result<(), KvmRouteError> {
        let route = self.take(gsi).ok_or(KvmRouteError::UnknownGsi(gsi))?;
        self.pending.removed.push((gsi, route));
        self.pending.undo.push(Undo::Removed);
        self.pending.routing_changed = true;
        Ok(())
    }

    /// Attaches `fd` to the route of `gsi` now (`KVM_IRQFD`); a rollback detaches it again.
    /// Writing it — [`trigger`](Self::trigger) — delivers the route's message once the
    /// change is committed.
    ///
    /// The table keeps `fd` while it is attached; once detached (or if it cannot be
    /// attached, as on error here) it is given back by [`take_detached`](Self::take_detached).
    pub fn stage_irqfd(&mut self, gsi: Gsi, fd: EventFd) -> Result<(), KvmRouteError> {
        let vm = Arc::clone(&self.vm);
        let Some(route) = self.slot_mut(gsi) else {
            self.give_back(fd);
            return Err(KvmRouteError::UnknownGsi(gsi));
        };
        if route.irqfd.is_some() {
            self.give_back(fd);
            return Err(KvmRouteError::IrqfdAlreadyRegistered(gsi));
        }
        match Irqfd::attach(&vm, gsi, fd) {
            Ok(irqfd) => route.irqfd = Some(irqfd),
            Err((err, fd)) => {
                self.give_back(fd);
                return Err(err);
            }
        }
        self.pending.undo.push(Undo::IrqfdAttached(gsi));
        Ok(())
    }

    /// Sends the staged table to KVM with one `KVM_SET_GSI_ROUTING` (none if only irqfds were
    /// attached), then detaches the irqfds of removed routes and frees their GSIs.
    ///
    /// If KVM refuses the table, everything staged is undone and the table is as before.
    pub fn commit(&mut self) -> Result<(), KvmRouteError> {
        if self.pending.routing_changed
            && let Err(err) = self.write_to_kvm()
        {
            self.abort();
            return Err(err);
        }
        self.pending.undo.clear();
        self.pending.routing_changed = false;
        let mut first_error = None;
        let mut removed = mem::take(&mut self.pending.removed);
        for (gsi, route) in removed.drain(..) {
            if let Some(irqfd) = route.irqfd {
                match irqfd.detach() {
                    Ok(fd) => self.detached.push(fd),
                    Err((irqfd, err)) => {
                        // Keep the GSI out of the pool: its old eventfd could still trigger it.
                        self.stale.push(irqfd);
                        first_error.get_or_insert(err);
                        continue;
                    }
                }
            }
            self.free_gsi(gsi);
        }
        // Keep the allocation for the next batch.
        self.pending.removed = removed;
        first_error.map_or(Ok(()), Err)
    }

    /// Undoes the staged changes, newest first. KVM's routing table was not touched (or kept
    /// its previous contents), so only our list and the irqfds need undoing.
    pub fn abort(&mut self) {
        while let Some(undo) = self.pending.undo.pop() {
            match undo {
                Undo::Added(gsi) => {
                    if let Some(route) = self.take(gsi) {
                        self.stash_irqfd(route.irqfd);
                    }
                    self.free_gsi(gsi);
                }
                Undo::Updated(gsi, previous) => {
                    if let Some(route) = self.slot_mut(gsi) {
                        route.msi = previous;
                    }
                }
                Undo::Removed => {
                    if let Some((gsi, route)) = self.pending.removed.pop() {
                        // The GSI was held, so its slot is still empty.
                        let _ = self.insert(gsi, route);
                    }
                }
                Undo::IrqfdAttached(gsi) => {
                    let irqfd = self.slot_mut(gsi).and_then(|route| route.irqfd.take());
                    self.stash_irqfd(irqfd);
                }
            }
        }
        self.pending.removed.clear();
        self.pending.routing_changed = false;
    }

    /// Detaches an irqfd being rolled back and gives its eventfd back; one KVM refuses to
    /// detach is kept for `Drop`.
    fn stash_irqfd(&mut self, irqfd: Option<Irqfd>) {
        match irqfd.map(Irqfd::detach) {
            Some(Ok(fd)) => self.detached.push(fd),
            Some(Err((irqfd, _))) => self.stale.push(irqfd),
            None => {}
        }
    }

    /// Gives back an eventfd that was never attached, drained like a detached one.
    fn give_back(&mut self, fd: EventFd) {
        drain(&fd);
        self.detached.push(fd);
    }
}

/// Route changes staged on a [`KvmRouteTable`] within a scope, committed with one
/// `KVM_SET_GSI_ROUTING`.
///
/// While the batch is open the table shows the staged state. [`commit`](Self::commit)
/// sends it to KVM; if KVM refuses, or the batch is dropped without commit, every change is
/// undone (irqfds attached by the batch are detached) and the table is as it was.
#[derive(Debug)]
#[must_use = "an uncommitted batch rolls back when dropped"]
pub struct RouteBatch<'t> {
    table: &'t mut KvmRouteTable,
}

impl<'t> RouteBatch<'t> {
    pub(super) fn new(table: &'t mut KvmRouteTable) -> Self {
        Self { table }
    }

    /// The table as staged so far.
    pub fn table(&self) -> &KvmRouteTable {
        self.table
    }

    /// How many more routes this batch can add.
    pub fn available(&self) -> usize {
        self.table.available()
    }

    /// Stages a route for `msi` on the lowest free GSI and returns that GSI.
    pub fn add(&mut self, msi: MsiMessage) -> Result<Gsi, KvmRouteError> {
        self.table.stage_add(msi)
    }

    /// Stages one route per message, or none if there are not enough routes for all of them.
    pub fn add_all(&mut self, msis: &[MsiMessage]) -> Result<Vec<Gsi>, KvmRouteError> {
        let available = self.table.available();
        if msis.len() > available {
            return Err(KvmRouteError::Exhausted {
                requested: msis.len(),
                available,
            });
        }
        msis.iter().map(|&msi| self.add(msi)).collect()
    }

    /// Stages a new message for an existing route.
    pub fn update(&mut self, gsi: Gsi, msi: MsiMessage) -> Result<(), KvmRouteError> {
        self.table.stage_update(gsi, msi)
    }

    /// Stages the removal of a route.
    pub fn remove(&mut self, gsi: Gsi) -> Result<(), KvmRouteError> {
        self.table.stage_remove(gsi)
    }

    /// Attaches `fd` to the route of `gsi` now; a rollback detaches it again (see
    /// [`KvmRouteTable::stage_irqfd`]).
    pub fn register_irqfd(&mut self, gsi: Gsi, fd: EventFd) -> Result<(), KvmRouteError> {
        self.table.stage_irqfd(gsi, fd)
    }

    /// Commits what the batch staged (see [`KvmRouteTable::commit`]).
    pub fn commit(self) -> Result<(), KvmRouteError> {
        self.table.commit()
    }
}

impl Drop for RouteBatch<'_> {
    fn drop(&mut self) {
        // After a commit nothing is staged and this does nothing.
        self.table.abort();
    }
}
