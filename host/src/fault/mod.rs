//! Fault injection at the two seams (feature `test-utils`): [`Faulty`] wraps a backend
//! ([`crate::backend::InterruptBackend`]) or a route layer ([`crate::routes::GuestRoutes`])
//! and makes its Nth reserving call fail, so tests, the fuzzer and the VFIO lab can check
//! rollback at every point where the host or the hypervisor can say no.
//!
//! One [`FaultPlan`] is shared by all wrapped layers; it counts every reserving call
//! (backend enable, route stage and commit) across them, in call order, and logs which
//! call each was ([`LayerCall`]) so a test can tell what its Nth fault hit.
//!
//! This module sits above both seams, so that neither seam depends on the other.
//!
//! [`Shortfall`] wraps a backend so that it backs fewer vectors than asked (but at least
//! the minimum), as a host that ran short between sizing and reservation does.

mod backend;
mod routes;
mod shortfall;

pub use shortfall::{Shortfall, ShortfallCap};

use pvirq_proto::Resource;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A reserving call a wrapped layer made, as the plan counts and logs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerCall {
    /// `InterruptBackend::enable`.
    Enable,
    /// `GuestRoutes::stage_add`.
    RouteAdd,
    /// `GuestRoutes::stage_update`.
    RouteUpdate,
    /// `GuestRoutes::stage_remove`.
    RouteRemove,
    /// `GuestRoutes::commit`.
    RouteCommit,
}

impl LayerCall {
    /// The resource an injected shortage at this call names: the host's vectors for the
    /// backend, the guest routes for the route layer.
    pub fn resource(self) -> Resource {
        match self {
            LayerCall::Enable => Resource::HostVector,
            _ => Resource::GuestRoute,
        }
    }

    /// Whether a shortage at this call is a shortage of the resource (an allocation), as
    /// opposed to a layer failing to carry out an operation on what it already holds.
    pub fn allocates(self) -> bool {
        matches!(self, LayerCall::Enable | LayerCall::RouteAdd)
    }
}

/// How an injected fault presents itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The layer ran out ([`crate::backend::BackendError::Exhausted`],
    /// [`crate::routes::RouteError::Exhausted`]).
    Exhausted,
    /// The layer failed ([`crate::backend::BackendError::Errno`] with EIO,
    /// [`crate::routes::RouteError::Injected`]).
    Failed,
}

#[derive(Debug, Default)]
struct PlanState {
    calls: AtomicU64,
    fail_at: AtomicU64,
    failed: AtomicU64,
    exhausted: AtomicBool,
    commits_only: AtomicBool,
    /// Every reserving call since the last `fail_nth*`/`disarm`, in order.
    log: Mutex<Vec<LayerCall>>,
}

/// Which call fails. Cloning shares the plan.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan(Arc<PlanState>);

impl FaultPlan {
    /// A plan that fails nothing (but counts calls).
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails the `n`th reserving call from now (1-based); 0 disables.
    pub fn fail_nth(&self, n: u64, kind: FaultKind) {
        self.0.calls.store(0, Ordering::SeqCst);
        self.log_mut().clear();
        self.0.fail_at.store(n, Ordering::SeqCst);
        self.0
            .exhausted
            .store(kind == FaultKind::Exhausted, Ordering::SeqCst);
        self.0.commits_only.store(false, Ordering::SeqCst);
    }

    /// Fails the `n`th route commit from now (1-based), counting only commits.
    pub fn fail_nth_commit(&self, n: u64) {
        self.fail_nth(n, FaultKind::Failed);
        self.0.commits_only.store(true, Ordering::SeqCst);
    }

    /// Stops injecting and resets the call counter.
    pub fn disarm(&self) {
        self.fail_nth(0, FaultKind::Failed);
    }

    /// Calls counted since the last `fail_nth*`/`disarm`.
    pub fn calls(&self) -> u64 {
        self.0.calls.load(Ordering::SeqCst)
    }

    /// The reserving calls made since the last `fail_nth*`/`disarm`, in order (commits
    /// included even when only commits are counted).
    pub fn log(&self) -> Vec<LayerCall> {
        self.log_mut().clone()
    }

    fn log_mut(&self) -> std::sync::MutexGuard<'_, Vec<LayerCall>> {
        self.0.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.0.failed.load(Ordering::SeqCst)
    }

    /// Counts `call`; the fault to inject, if it is the one to fail.
    pub(super) fn tick(&self, call: LayerCall) -> Result<(), FaultKind> {
        self.log_mut().push(call);
        if self.0.commits_only.load(Ordering::SeqCst) && call != LayerCall::RouteCommit {
            return Ok(());
        }
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n != self.0.fail_at.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.0.failed.fetch_add(1, Ordering::SeqCst);
        if self.0.exhausted.load(Ordering::SeqCst) {
            Err(FaultKind::Exhausted)
        } else {
            Err(FaultKind::Failed)
        }
    }
}

/// A backend or route layer whose reserving calls consult a [`FaultPlan`] first.
#[derive(Debug)]
pub struct Faulty<L> {
    pub(super) inner: L,
    pub(super) plan: FaultPlan,
}

impl<L> Faulty<L> {
    /// Wraps `inner`.
    pub fn new(inner: L, plan: FaultPlan) -> Self {
        Faulty { inner, plan }
    }

    /// The wrapped layer.
    pub fn inner(&self) -> &L {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{GuestRoutes, MemoryRoutes, RouteError};

    #[test]
    fn only_the_nth_call_fails() {
        let plan = FaultPlan::new();
        let mut r = Faulty::new(MemoryRoutes::with_range(0, 8).unwrap(), plan.clone());
        plan.fail_nth(2, FaultKind::Exhausted);
        assert!(r.stage_add(None).is_ok());
        assert!(matches!(r.stage_add(None), Err(RouteError::Exhausted)));
        assert!(r.stage_add(None).is_ok());
        assert_eq!(plan.calls(), 3);
        assert_eq!(plan.injected(), 1);
        plan.fail_nth_commit(1);
        assert!(matches!(r.commit(), Err(RouteError::Injected)));
        assert_eq!(r.available(), 8, "the failed commit discarded the batch");
        assert_eq!(plan.log(), [LayerCall::RouteCommit]);
    }
}
