//! Scenarios: a host, its VMs and the steps their guests take, read from TOML.
//!
//! The format is documented in `sim/scenarios/README.md`; [`DEFAULT`] is the scenario
//! `cargo run --release` runs. [`parse`] reads and validates a file; every error names
//! the file, line, table and field ([`ScenarioError`]).

mod error;
mod locate;
mod model;
mod parse;
mod raw;

pub use error::{Position, ScenarioError};
pub use model::{
    Action, AllocStep, Dest, DeviceDecl, Expect, Fallback, HostDecl, Scenario, Step, VmDecl,
};
pub use parse::parse;

/// The default scenario's text (`sim/scenarios/default.toml`).
pub const DEFAULT: &str = include_str!("../../scenarios/default.toml");

/// The default scenario, parsed.
pub fn default_scenario() -> Result<Scenario, ScenarioError> {
    parse(DEFAULT, "<default>")
}
