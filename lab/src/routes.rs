//! Guest routes whose triggers are eventfds, for the lab guest (which has no KVM): the
//! in-memory route table, with one eventfd per route id made at setup, as a VMM registers
//! an irqfd per GSI at VM setup. The eventfd is what VFIO signals and what KVM would read.

use pvirq_host::backend::GuestDest;
use pvirq_host::routes::{GuestRoutes, MemoryRoutes, RouteError, RouteId, RouteState, StagedRoute};
use std::collections::BTreeMap;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// The first route id of [`MemoryRoutes::kvm_like`].
const FIRST_ID: RouteId = 24;

/// [`MemoryRoutes`] with eventfd triggers.
pub struct EventfdRoutes {
    inner: MemoryRoutes,
    fds: Arc<BTreeMap<RouteId, Arc<EventFd>>>,
}

impl EventfdRoutes {
    /// Routes with ids from 24, and an eventfd for each of the first `count`.
    pub fn new(count: u32) -> std::io::Result<Self> {
        let mut fds = BTreeMap::new();
        for id in FIRST_ID..FIRST_ID + count {
            fds.insert(id, Arc::new(EventFd::new(libc::EFD_NONBLOCK)?));
        }
        Ok(EventfdRoutes {
            inner: MemoryRoutes::kvm_like(),
            fds: Arc::new(fds),
        })
    }

    /// The eventfds by route id, readable after the table was handed to a VM.
    pub fn eventfds(&self) -> Arc<BTreeMap<RouteId, Arc<EventFd>>> {
        Arc::clone(&self.fds)
    }
}

impl GuestRoutes for EventfdRoutes {
    fn available(&self) -> u32 {
        self.inner
            .available()
            .min(u32::try_from(self.fds.len()).unwrap_or(u32::MAX))
    }

    fn stage_add(&mut self, dest: Option<GuestDest>) -> Result<StagedRoute, RouteError> {
        let staged = self.inner.stage_add(dest)?;
        match self.fds.get(&staged.id) {
            Some(fd) => Ok(StagedRoute {
                id: staged.id,
                trigger: fd.clone(),
            }),
            None => {
                let _ = self.inner.stage_remove(staged.id);
                Err(RouteError::Exhausted)
            }
        }
    }

    fn stage_update(&mut self, id: RouteId, dest: Option<GuestDest>) -> Result<(), RouteError> {
        self.inner.stage_update(id, dest)
    }

    fn stage_remove(&mut self, id: RouteId) -> Result<(), RouteError> {
        self.inner.stage_remove(id)
    }

    fn commit(&mut self) -> Result<(), RouteError> {
        self.inner.commit()
    }

    fn abort(&mut self) {
        self.inner.abort();
    }

    fn route(&self, id: RouteId) -> Option<RouteState> {
        self.inner.route(id)
    }

    fn live(&self) -> u32 {
        self.inner.live()
    }

    fn clear(&mut self) {
        self.inner.clear();
    }
}
