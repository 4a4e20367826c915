//! Guest routes: "make this host interrupt arrive in the guest at (APIC ID, vector)".
//!
//! One [`GuestRoutes`] per VM. Changes are staged and made live together by one
//! [`GuestRoutes::commit`] per request, because KVM's `KVM_SET_GSI_ROUTING` replaces the
//! whole table: a request of 32 vectors pays it once, not 32 times. Staging a route yields
//! the [`Trigger`] its host interrupt must signal (for KVM, the GSI's irqfd), which the core
//! hands to the interrupt backend before anything is committed.
//!
//! Shipped: [`MemoryRoutes`] (records deliveries, for the modelled host, tests and fuzzing)
//! and [`crate::kvm::KvmRoutes`] (real KVM, over the VMM's routing table).

mod batch;
mod memory;

pub(crate) use batch::RouteBatch;
pub use memory::{MemoryRoutes, RouteBook};

use crate::backend::{GuestDest, Trigger};

/// A route's identity within its VM (for KVM: the GSI).
pub type RouteId = u32;

/// A route staged by [`GuestRoutes::stage_add`]: its id and what its interrupt signals.
#[derive(Clone, Debug)]
pub struct StagedRoute {
    /// The route.
    pub id: RouteId,
    /// What the host interrupt backing it must signal.
    pub trigger: Trigger,
}

/// Where a live route delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteState {
    /// Delivers to this destination.
    Live(GuestDest),
    /// Exists with no destination (a parked grant): interrupts to it are dropped.
    Parked,
}

impl RouteState {
    /// The destination, if the route has one.
    pub fn dest(self) -> Option<GuestDest> {
        match self {
            RouteState::Live(dest) => Some(dest),
            RouteState::Parked => None,
        }
    }

    /// The state a route with destination `dest` (or none) has.
    pub fn of(dest: Option<GuestDest>) -> Self {
        dest.map_or(RouteState::Parked, RouteState::Live)
    }
}

/// Why a route operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No route can be added: the VM's routes are used up.
    #[error("no guest route left")]
    Exhausted,
    /// The route does not exist (or is not this layer's).
    #[error("route {0} does not exist")]
    NoSuchRoute(RouteId),
    /// The hypervisor refused the change; nothing staged is live. Its kind (and raw errno,
    /// where it gave one) is the hypervisor's answer; the error inside is the layer's own
    /// (for KVM, a [`crate::kvm::KvmRouteError`]), which `io::Error::get_ref` reaches.
    #[error(transparent)]
    Hypervisor(std::io::Error),
    /// A test layer was told to fail.
    #[error("injected route failure")]
    Injected,
}

/// A VM's guest-delivery routes, with staged changes and one commit per request.
///
/// The core holds the VM's lock across a whole batch, so at most one batch is open.
pub trait GuestRoutes: Send {
    /// New routes that can still be staged now.
    fn available(&self) -> u32;
    /// Stages a new route delivering to `dest` (`None`: parked); live only after commit.
    fn stage_add(&mut self, dest: Option<GuestDest>) -> Result<StagedRoute, RouteError>;
    /// Stages a new destination for a live route.
    fn stage_update(&mut self, id: RouteId, dest: Option<GuestDest>) -> Result<(), RouteError>;
    /// Stages the removal of a live route, or takes back a route the open batch added.
    fn stage_remove(&mut self, id: RouteId) -> Result<(), RouteError>;
    /// Makes every staged change live at once. On error nothing staged is live and the
    /// batch is discarded as by [`GuestRoutes::abort`].
    fn commit(&mut self) -> Result<(), RouteError>;
    /// Discards every staged change.
    fn abort(&mut self);
    /// The live state of `id`.
    fn route(&self, id: RouteId) -> Option<RouteState>;
    /// Number of live routes.
    fn live(&self) -> u32;
    /// Interrupts route `id` dropped since it was last parked (spec §3.5: QUERY's
    /// `parked_drops` sums them over the grants parked now). Advisory: 0 where the layer
    /// cannot see drops (KVM drops an interrupt to a route with no destination inside the
    /// hypervisor).
    fn drops(&self, _id: RouteId) -> u64 {
        0
    }
    /// Drops every route, staged or live, and cannot fail: what a device reset does when a
    /// commit was refused. A layer whose hypervisor refused the removal keeps trying on
    /// its next commit; the backends no longer signal the routes' triggers meanwhile.
    fn clear(&mut self);
}
