//! The route changes of one request, held by a value: aborted on drop unless committed.

use super::{GuestRoutes, RouteError, RouteId, StagedRoute};
use crate::backend::GuestDest;

/// Route changes staged for one request. Dropping it uncommitted aborts them, so every
/// early return of a transaction rolls its routes back without saying so.
pub(crate) struct RouteBatch<'a> {
    routes: &'a mut dyn GuestRoutes,
    staged: bool,
    open: bool,
}

impl<'a> RouteBatch<'a> {
    pub(crate) fn new(routes: &'a mut dyn GuestRoutes) -> Self {
        RouteBatch {
            routes,
            staged: false,
            open: true,
        }
    }

    pub(crate) fn add(&mut self, dest: Option<GuestDest>) -> Result<StagedRoute, RouteError> {
        self.staged = true;
        self.routes.stage_add(dest)
    }

    pub(crate) fn update(
        &mut self,
        id: RouteId,
        dest: Option<GuestDest>,
    ) -> Result<(), RouteError> {
        self.staged = true;
        self.routes.stage_update(id, dest)
    }

    /// Removes a live route, or takes back one this batch added.
    pub(crate) fn remove(&mut self, id: RouteId) -> Result<(), RouteError> {
        self.staged = true;
        self.routes.stage_remove(id)
    }

    /// One commit for the whole batch (none if nothing was staged).
    pub(crate) fn commit(mut self) -> Result<(), RouteError> {
        self.open = false;
        if !self.staged {
            return Ok(());
        }
        let result = self.routes.commit();
        if result.is_err() {
            self.routes.abort();
        }
        result
    }
}

impl Drop for RouteBatch<'_> {
    fn drop(&mut self) {
        if self.open && self.staged {
            self.routes.abort();
        }
    }
}
