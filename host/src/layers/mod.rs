//! The host resources a grant consumes, each behind a trait so a VMM can plug in its own,
//! with the implementation we ship.
//!
//! - [`remap`]: interrupt-remapping units (IRTEs), and the delivery check they enforce;
//! - [`vectors`]: host CPU vectors;
//! - [`routes`]: guest delivery routes (per VM), committed once per request;
//! - [`fault`]: fault-injection wrappers for tests;
//! - [`bitmap`]: the free-index bitmap the IRTE tables and device tables use.

pub mod bitmap;
pub mod fault;
pub mod remap;
pub mod routes;
pub mod vectors;

pub use bitmap::IndexBitmap;
pub use fault::{FaultKind, FaultPlan, Faulty, LayerCall};
pub use remap::{Irte, IrteDest, RemapConfig, RemapFault, RemapLayer, RemapUnits};
pub use routes::{GuestDest, MemoryRoutes, RouteId, RouteLayer};
pub use vectors::{HostVector, VectorConfig, VectorLayer, VectorMatrix};
