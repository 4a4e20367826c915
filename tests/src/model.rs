//! A reference model of the host's allocation semantics, and a runner that plays the same
//! operations against a real [`Host`] and the model and compares every answer.
//!
//! The model is deliberately naive: flat vectors of booleans for IRTE tables, ordered maps
//! for device tables, a counter for host vectors, and the rules of spec §4–§6 written out
//! in the order of §5.3. It shares no code with `pvirq-host`. The host's documented
//! choices that the spec leaves open are modelled as such:
//! - ANY_INDEX takes the lowest free indices; an IRTE is the lowest free entry of its unit;
//!   an MSI block takes the lowest naturally aligned free IRTE block;
//! - a FREE of an MSI block that is not the whole block names `first_index` (or the block
//!   size, when the run is longer than the block);
//! - QUERY's `available` is the largest count an ANY_INDEX ALLOC of `max_batch` vectors of
//!   any negotiated kind would get.
//!
//! The runner ([`run`]) checks after every step: the answer (outcome, grants with their
//! messages, refusal with its reason and info), each VM's occupancy and grant records
//! (kind, index, IRTE), the host's occupancy, and [`Host::check_invariants`]. At the end it
//! resets every device and checks that the host holds nothing.

mod reference;
mod runner;
mod scenario;

pub use reference::Model;
pub use runner::{RunStats, run};
pub use scenario::{Answer, HostShape, Scenario, Step, VmShape};
