//! Guest delivery: "make this host interrupt arrive in the guest at (vCPU, vector)".
//!
//! One [`RouteLayer`] per VM. Changes are staged and made live together by one
//! [`RouteLayer::commit`] per request, because KVM's `KVM_SET_GSI_ROUTING` replaces the
//! whole table (~0.1 ms each): a request of 32 vectors pays it once, not 32 times.
//!
//! # Implementing it on KVM
//! - `stage_add` allocates a GSI from the VM's range (24..4096, clear of the IOAPIC/PIC
//!   routes), creates and registers its irqfd, and appends an MSI entry (compatibility
//!   format: `0xFEE0_0000 | apic_id << 12`, data = vector) to the *staged* copy of the
//!   table; `Exhausted(GuestRoute)` when no GSI is left.
//! - `stage_update` / `stage_remove` edit the staged copy; GSIs and irqfds of removed
//!   routes are released only at commit.
//! - `commit` rebuilds the table from the staged entries (`KvmIrqRouting::from_entries`) and
//!   issues one `KVM_SET_GSI_ROUTING`. On error it must behave as `abort` and return
//!   `Failed(GuestRoute)`.
//! - `abort` drops the staged copy: GSIs and irqfds added by the batch are released.
//! - `fire` writes the route's irqfd.
//!
//! The host holds the VM's lock across a whole batch, so at most one batch is open per VM.

use super::bitmap::IndexBitmap;
use crate::error::{HostError, LayerError};
use pvirq_proto::Resource;
use std::collections::HashMap;
use std::collections::VecDeque;

/// A route's identity within its VM (for KVM: the GSI).
pub type RouteId = u32;

/// Where a route delivers in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GuestDest {
    /// The vCPU index.
    pub vcpu: u32,
    /// The guest vector.
    pub vector: u8,
}

/// A VM's guest-delivery routes, with staged changes and one commit per request.
pub trait RouteLayer: Send {
    /// New routes that can still be staged now.
    fn available(&self) -> u32;
    /// Stages a new route; it is live only after [`RouteLayer::commit`].
    fn stage_add(&mut self, dest: GuestDest) -> Result<RouteId, LayerError>;
    /// Stages a new destination for a live route.
    fn stage_update(&mut self, id: RouteId, dest: GuestDest) -> Result<(), LayerError>;
    /// Stages the removal of a live route.
    fn stage_remove(&mut self, id: RouteId) -> Result<(), LayerError>;
    /// Makes every staged change live at once. On error, nothing staged is live and the
    /// batch is discarded as by [`RouteLayer::abort`].
    fn commit(&mut self) -> Result<(), LayerError>;
    /// Discards every staged change.
    fn abort(&mut self);
    /// The live destination of `id`.
    fn route(&self, id: RouteId) -> Option<GuestDest>;
    /// Number of live routes.
    fn live(&self) -> u32;
    /// Raises the interrupt of a live route (KVM: writes its irqfd).
    fn fire(&mut self, id: RouteId) -> Result<(), LayerError>;
}

/// A staged change.
#[derive(Clone, Copy, Debug)]
enum Staged {
    Add(RouteId, GuestDest),
    Update(RouteId, GuestDest),
    Remove(RouteId),
}

/// How many deliveries [`MemoryRoutes`] remembers.
const DELIVERY_LOG: usize = 1024;

/// The shipped in-memory route table: records every delivery instead of injecting it.
#[derive(Debug)]
pub struct MemoryRoutes {
    first_id: u32,
    ids: IndexBitmap,
    live: HashMap<RouteId, GuestDest>,
    staged: Vec<Staged>,
    commits: u64,
    delivered: u64,
    deliveries: VecDeque<GuestDest>,
}

impl MemoryRoutes {
    /// KVM's limits: GSIs 24..4096 (4,072 routes).
    pub fn kvm_like() -> Self {
        Self::with_range(24, 4096 - 24).unwrap_or_else(|_| Self::empty())
    }

    fn empty() -> Self {
        MemoryRoutes {
            first_id: 0,
            ids: IndexBitmap::new(0),
            live: HashMap::new(),
            staged: Vec::new(),
            commits: 0,
            delivered: 0,
            deliveries: VecDeque::new(),
        }
    }

    /// Route ids `first_id..first_id + count`.
    pub fn with_range(first_id: u32, count: u32) -> Result<Self, HostError> {
        if first_id.checked_add(count).is_none() {
            return Err(HostError::InvalidConfig("route id range overflows"));
        }
        Ok(MemoryRoutes {
            first_id,
            ids: IndexBitmap::new(count),
            ..Self::empty()
        })
    }

    /// Number of successful commits so far (tests check "one per request").
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Total deliveries so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// The most recent deliveries (up to 1,024), oldest first.
    pub fn deliveries(&self) -> impl Iterator<Item = GuestDest> + '_ {
        self.deliveries.iter().copied()
    }

    fn is_live_or_added(&self, id: RouteId) -> bool {
        self.live.contains_key(&id)
            || self
                .staged
                .iter()
                .any(|s| matches!(s, Staged::Add(a, _) if *a == id))
    }
}

impl RouteLayer for MemoryRoutes {
    fn available(&self) -> u32 {
        self.ids.free_count()
    }

    fn stage_add(&mut self, dest: GuestDest) -> Result<RouteId, LayerError> {
        let slot = self
            .ids
            .first_free()
            .ok_or(LayerError::Exhausted(Resource::GuestRoute))?;
        self.ids.take(slot);
        let id = self.first_id + slot;
        self.staged.push(Staged::Add(id, dest));
        Ok(id)
    }

    fn stage_update(&mut self, id: RouteId, dest: GuestDest) -> Result<(), LayerError> {
        if !self.is_live_or_added(id) {
            return Err(LayerError::NoEntry(Resource::GuestRoute));
        }
        self.staged.push(Staged::Update(id, dest));
        Ok(())
    }

    fn stage_remove(&mut self, id: RouteId) -> Result<(), LayerError> {
        if !self.live.contains_key(&id) {
            return Err(LayerError::NoEntry(Resource::GuestRoute));
        }
        self.staged.push(Staged::Remove(id));
        Ok(())
    }

    fn commit(&mut self) -> Result<(), LayerError> {
        // `drain` keeps the list's capacity: a commit per request must not allocate.
        for change in self.staged.drain(..) {
            match change {
                Staged::Add(id, dest) | Staged::Update(id, dest) => {
                    self.live.insert(id, dest);
                }
                Staged::Remove(id) => {
                    if self.live.remove(&id).is_some() {
                        self.ids.put(id - self.first_id);
                    }
                }
            }
        }
        self.commits += 1;
        Ok(())
    }

    fn abort(&mut self) {
        for change in self.staged.drain(..) {
            if let Staged::Add(id, _) = change {
                self.ids.put(id - self.first_id);
            }
        }
    }

    fn route(&self, id: RouteId) -> Option<GuestDest> {
        self.live.get(&id).copied()
    }

    fn live(&self) -> u32 {
        self.live.len() as u32
    }

    fn fire(&mut self, id: RouteId) -> Result<(), LayerError> {
        let dest = self
            .route(id)
            .ok_or(LayerError::NoEntry(Resource::GuestRoute))?;
        self.delivered += 1;
        if self.deliveries.len() == DELIVERY_LOG {
            self.deliveries.pop_front();
        }
        self.deliveries.push_back(dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: GuestDest = GuestDest {
        vcpu: 0,
        vector: 0x30,
    };
    const E: GuestDest = GuestDest {
        vcpu: 1,
        vector: 0x31,
    };

    #[test]
    fn staged_changes_are_invisible_until_commit() {
        let mut r = MemoryRoutes::with_range(24, 8).unwrap();
        let a = r.stage_add(D).unwrap();
        assert_eq!(a, 24);
        assert_eq!(r.route(a), None);
        assert_eq!(r.available(), 7);
        r.commit().unwrap();
        assert_eq!(r.route(a), Some(D));
        r.stage_update(a, E).unwrap();
        assert_eq!(r.route(a), Some(D));
        r.commit().unwrap();
        assert_eq!(r.route(a), Some(E));
        r.stage_remove(a).unwrap();
        // A removal frees its id only when committed.
        assert_eq!(r.available(), 7);
        r.commit().unwrap();
        assert_eq!(r.route(a), None);
        assert_eq!(r.available(), 8);
        assert_eq!(r.commits(), 3);
    }

    #[test]
    fn abort_undoes_the_whole_batch() {
        let mut r = MemoryRoutes::with_range(0, 2).unwrap();
        let a = r.stage_add(D).unwrap();
        r.commit().unwrap();
        r.stage_add(E).unwrap();
        r.stage_update(a, E).unwrap();
        r.stage_remove(a).unwrap();
        r.abort();
        assert_eq!(r.route(a), Some(D));
        assert_eq!(r.live(), 1);
        assert_eq!(r.available(), 1);
        assert_eq!(
            r.stage_remove(99),
            Err(LayerError::NoEntry(Resource::GuestRoute))
        );
    }

    #[test]
    fn exhaustion_and_fire() {
        let mut r = MemoryRoutes::with_range(0, 1).unwrap();
        let a = r.stage_add(D).unwrap();
        assert_eq!(
            r.stage_add(E),
            Err(LayerError::Exhausted(Resource::GuestRoute))
        );
        assert!(r.fire(a).is_err(), "a staged route is not live");
        r.commit().unwrap();
        r.fire(a).unwrap();
        assert_eq!(r.deliveries().collect::<Vec<_>>(), [D]);
        assert_eq!(MemoryRoutes::kvm_like().available(), 4072);
    }
}
