//! What a scenario run produced, and its two renderings: a readable table ([`render`])
//! and JSON ([`Report::to_json`]). Running lives in [`crate::run`]; this module only
//! holds and formats the results.

mod details;
mod records;
mod text;

use pvirq_host::model::{HostOccupancy, ModelViolation};
use serde::{Serialize, Serializer};

pub use details::runs;
pub use records::{
    DestinationReport, EventRecord, FateRecord, GrantRecord, MigrationRecord, QueryRecord,
};
pub use text::render;

/// Host occupancy at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostSnapshot {
    /// IRTEs in use, per IOMMU unit.
    pub irtes_used: Vec<u32>,
    /// IRTE table size, per unit.
    pub irtes_capacity: Vec<u32>,
    /// Free IRTEs over all units.
    pub irtes_free: u32,
    /// Host vectors in use.
    pub vectors_used: u32,
    /// Host vectors free.
    pub vectors_free: u32,
}

impl HostSnapshot {
    /// The snapshot of `occupancy`.
    pub fn of(occupancy: &HostOccupancy) -> Self {
        HostSnapshot {
            irtes_used: occupancy.units.iter().map(|u| u.used).collect(),
            irtes_capacity: occupancy.units.iter().map(|u| u.capacity).collect(),
            irtes_free: occupancy
                .units
                .iter()
                .map(|u| u.capacity.saturating_sub(u.used))
                .sum(),
            vectors_used: occupancy.vectors_used,
            vectors_free: occupancy.vectors_free,
        }
    }

    /// Compact text: `irte 40/48 12/48, vectors 52/52` style (used/capacity).
    pub fn usage(&self) -> String {
        let units: Vec<String> = self
            .irtes_used
            .iter()
            .zip(&self.irtes_capacity)
            .map(|(u, c)| format!("{u}/{c}"))
            .collect();
        format!(
            "IRTEs {} · vectors {}/{}",
            units.join(" "),
            self.vectors_used,
            self.vectors_used + self.vectors_free
        )
    }
}

/// A refusal as the guest received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefusalRecord {
    /// Status name (`no-space`, ...).
    pub status: String,
    /// The resource named (NO_SPACE, DEVICE_ERROR).
    pub resource: Option<String>,
    /// Vectors still available (NO_SPACE).
    pub available: Option<u32>,
    /// The refusal's canonical text.
    pub text: String,
}

/// Interrupts fired by a `fire` step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FireCounts {
    /// Messages the device wrote.
    pub fired: u64,
    /// Delivered into the guest.
    pub delivered: u64,
    /// Stopped by the host (remapping fault, not granted, stale route).
    pub blocked: u64,
    /// Delivered, but not to the destination the guest asked for (must stay 0).
    pub misrouted: u64,
    /// Interrupts the backend saw arrive in the guest, where it can observe them.
    pub observed: Option<u64>,
}

/// One checked expectation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The `expect` field.
    pub field: String,
    /// What the scenario expects.
    pub expected: String,
    /// What happened.
    pub actual: String,
    /// Whether they agree.
    pub met: bool,
}

/// One step's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    /// 1-based step number.
    pub step: usize,
    /// Line of its `[[step]]` header.
    pub line: usize,
    /// The op.
    pub op: String,
    /// The VM.
    pub vm: String,
    /// The device, if the op names one.
    pub device: Option<String>,
    /// What was asked, in short.
    pub request: String,
    /// Final status (`ok`, `no-space`, ...).
    pub status: String,
    /// The answer, in short (`granted 4 @0..3`, `freed 2`...).
    pub answer: String,
    /// The refusal that answered the step, or that the fallback answered.
    pub refusal: Option<RefusalRecord>,
    /// Whether the fallback policy retried.
    pub fallback: bool,
    /// Requests sent for this step (more than 1 with fallback).
    pub attempts: u32,
    /// Vectors granted / freed / moved / held (see `expect.granted`).
    pub count: Option<u32>,
    /// QUERY's `available`.
    pub available: Option<u32>,
    /// The VM's quota left after the step.
    pub quota_left: u32,
    /// Vectors the VM holds after the step.
    pub vm_held: u32,
    /// The VM's quota after the step.
    pub vm_quota: u32,
    /// The host the VM is on after the step (`host`, or a destination's name).
    pub host_name: String,
    /// Occupancy of that host after the step.
    pub host: HostSnapshot,
    /// The grants an ALLOC gave (with `INFO`: their mode and whether parked).
    pub grants: Vec<GrantRecord>,
    /// What QUERY with `INFO` said of the device.
    pub query: Option<QueryRecord>,
    /// The events an `events` step handled, in order.
    pub events: Vec<EventRecord>,
    /// A `migrate` step's outcome.
    pub migration: Option<MigrationRecord>,
    /// Fire counts (fire steps).
    pub fire: Option<FireCounts>,
    /// The scenario's note.
    pub note: Option<String>,
    /// Expectations checked on this step.
    pub checks: Vec<Check>,
}

/// One VM at the end of the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmSummary {
    /// Its name.
    pub name: String,
    /// Its vCPUs.
    pub vcpus: u32,
    /// Its vCPUs' APIC IDs, when not `0..vcpus`.
    pub apic_ids: Option<Vec<u32>>,
    /// The extension bits its driver negotiated, by name (none: a version-1 driver).
    pub features: Vec<String>,
    /// The host it is on at the end (`host`, or a destination's name).
    pub host: String,
    /// Vectors held.
    pub held: u32,
    /// Its quota at the end.
    pub quota: u32,
    /// `(device, vectors held)`.
    pub devices: Vec<(String, u32)>,
}

/// The whole run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Scenario description.
    pub description: Option<String>,
    /// Delivery backend (`memory`, `kvm`).
    pub backend: String,
    /// Host occupancy before the first step.
    pub initial_host: HostSnapshot,
    /// Every step.
    pub steps: Vec<StepRecord>,
    /// Host occupancy at the end.
    pub final_host: HostSnapshot,
    /// The hosts VMs may migrate to.
    pub destinations: Vec<DestinationReport>,
    /// Every VM at the end.
    pub vms: Vec<VmSummary>,
    /// Fire counts over all fire steps.
    pub fire_totals: FireCounts,
    /// Faults the hosts recorded (blocked interrupts), the destinations' included.
    pub host_faults: u64,
    /// Host invariant violations at the end, the destinations' included (must be empty);
    /// JSON gives each one's message.
    #[serde(serialize_with = "messages")]
    pub invariant_violations: Vec<ModelViolation>,
    /// Expectations checked.
    pub expectations_checked: usize,
    /// Expectations not met.
    pub expectations_failed: usize,
}

/// Each violation as its message: the JSON report is for reading, not for parsing back.
fn messages<S: Serializer>(violations: &[ModelViolation], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(violations.iter().map(ToString::to_string))
}

impl Report {
    /// Every expectation met and every host invariant holds.
    pub fn passed(&self) -> bool {
        self.expectations_failed == 0 && self.invariant_violations.is_empty()
    }

    /// The checks that failed, with their step.
    pub fn failures(&self) -> impl Iterator<Item = (&StepRecord, &Check)> {
        self.steps
            .iter()
            .flat_map(|s| s.checks.iter().filter(|c| !c.met).map(move |c| (s, c)))
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\": \"JSON encoding failed: {e}\"}}"))
    }
}
