//! Scenarios: a host (and the hosts VMs may migrate to), its VMs and the steps their
//! guests and the VMM take, read from TOML.
//!
//! The format is documented in `sim/scenarios/README.md`; [`DEFAULT`] is the scenario
//! `cargo run --release` runs. [`parse`] reads and validates a file; every error names
//! the file, line, table and field ([`ScenarioError`]).

mod error;
mod expect;
mod locate;
mod model;
mod parse;
mod parse_expect;
mod parse_request;
mod parse_step;
mod raw;
mod step;

pub use error::{Position, ScenarioError};
pub use expect::{Expect, Fates};
pub use model::{DestinationDecl, DeviceDecl, HostDecl, Scenario, TenantDecl, VmDecl};
pub use parse::{bdf_text, feature_names, parse};
pub use step::{Action, AllocStep, Dest, Fallback, IndexSel, Step};

/// The default scenario's text (`sim/scenarios/default.toml`).
pub const DEFAULT: &str = include_str!("../../scenarios/default.toml");

/// The default scenario, parsed.
pub fn default_scenario() -> Result<Scenario, ScenarioError> {
    parse(DEFAULT, "<default>")
}
