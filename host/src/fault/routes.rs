//! [`Faulty`] over a route layer: its Nth stage or commit fails; a failed commit discards
//! the batch, as [`GuestRoutes::commit`] promises.

use super::{FaultKind, Faulty, LayerCall};
use crate::backend::GuestDest;
use crate::routes::{GuestRoutes, RouteError, RouteId, RouteState, StagedRoute};

fn route_fault(kind: FaultKind) -> RouteError {
    match kind {
        FaultKind::Exhausted => RouteError::Exhausted,
        FaultKind::Failed => RouteError::Injected,
    }
}

impl<R: GuestRoutes> GuestRoutes for Faulty<R> {
    fn available(&self) -> u32 {
        self.inner.available()
    }
    fn stage_add(&mut self, dest: Option<GuestDest>) -> Result<StagedRoute, RouteError> {
        self.plan.tick(LayerCall::RouteAdd).map_err(route_fault)?;
        self.inner.stage_add(dest)
    }
    fn stage_update(&mut self, id: RouteId, dest: Option<GuestDest>) -> Result<(), RouteError> {
        self.plan
            .tick(LayerCall::RouteUpdate)
            .map_err(route_fault)?;
        self.inner.stage_update(id, dest)
    }
    fn stage_remove(&mut self, id: RouteId) -> Result<(), RouteError> {
        self.plan
            .tick(LayerCall::RouteRemove)
            .map_err(route_fault)?;
        self.inner.stage_remove(id)
    }
    fn commit(&mut self) -> Result<(), RouteError> {
        if let Err(kind) = self.plan.tick(LayerCall::RouteCommit) {
            // A failed commit discards the batch, as the trait promises.
            self.inner.abort();
            return Err(route_fault(kind));
        }
        self.inner.commit()
    }
    fn abort(&mut self) {
        self.inner.abort()
    }
    fn route(&self, id: RouteId) -> Option<RouteState> {
        self.inner.route(id)
    }
    fn live(&self) -> u32 {
        self.inner.live()
    }
    fn drops(&self, id: RouteId) -> u64 {
        self.inner.drops(id)
    }
    fn clear(&mut self) {
        self.inner.clear()
    }
}
