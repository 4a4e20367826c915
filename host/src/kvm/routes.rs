//! `KvmRoutes`: the [`GuestRoutes`] that deliver grants into a real KVM guest.
//!
//! At VM setup it reserves as many GSIs from the VMM's [`RouteOwner`] as the VM's quota can
//! use and registers an irqfd on each ([`super::irqfds`]). A route is then one of those
//! GSIs with an MSI entry (compatibility format, destination = the APIC ID, above 255 in
//! KVM's extended destination ID); staging it costs no syscall, and the request's changes
//! reach KVM with one `KVM_SET_GSI_ROUTING` through the owner. The trigger a staged route
//! gives is its GSI's eventfd: what VFIO, or the modelled host, signals.
//!
//! A parked route is a GSI with no entry: KVM consumes and drops what its irqfd signals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kvm_ioctls::VmFd;

use super::error::KvmRouteError;
use super::irqfds::IrqfdPool;
use super::msi::Gsi;
use super::owner::RouteOwner;
use crate::backend::{GuestDest, Trigger};
use crate::bitmap::IndexBitmap;
use crate::routes::{GuestRoutes, RouteError, RouteId, RouteState, StagedRoute};
use pvirq_proto::{CompatMsi, MsiMessage};

/// Counters of a [`KvmRoutes`], readable after the layer was handed to a VM.
#[derive(Debug, Default)]
pub struct KvmRouteCounters {
    commits: AtomicU64,
    failed_commits: AtomicU64,
    aborts: AtomicU64,
}

impl KvmRouteCounters {
    /// Successful commits: one `KVM_SET_GSI_ROUTING` each.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Commits KVM refused; each was rolled back.
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits.load(Ordering::Relaxed)
    }

    /// Batches discarded without commit (including failed commits).
    pub fn aborts(&self) -> u64 {
        self.aborts.load(Ordering::Relaxed)
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The message KVM delivers for `dest`: fixed, edge, physical destination mode.
pub fn route_message(dest: GuestDest) -> MsiMessage {
    CompatMsi::fixed(dest.apic_id, dest.vector).message()
}

/// A VM's guest routes on KVM, over the VMM's routing table `O`.
pub struct KvmRoutes<O: RouteOwner> {
    owner: O,
    pool: IrqfdPool,
    /// Pool slots neither live nor added by the open batch.
    free: IndexBitmap,
    /// Committed state by pool slot.
    live: Vec<Option<RouteState>>,
    live_count: u32,
    /// State by pool slot once the open batch is applied (equal to `live` where untouched).
    next: Vec<Option<RouteState>>,
    /// Slots the open batch changed, each once.
    touched: Vec<u16>,
    touched_flag: Vec<bool>,
    /// Pool slot by GSI (KVM's GSIs are below 4096).
    slot_of: Vec<Option<u16>>,
    /// Slots whose removal KVM has not accepted yet: sent again with the next commit and
    /// not handed out before.
    unsynced: Vec<u16>,
    counters: Arc<KvmRouteCounters>,
}

impl<O: RouteOwner> std::fmt::Debug for KvmRoutes<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmRoutes")
            .field("capacity", &self.pool.slots.len())
            .field("live", &self.live_count)
            .finish_non_exhaustive()
    }
}

impl<O: RouteOwner> KvmRoutes<O> {
    /// Routes for a VM whose quota is `capacity`: reserves `capacity` GSIs from `owner`
    /// and registers an irqfd on each (`KVM_IRQFD`, ~1 µs each), once.
    pub fn new(mut owner: O, vm: Arc<VmFd>, capacity: u32) -> Result<Self, KvmRouteError> {
        let mut pool = IrqfdPool::new(vm);
        let mut slot_of = Vec::new();
        let release = |owner: &mut O, pool: &IrqfdPool| {
            for slot in &pool.slots {
                owner.release_gsi(slot.gsi);
            }
        };
        for slot in 0..capacity {
            let gsi = match owner.reserve_gsi() {
                Ok(gsi) => gsi,
                Err(e) => {
                    release(&mut owner, &pool);
                    return Err(e);
                }
            };
            if let Err(e) = pool.register(gsi) {
                owner.release_gsi(gsi);
                release(&mut owner, &pool);
                return Err(e);
            }
            let at = gsi.raw() as usize;
            if slot_of.len() <= at {
                slot_of.resize(at + 1, None);
            }
            if let Some(entry) = slot_of.get_mut(at) {
                *entry = u16::try_from(slot).ok();
            }
        }
        Ok(KvmRoutes {
            owner,
            pool,
            free: IndexBitmap::singles(capacity),
            live: vec![None; capacity as usize],
            live_count: 0,
            next: vec![None; capacity as usize],
            touched: Vec::new(),
            touched_flag: vec![false; capacity as usize],
            slot_of,
            unsynced: Vec::new(),
            counters: Arc::default(),
        })
    }

    /// The layer's counters; the handle stays valid after the layer is boxed into a VM.
    pub fn counters(&self) -> Arc<KvmRouteCounters> {
        Arc::clone(&self.counters)
    }

    /// The VMM's routing table.
    pub fn owner(&self) -> &O {
        &self.owner
    }

    /// GSIs reserved, each with its irqfd.
    pub fn capacity(&self) -> u32 {
        self.pool.slots.len() as u32
    }

    /// The GSI of route `id`, if it is one of this layer's.
    fn slot(&self, id: RouteId) -> Option<u16> {
        self.slot_of.get(id as usize).copied().flatten()
    }

    fn gsi(&self, slot: u16) -> Option<Gsi> {
        self.pool.slots.get(usize::from(slot)).map(|r| r.gsi)
    }

    /// The state `slot` has once the open batch is applied.
    fn pending_state(&self, slot: u16) -> Option<RouteState> {
        self.next.get(usize::from(slot)).copied().flatten()
    }

    fn live_state(&self, slot: u16) -> Option<RouteState> {
        self.live.get(usize::from(slot)).copied().flatten()
    }

    /// Sets the state `slot` will have once the batch is committed.
    fn stage(&mut self, slot: u16, state: Option<RouteState>) {
        let at = usize::from(slot);
        if let Some(next) = self.next.get_mut(at) {
            *next = state;
        }
        if let Some(flag) = self.touched_flag.get_mut(at)
            && !*flag
        {
            *flag = true;
            self.touched.push(slot);
        }
    }

    /// Ends the batch: untouches every slot.
    fn end_batch(&mut self) {
        for slot in self.touched.drain(..) {
            if let Some(flag) = self.touched_flag.get_mut(usize::from(slot)) {
                *flag = false;
            }
        }
    }

    fn set_live(&mut self, slot: u16, state: Option<RouteState>) {
        if let Some(entry) = self.live.get_mut(usize::from(slot)) {
            match (entry.is_some(), state.is_some()) {
                (false, true) => self.live_count += 1,
                (true, false) => self.live_count -= 1,
                _ => {}
            }
            *entry = state;
        }
    }

    /// The owner's changes for the open batch and the unsynced removals.
    fn changes(&self) -> Vec<(Gsi, Option<MsiMessage>)> {
        let mut changes = Vec::with_capacity(self.touched.len() + self.unsynced.len());
        for slot in &self.unsynced {
            if let Some(gsi) = self.gsi(*slot) {
                changes.push((gsi, None));
            }
        }
        for slot in &self.touched {
            if let Some(gsi) = self.gsi(*slot) {
                let state = self.pending_state(*slot);
                changes.push((gsi, state.and_then(RouteState::dest).map(route_message)));
            }
        }
        changes
    }
}

impl<O: RouteOwner> GuestRoutes for KvmRoutes<O> {
    fn available(&self) -> u32 {
        self.free.free_count()
    }

    fn stage_add(&mut self, dest: Option<GuestDest>) -> Result<StagedRoute, RouteError> {
        let slot = self.free.first_free().ok_or(RouteError::Exhausted)?;
        let slot16 = u16::try_from(slot).map_err(|_| RouteError::Exhausted)?;
        let registered = self
            .pool
            .slots
            .get(slot as usize)
            .ok_or(RouteError::Exhausted)?;
        let trigger: Trigger = registered.fd.clone();
        let id = registered.gsi.raw();
        self.free.take(slot);
        self.stage(slot16, Some(RouteState::of(dest)));
        Ok(StagedRoute { id, trigger })
    }

    fn stage_update(&mut self, id: RouteId, dest: Option<GuestDest>) -> Result<(), RouteError> {
        let slot = self.slot(id).ok_or(RouteError::NoSuchRoute(id))?;
        if self.pending_state(slot).is_none() {
            return Err(RouteError::NoSuchRoute(id));
        }
        self.stage(slot, Some(RouteState::of(dest)));
        Ok(())
    }

    fn stage_remove(&mut self, id: RouteId) -> Result<(), RouteError> {
        let slot = self.slot(id).ok_or(RouteError::NoSuchRoute(id))?;
        if self.pending_state(slot).is_none() {
            return Err(RouteError::NoSuchRoute(id));
        }
        if self.live_state(slot).is_none() {
            // Added by this batch and taken back before KVM saw it: free at once.
            self.free.put(u32::from(slot));
        }
        self.stage(slot, None);
        Ok(())
    }

    fn commit(&mut self) -> Result<(), RouteError> {
        let changes = self.changes();
        if let Err(e) = self.owner.commit(&changes) {
            KvmRouteCounters::bump(&self.counters.failed_commits);
            self.abort();
            return Err(e.into());
        }
        for slot in std::mem::take(&mut self.unsynced) {
            self.free.put(u32::from(slot));
        }
        for i in 0..self.touched.len() {
            let Some(slot) = self.touched.get(i).copied() else {
                break;
            };
            let was_live = self.live_state(slot).is_some();
            let state = self.pending_state(slot);
            self.set_live(slot, state);
            if state.is_none() && was_live {
                self.free.put(u32::from(slot));
            }
        }
        self.end_batch();
        KvmRouteCounters::bump(&self.counters.commits);
        Ok(())
    }

    fn abort(&mut self) {
        if self.touched.is_empty() {
            return;
        }
        for i in 0..self.touched.len() {
            let Some(slot) = self.touched.get(i).copied() else {
                break;
            };
            let live = self.live_state(slot);
            // An add not taken back: its GSI is free again.
            if live.is_none() && self.pending_state(slot).is_some() {
                self.free.put(u32::from(slot));
            }
            if let Some(next) = self.next.get_mut(usize::from(slot)) {
                *next = live;
            }
        }
        self.end_batch();
        KvmRouteCounters::bump(&self.counters.aborts);
    }

    fn route(&self, id: RouteId) -> Option<RouteState> {
        self.live
            .get(usize::from(self.slot(id)?))
            .copied()
            .flatten()
    }

    fn live(&self) -> u32 {
        self.live_count
    }

    fn clear(&mut self) {
        self.abort();
        for slot in 0..self.live.len() {
            let Ok(slot) = u16::try_from(slot) else { break };
            if self.live_state(slot).is_some() {
                self.set_live(slot, None);
                if let Some(next) = self.next.get_mut(usize::from(slot)) {
                    *next = None;
                }
                self.unsynced.push(slot);
            }
        }
        let changes = self.changes();
        if self.owner.commit(&changes).is_ok() {
            for slot in std::mem::take(&mut self.unsynced) {
                self.free.put(u32::from(slot));
            }
        }
    }
}

impl<O: RouteOwner> Drop for KvmRoutes<O> {
    fn drop(&mut self) {
        self.clear();
        for slot in &self.pool.slots {
            self.owner.release_gsi(slot.gsi);
        }
    }
}
