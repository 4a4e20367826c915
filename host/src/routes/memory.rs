//! `MemoryRoutes`: guest routes kept in memory, recording every delivery instead of
//! injecting it. The modelled host, the tests, the fuzzer and the benchmarks use it.
//!
//! Each route id has one [`Signal`] for its whole life (made on first use, reused after),
//! so staging a route allocates nothing in steady state. Raising a signal looks the route
//! up in a [`RouteBook`] shared with the signals: a live route records a delivery to its
//! destination, a parked one a drop, a removed one a stale signal.

use super::{GuestRoutes, RouteError, RouteId, RouteState, StagedRoute};
use crate::backend::{GuestDest, Signal, Trigger};
use crate::bitmap::IndexBitmap;
use crate::error::{ConfigError, HostError};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// How many deliveries the book remembers.
const DELIVERY_LOG: usize = 1024;

/// The live routes and what their signals saw, shared by the table and its signals.
#[derive(Debug, Default)]
pub struct RouteBook {
    /// Live state by slot (route id − first id); `None`: no live route.
    live: Vec<Option<RouteState>>,
    /// Drops by slot, since the slot's route was last parked.
    drops: Vec<u64>,
    live_count: u32,
    delivered: u64,
    dropped: u64,
    stale: u64,
    deliveries: VecDeque<GuestDest>,
}

impl RouteBook {
    /// Interrupts delivered to a destination.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Interrupts that reached a parked route and were dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Signals raised for a route that no longer exists.
    pub fn stale(&self) -> u64 {
        self.stale
    }

    /// The most recent deliveries (up to 1,024), oldest first.
    pub fn deliveries(&self) -> impl Iterator<Item = GuestDest> + '_ {
        self.deliveries.iter().copied()
    }

    /// Interrupts the route in `slot` dropped since it was last parked.
    fn drops_of(&self, slot: u32) -> u64 {
        self.drops.get(slot as usize).copied().unwrap_or(0)
    }

    fn get(&self, slot: u32) -> Option<RouteState> {
        self.live.get(slot as usize).copied().flatten()
    }

    fn set(&mut self, slot: u32, state: Option<RouteState>) {
        let slot = slot as usize;
        if self.live.len() <= slot {
            self.live.resize(slot + 1, None);
        }
        if let Some(entry) = self.live.get_mut(slot) {
            // A route parked now (new, or activated before) has dropped nothing yet.
            if state == Some(RouteState::Parked)
                && *entry != Some(RouteState::Parked)
                && let Some(drops) = self.drops.get_mut(slot)
            {
                *drops = 0;
            }
            match (entry.is_some(), state.is_some()) {
                (false, true) => self.live_count += 1,
                (true, false) => self.live_count -= 1,
                _ => {}
            }
            *entry = state;
        }
    }

    fn raise(&mut self, slot: u32) {
        match self.get(slot) {
            Some(RouteState::Live(dest)) => {
                self.delivered += 1;
                if self.deliveries.len() == DELIVERY_LOG {
                    self.deliveries.pop_front();
                }
                self.deliveries.push_back(dest);
            }
            Some(RouteState::Parked) => {
                self.dropped += 1;
                let at = slot as usize;
                if self.drops.len() <= at {
                    self.drops.resize(at + 1, 0);
                }
                if let Some(drops) = self.drops.get_mut(at) {
                    *drops += 1;
                }
            }
            None => self.stale += 1,
        }
    }
}

fn lock(book: &Mutex<RouteBook>) -> MutexGuard<'_, RouteBook> {
    book.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The signal of one route id of a [`MemoryRoutes`].
#[derive(Debug)]
struct MemorySignal {
    slot: u32,
    book: Arc<Mutex<RouteBook>>,
}

impl Signal for MemorySignal {
    fn raise(&self) -> io::Result<()> {
        lock(&self.book).raise(self.slot);
        Ok(())
    }

    fn eventfd(&self) -> Option<RawFd> {
        None
    }
}

/// A staged change.
#[derive(Clone, Copy, Debug)]
enum Staged {
    Add(u32, Option<GuestDest>),
    Update(u32, Option<GuestDest>),
    Remove(u32),
    /// An `Add` of this batch taken back.
    Unadd(u32),
}

/// The shipped in-memory route table.
#[derive(Debug)]
pub struct MemoryRoutes {
    first_id: u32,
    /// Slots neither live nor added by the open batch.
    ids: IndexBitmap,
    book: Arc<Mutex<RouteBook>>,
    signals: Vec<Option<Trigger>>,
    staged: Vec<Staged>,
    /// Slots the open batch added (and did not take back): O(1) lookups for a batch of
    /// thousands of changes.
    added: Vec<bool>,
    commits: u64,
}

impl MemoryRoutes {
    /// KVM's limits: ids 24..4096 (4,072 routes).
    pub fn kvm_like() -> Self {
        Self::build(24, 4096 - 24)
    }

    /// Route ids `first_id..first_id + count`.
    pub fn with_range(first_id: u32, count: u32) -> Result<Self, HostError> {
        if first_id.checked_add(count).is_none() {
            return Err(ConfigError::RouteIdRange {
                first: first_id,
                count,
            }
            .into());
        }
        Ok(Self::build(first_id, count))
    }

    fn build(first_id: u32, count: u32) -> Self {
        MemoryRoutes {
            first_id,
            ids: IndexBitmap::singles(count),
            book: Arc::default(),
            signals: Vec::new(),
            staged: Vec::new(),
            added: Vec::new(),
            commits: 0,
        }
    }

    /// The book of live routes and deliveries, readable after the table was handed to a VM.
    pub fn book(&self) -> Arc<Mutex<RouteBook>> {
        Arc::clone(&self.book)
    }

    /// Commits made so far.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    fn slot(&self, id: RouteId) -> Option<u32> {
        let slot = id.checked_sub(self.first_id)?;
        (slot < self.ids.len()).then_some(slot)
    }

    fn added_by_batch(&self, slot: u32) -> bool {
        self.added.get(slot as usize).copied().unwrap_or(false)
    }

    fn set_added(&mut self, slot: u32, added: bool) {
        let at = slot as usize;
        if self.added.len() <= at {
            self.added.resize(at + 1, false);
        }
        if let Some(flag) = self.added.get_mut(at) {
            *flag = added;
        }
    }

    fn signal(&mut self, slot: u32) -> Trigger {
        let at = slot as usize;
        if self.signals.len() <= at {
            self.signals.resize(at + 1, None);
        }
        let book = &self.book;
        match self.signals.get_mut(at) {
            Some(entry) => Arc::clone(entry.get_or_insert_with(|| {
                Arc::new(MemorySignal {
                    slot,
                    book: Arc::clone(book),
                })
            })),
            // Not reachable: the vector was just grown past `at`.
            None => Arc::new(MemorySignal {
                slot,
                book: Arc::clone(book),
            }),
        }
    }
}

impl GuestRoutes for MemoryRoutes {
    fn available(&self) -> u32 {
        self.ids.free_count()
    }

    fn stage_add(&mut self, dest: Option<GuestDest>) -> Result<StagedRoute, RouteError> {
        let slot = self.ids.first_free().ok_or(RouteError::Exhausted)?;
        self.ids.take(slot);
        self.set_added(slot, true);
        self.staged.push(Staged::Add(slot, dest));
        Ok(StagedRoute {
            id: self.first_id + slot,
            trigger: self.signal(slot),
        })
    }

    fn stage_update(&mut self, id: RouteId, dest: Option<GuestDest>) -> Result<(), RouteError> {
        let slot = self.slot(id).ok_or(RouteError::NoSuchRoute(id))?;
        if lock(&self.book).get(slot).is_none() && !self.added_by_batch(slot) {
            return Err(RouteError::NoSuchRoute(id));
        }
        self.staged.push(Staged::Update(slot, dest));
        Ok(())
    }

    fn stage_remove(&mut self, id: RouteId) -> Result<(), RouteError> {
        let slot = self.slot(id).ok_or(RouteError::NoSuchRoute(id))?;
        if self.added_by_batch(slot) {
            self.ids.put(slot);
            self.set_added(slot, false);
            self.staged.push(Staged::Unadd(slot));
            return Ok(());
        }
        if lock(&self.book).get(slot).is_none() {
            return Err(RouteError::NoSuchRoute(id));
        }
        self.staged.push(Staged::Remove(slot));
        Ok(())
    }

    fn commit(&mut self) -> Result<(), RouteError> {
        let mut book = lock(&self.book);
        // `drain` keeps the list's capacity: a commit per request must not allocate.
        for change in self.staged.drain(..) {
            match change {
                Staged::Add(slot, dest) => {
                    if let Some(flag) = self.added.get_mut(slot as usize) {
                        *flag = false;
                    }
                    book.set(slot, Some(RouteState::of(dest)));
                }
                Staged::Update(slot, dest) => book.set(slot, Some(RouteState::of(dest))),
                Staged::Remove(slot) => {
                    book.set(slot, None);
                    self.ids.put(slot);
                }
                Staged::Unadd(slot) => book.set(slot, None),
            }
        }
        self.commits += 1;
        Ok(())
    }

    fn abort(&mut self) {
        let mut staged = std::mem::take(&mut self.staged);
        for change in staged.drain(..) {
            // An add still flagged was not taken back: its id goes back now.
            if let Staged::Add(slot, _) = change
                && self.added_by_batch(slot)
            {
                self.ids.put(slot);
                self.set_added(slot, false);
            }
        }
        self.staged = staged;
    }

    fn route(&self, id: RouteId) -> Option<RouteState> {
        lock(&self.book).get(self.slot(id)?)
    }

    fn live(&self) -> u32 {
        lock(&self.book).live_count
    }

    fn drops(&self, id: RouteId) -> u64 {
        match self.slot(id) {
            Some(slot) => lock(&self.book).drops_of(slot),
            None => 0,
        }
    }

    fn clear(&mut self) {
        self.abort();
        let mut book = lock(&self.book);
        for slot in 0..book.live.len() as u32 {
            if book.get(slot).is_some() {
                book.set(slot, None);
                self.ids.put(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: GuestDest = GuestDest {
        apic_id: 0,
        vector: 0x30,
    };
    const E: GuestDest = GuestDest {
        apic_id: 1,
        vector: 0x31,
    };

    #[test]
    fn staged_changes_are_invisible_until_commit() {
        let mut r = MemoryRoutes::with_range(24, 8).unwrap();
        let a = r.stage_add(Some(D)).unwrap().id;
        assert_eq!(a, 24);
        assert_eq!(r.route(a), None);
        assert_eq!(r.available(), 7);
        r.commit().unwrap();
        assert_eq!(r.route(a), Some(RouteState::Live(D)));
        r.stage_update(a, Some(E)).unwrap();
        assert_eq!(r.route(a), Some(RouteState::Live(D)));
        r.commit().unwrap();
        assert_eq!(r.route(a), Some(RouteState::Live(E)));
        r.stage_remove(a).unwrap();
        // A removal frees its id only when committed.
        assert_eq!(r.available(), 7);
        r.commit().unwrap();
        assert_eq!(r.route(a), None);
        assert_eq!(r.available(), 8);
        assert_eq!(r.commits(), 3);
    }

    #[test]
    fn abort_undoes_the_whole_batch_and_unadd_takes_back_one_route() {
        let mut r = MemoryRoutes::with_range(0, 3).unwrap();
        let a = r.stage_add(Some(D)).unwrap().id;
        r.commit().unwrap();
        let b = r.stage_add(Some(E)).unwrap().id;
        let c = r.stage_add(None).unwrap().id;
        r.stage_remove(b).unwrap();
        assert_eq!(r.available(), 1, "an unadded id is free again at once");
        r.stage_update(a, Some(E)).unwrap();
        r.abort();
        assert_eq!(r.route(a), Some(RouteState::Live(D)));
        assert_eq!((r.route(b), r.route(c)), (None, None));
        assert_eq!((r.live(), r.available()), (1, 2));
        assert!(matches!(
            r.stage_remove(99),
            Err(RouteError::NoSuchRoute(99))
        ));
        // Unadd then commit: only the route kept becomes live.
        let b = r.stage_add(Some(E)).unwrap().id;
        let c = r.stage_add(None).unwrap().id;
        r.stage_remove(b).unwrap();
        r.commit().unwrap();
        assert_eq!((r.route(b), r.route(c)), (None, Some(RouteState::Parked)));
        assert_eq!((r.live(), r.available()), (2, 1));
    }

    #[test]
    fn signals_record_deliveries_drops_and_stale_raises() {
        let mut r = MemoryRoutes::with_range(0, 2).unwrap();
        let live = r.stage_add(Some(D)).unwrap();
        let parked = r.stage_add(None).unwrap();
        assert!(matches!(r.stage_add(Some(E)), Err(RouteError::Exhausted)));
        live.trigger.raise().unwrap();
        r.commit().unwrap();
        live.trigger.raise().unwrap();
        parked.trigger.raise().unwrap();
        parked.trigger.raise().unwrap();
        assert_eq!((r.drops(live.id), r.drops(parked.id)), (0, 2));
        let book = r.book();
        {
            let b = book.lock().unwrap();
            assert_eq!((b.delivered(), b.dropped(), b.stale()), (1, 2, 1));
            assert_eq!(b.deliveries().collect::<Vec<_>>(), [D]);
        }
        r.clear();
        assert_eq!((r.live(), r.available()), (0, 2));
        live.trigger.raise().unwrap();
        assert_eq!(book.lock().unwrap().stale(), 2);
        // The same id gets the same signal again: no allocation per route in steady state.
        let again = r.stage_add(Some(D)).unwrap();
        assert!(Arc::ptr_eq(&again.trigger, &live.trigger));
        // A new route in a slot starts with no drops.
        let reparked = r.stage_add(None).unwrap();
        assert_eq!(reparked.id, parked.id);
        r.commit().unwrap();
        assert_eq!(r.drops(reparked.id), 0);
        reparked.trigger.raise().unwrap();
        assert_eq!(r.drops(reparked.id), 1);
        // Activated, the count stays; parked again, it starts over.
        r.stage_update(reparked.id, Some(E)).unwrap();
        r.commit().unwrap();
        assert_eq!(r.drops(reparked.id), 1);
        r.stage_update(reparked.id, None).unwrap();
        r.commit().unwrap();
        assert_eq!(r.drops(reparked.id), 0);
        assert_eq!(MemoryRoutes::kvm_like().available(), 4072);
        assert_eq!(live.trigger.eventfd(), None);
    }
}
