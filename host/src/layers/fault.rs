//! Fault injection: wrappers that make the Nth reservation (or commit) of any wrapped layer
//! fail, so tests can check rollback at every layer boundary.
//!
//! One [`FaultPlan`] is shared by all wrapped layers; it counts every reserving call
//! (IRTE alloc/program, vector alloc, route stage/commit) across them, in call order, and
//! logs which call each was ([`LayerCall`]) so a test can tell what its Nth fault hit.

use super::remap::{Irte, IrteDest, RemapFault, RemapLayer};
use super::routes::{GuestDest, RouteId, RouteLayer};
use super::vectors::{HostVector, VectorLayer};
use crate::error::LayerError;
use pvirq_proto::{MsiMessage, Resource};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A reserving call a wrapped layer made, as the plan counts and logs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerCall {
    /// `RemapLayer::alloc` (one IRTE).
    IrteAlloc,
    /// `RemapLayer::alloc_block` (an aligned IRTE block, for MSI).
    IrteBlock,
    /// `RemapLayer::program`.
    IrteProgram,
    /// `VectorLayer::alloc`.
    VectorAlloc,
    /// `RouteLayer::stage_add`.
    RouteAdd,
    /// `RouteLayer::stage_update`.
    RouteUpdate,
    /// `RouteLayer::stage_remove`.
    RouteRemove,
    /// `RouteLayer::commit`.
    RouteCommit,
}

impl LayerCall {
    /// The resource the layer making this call stands for.
    pub fn resource(self) -> Resource {
        match self {
            LayerCall::IrteAlloc | LayerCall::IrteBlock | LayerCall::IrteProgram => Resource::Irte,
            LayerCall::VectorAlloc => Resource::HostVector,
            _ => Resource::GuestRoute,
        }
    }

    /// Whether a shortage at this call is a shortage of the resource (an allocation), as
    /// opposed to a layer failing to carry out an operation on what it already holds.
    pub fn allocates(self) -> bool {
        matches!(
            self,
            LayerCall::IrteAlloc
                | LayerCall::IrteBlock
                | LayerCall::VectorAlloc
                | LayerCall::RouteAdd
        )
    }
}

/// How an injected fault presents itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// As [`LayerError::Exhausted`]: the layer ran out.
    Exhausted,
    /// As [`LayerError::Failed`]: the layer failed internally.
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

    fn tick(&self, call: LayerCall) -> Result<(), LayerError> {
        self.log_mut().push(call);
        let resource = call.resource();
        if self.0.commits_only.load(Ordering::SeqCst) && call != LayerCall::RouteCommit {
            return Ok(());
        }
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n != self.0.fail_at.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.0.failed.fetch_add(1, Ordering::SeqCst);
        if self.0.exhausted.load(Ordering::SeqCst) {
            Err(LayerError::Exhausted(resource))
        } else {
            Err(LayerError::Failed {
                resource,
                reason: format!("injected fault at call {n}"),
            })
        }
    }
}

/// A layer whose reserving calls consult a [`FaultPlan`] first.
#[derive(Debug)]
pub struct Faulty<L> {
    inner: L,
    plan: FaultPlan,
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

impl<L: RemapLayer> RemapLayer for Faulty<L> {
    fn units(&self) -> u16 {
        self.inner.units()
    }
    fn capacity(&self, unit: u16) -> u32 {
        self.inner.capacity(unit)
    }
    fn free_entries(&self, unit: u16) -> u32 {
        self.inner.free_entries(unit)
    }
    fn largest_block(&self, unit: u16, cap: u32) -> u32 {
        self.inner.largest_block(unit, cap)
    }
    fn alloc(&mut self, unit: u16, source_id: u16) -> Result<u16, LayerError> {
        self.plan.tick(LayerCall::IrteAlloc)?;
        self.inner.alloc(unit, source_id)
    }
    fn alloc_block(&mut self, unit: u16, count: u32, source_id: u16) -> Result<u16, LayerError> {
        self.plan.tick(LayerCall::IrteBlock)?;
        self.inner.alloc_block(unit, count, source_id)
    }
    fn program(&mut self, unit: u16, index: u16, dest: IrteDest) -> Result<(), LayerError> {
        self.plan.tick(LayerCall::IrteProgram)?;
        self.inner.program(unit, index, dest)
    }
    fn free(&mut self, unit: u16, index: u16) {
        self.inner.free(unit, index)
    }
    fn entry(&self, unit: u16, index: u16) -> Option<Irte> {
        self.inner.entry(unit, index)
    }
    fn deliver(
        &self,
        unit: u16,
        source_id: u16,
        message: MsiMessage,
    ) -> Result<IrteDest, RemapFault> {
        self.inner.deliver(unit, source_id, message)
    }
}

impl<L: VectorLayer> VectorLayer for Faulty<L> {
    fn cpus(&self) -> u32 {
        self.inner.cpus()
    }
    fn available(&self) -> u32 {
        self.inner.available()
    }
    fn allocated(&self) -> u32 {
        self.inner.allocated()
    }
    fn alloc(&mut self) -> Result<HostVector, LayerError> {
        self.plan.tick(LayerCall::VectorAlloc)?;
        self.inner.alloc()
    }
    fn free(&mut self, vector: HostVector) {
        self.inner.free(vector)
    }
    fn is_allocated(&self, vector: HostVector) -> bool {
        self.inner.is_allocated(vector)
    }
}

impl<L: RouteLayer> RouteLayer for Faulty<L> {
    fn available(&self) -> u32 {
        self.inner.available()
    }
    fn stage_add(&mut self, dest: GuestDest) -> Result<RouteId, LayerError> {
        self.plan.tick(LayerCall::RouteAdd)?;
        self.inner.stage_add(dest)
    }
    fn stage_update(&mut self, id: RouteId, dest: GuestDest) -> Result<(), LayerError> {
        self.plan.tick(LayerCall::RouteUpdate)?;
        self.inner.stage_update(id, dest)
    }
    fn stage_remove(&mut self, id: RouteId) -> Result<(), LayerError> {
        self.plan.tick(LayerCall::RouteRemove)?;
        self.inner.stage_remove(id)
    }
    fn commit(&mut self) -> Result<(), LayerError> {
        if let Err(e) = self.plan.tick(LayerCall::RouteCommit) {
            // A failed commit discards the batch, as the trait promises.
            self.inner.abort();
            return Err(e);
        }
        self.inner.commit()
    }
    fn abort(&mut self) {
        self.inner.abort()
    }
    fn route(&self, id: RouteId) -> Option<GuestDest> {
        self.inner.route(id)
    }
    fn live(&self) -> u32 {
        self.inner.live()
    }
    fn fire(&mut self, id: RouteId) -> Result<(), LayerError> {
        self.inner.fire(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::vectors::{VectorConfig, VectorMatrix};

    #[test]
    fn only_the_nth_call_fails() {
        let plan = FaultPlan::new();
        let mut v = Faulty::new(
            VectorMatrix::new(&VectorConfig::default()).unwrap(),
            plan.clone(),
        );
        plan.fail_nth(2, FaultKind::Exhausted);
        assert!(v.alloc().is_ok());
        assert_eq!(v.alloc(), Err(LayerError::Exhausted(Resource::HostVector)));
        assert!(v.alloc().is_ok());
        assert_eq!(plan.calls(), 3);
        assert_eq!(plan.injected(), 1);
        assert_eq!(v.allocated(), 2);
    }
}
