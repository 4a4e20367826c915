//! The parts of a step's record the protocol's extensions add: the grants an ALLOC gave
//! (mode, parked, target), a QUERY's identity and format, the events the guest handled,
//! and a migration's fates; and the destination hosts.

use super::HostSnapshot;
use serde::Serialize;

/// One grant as the guest received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrantRecord {
    /// Table index.
    pub index: u32,
    /// `remapped` or `posted`.
    pub mode: String,
    /// Whether it has no target yet.
    pub parked: bool,
    /// The PASID it was made for, as reported.
    pub pasid: Option<u32>,
    /// Where it goes: the vCPU index (`None`: parked, or a target naming no vCPU of the VM).
    pub vcpu: Option<u32>,
    /// The APIC ID it goes to (`None`: parked).
    pub apic_id: Option<u32>,
    /// The guest vector (`None`: parked).
    pub vector: Option<u8>,
    /// The message address.
    pub address: u64,
    /// The message data.
    pub data: u32,
}

/// What QUERY with `INFO` said of the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueryRecord {
    /// The PCI function the guest sees, `SSSS:BB:DD.F`.
    pub bdf: String,
    /// The requester ID of the guest's view.
    pub requester_id: u16,
    /// The interface PASID of a scalable device's assignable interface.
    pub interface_pasid: Option<u32>,
    /// The message format (`vtd-remappable`, `amd-remapped`, `vmm-trapped`).
    pub format: String,
    /// Whether the host can post its grants.
    pub can_post: bool,
    /// The most vectors it may hold.
    pub share: u32,
    /// Longest run of free MSI-X entries.
    pub msix_free_run: u16,
    /// Longest run of free IMS slots.
    pub ims_free_run: u32,
    /// Interrupts dropped for its parked grants.
    pub parked_drops: u32,
}

/// One event the guest handled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// Its sequence number.
    pub sequence: u32,
    /// Its type (`reprogram`, `revoke`, `limits`, `available`, `device-added`,
    /// `device-removed`).
    #[serde(rename = "type")]
    pub kind: String,
    /// What it says, in short.
    pub text: String,
    /// The guest reprogrammed or forgot the vector in its table.
    pub applied: bool,
}

/// One grant's fate in a migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FateRecord {
    /// The device.
    pub device: String,
    /// The kind.
    pub kind: String,
    /// The index.
    pub index: u32,
    /// `kept`, `reprogrammed` or `revoked`.
    pub fate: String,
    /// For a revoked grant: the resource the destination lacked.
    pub reason: Option<String>,
}

/// A `migrate` step's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MigrationRecord {
    /// The destination.
    pub to: String,
    /// Whether the VM moved (`false`: the destination refused; the VM stayed, resumed).
    pub migrated: bool,
    /// Why the destination refused.
    pub refused: Option<String>,
    /// Grants with the same message on the destination.
    pub kept: u32,
    /// Grants the destination gave a new message.
    pub reprogrammed: u32,
    /// Grants the destination could not back.
    pub revoked: u32,
    /// Every grant's fate, per device in handle order.
    pub fates: Vec<FateRecord>,
    /// Vectors the source released once the destination ran.
    pub source_released: u32,
}

/// A destination host: before the first step (its tenants in place) and at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DestinationReport {
    /// Its name.
    pub name: String,
    /// Vectors its other tenants hold.
    pub tenant_vectors: u32,
    /// Occupancy before the first step.
    pub initial: HostSnapshot,
    /// Occupancy at the end.
    pub final_host: HostSnapshot,
}
