//! A validated scenario: names resolved to indices, counts and targets checked.

use pvirq_host::model::{ModelConfig, RemapConfig, VectorConfig};
use pvirq_host::{ApicIds, DeviceSpec, VmConfig};
use pvirq_proto::{IndexSpec, Kind, Resource, Status, Target, Targeting};
use serde::Serialize;

/// A scenario: one host, its VMs, and the steps their guests take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Its name (the file's `name`, or the file name).
    pub name: String,
    /// What it shows, if the file says.
    pub description: Option<String>,
    /// The host's sizes.
    pub host: HostDecl,
    /// The VMs, created in this order before the first step.
    pub vms: Vec<VmDecl>,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// The host's sizes (`[host]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDecl {
    /// IOMMU (interrupt-remapping) units.
    pub iommu_units: u16,
    /// IRTEs per unit.
    pub irtes_per_unit: u32,
    /// Host CPUs.
    pub cpus: u32,
    /// First usable host vector of each CPU.
    pub first_vector: u8,
    /// One past the last usable host vector of each CPU.
    pub end_vector: u8,
    /// Vectors in that range the system keeps.
    pub reserved_vectors: Vec<u8>,
}

impl HostDecl {
    /// The host configuration these sizes describe.
    pub fn config(&self) -> ModelConfig {
        ModelConfig {
            remap: RemapConfig {
                units: self.iommu_units,
                entries_per_unit: self.irtes_per_unit,
            },
            vectors: VectorConfig {
                cpus: self.cpus,
                first: self.first_vector,
                end: self.end_vector,
                reserved: self.reserved_vectors.clone(),
            },
            ..ModelConfig::default()
        }
    }
}

/// A VM (`[[vm]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmDecl {
    /// Its name, unique in the scenario.
    pub name: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Vectors it may hold at once.
    pub quota: u32,
    /// Largest count in one request.
    pub max_batch: u16,
    /// Its pass-through devices; handle `i` is `devices[i]`.
    pub devices: Vec<DeviceDecl>,
    /// The feature bits its guest asks for ([`pvirq_proto::feature::V1`]: a version-1
    /// driver).
    pub features: u64,
    /// vCPU `i`'s APIC ID, when they are not `0..vcpus`.
    pub apic_ids: Option<Vec<u32>>,
}

impl VmDecl {
    /// The VM configuration the host is given.
    pub fn config(&self) -> VmConfig {
        VmConfig {
            quota: self.quota,
            num_vcpus: self.vcpus,
            max_batch: self.max_batch,
            devices: self.devices.iter().map(DeviceDecl::spec).collect(),
            apic_ids: match &self.apic_ids {
                Some(ids) => ApicIds::Table(ids.clone()),
                None => ApicIds::Identity,
            },
        }
    }
}

/// A pass-through device (`[[vm.device]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceDecl {
    /// Its name, unique in its VM.
    pub name: String,
    /// PCI requester ID.
    pub requester_id: u16,
    /// IOMMU unit serving it.
    pub unit: u16,
    /// Largest multi-MSI block (0: no MSI).
    pub msi: u16,
    /// MSI-X table size (0: no MSI-X).
    pub msix: u16,
    /// IMS slots (0: no IMS).
    pub ims: u32,
}

impl DeviceDecl {
    /// The device as the host describes it.
    pub fn spec(&self) -> DeviceSpec {
        DeviceSpec {
            requester_id: self.requester_id,
            msi_max: self.msi,
            msix_table_size: self.msix,
            ims_slots: self.ims,
            ..DeviceSpec::default()
        }
    }
}

/// A guest destination: vCPU and guest vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Dest {
    /// The APIC ID when the VM negotiated `APIC_ID`, else the vCPU index: the value that
    /// goes on the wire.
    pub vcpu: u32,
    /// Guest vector.
    pub vector: u8,
}

impl Dest {
    /// The wire target.
    pub fn target(self) -> Target {
        Target::new(self.vcpu, self.vector)
    }
}

/// What a guest does when ALLOC is refused for lack of space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Nothing: the refusal stands.
    None,
    /// As Linux drivers do around `pci_alloc_irq_vectors`: on NO_SPACE with `available`
    /// ≥ 1, ask again for exactly `available` vectors (the first `available` targets).
    Linux,
}

/// One step (`[[step]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Line of its `[[step]]` header.
    pub line: usize,
    /// The VM whose guest acts (index into [`Scenario::vms`]).
    pub vm: usize,
    /// What it does.
    pub action: Action,
    /// A free-text note shown with the step.
    pub note: Option<String>,
    /// Records host occupancy after the step under this name (for `expect.host_equals`).
    pub snapshot: Option<String>,
    /// The outcomes the step must have.
    pub expect: Expect,
}

/// An ALLOC as the guest asks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocStep {
    /// Device handle.
    pub device: usize,
    /// Interrupt kind.
    pub kind: Kind,
    /// Any index, or from this one.
    pub index: IndexSpec,
    /// Fewest vectors accepted.
    pub min: u16,
    /// Most vectors wanted.
    pub max: u16,
    /// Where the vectors go.
    pub targeting: Targeting,
    /// [`Targeting::PerVector`]: one destination per vector (`max` of them);
    /// [`Targeting::Spread`]: the set to spread over; [`Targeting::Parked`]: none.
    pub targets: Vec<Dest>,
    /// IMS PASID.
    pub pasid: Option<u32>,
    /// Fallback policy on NO_SPACE.
    pub fallback: Fallback,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// ALLOC.
    Alloc(AllocStep),
    /// FREE of `count` indices of `kind` from `first`.
    Free {
        /// Device handle.
        device: usize,
        /// Kind.
        kind: Kind,
        /// First index.
        first: u32,
        /// Run length.
        count: u16,
    },
    /// RETARGET of `targets.len()` indices of `kind` from `first`.
    Retarget {
        /// Device handle.
        device: usize,
        /// Kind.
        kind: Kind,
        /// First index.
        first: u32,
        /// New destinations, one per index.
        targets: Vec<Dest>,
    },
    /// QUERY.
    Query {
        /// Device handle.
        device: usize,
    },
    /// RESET of one device.
    Reset {
        /// Device handle.
        device: usize,
    },
    /// Virtio device reset of the whole channel (the driver re-initialises).
    ResetVm,
    /// The device fires every vector the guest holds on it through the host.
    Fire {
        /// Device handle.
        device: usize,
        /// Also fire messages the guest has freed (a device writing stale messages).
        include_freed: bool,
    },
}

impl Action {
    /// The op name, as in the file.
    pub fn op(&self) -> &'static str {
        match self {
            Action::Alloc(_) => "alloc",
            Action::Free { .. } => "free",
            Action::Retarget { .. } => "retarget",
            Action::Query { .. } => "query",
            Action::Reset { .. } => "reset",
            Action::ResetVm => "reset_vm",
            Action::Fire { .. } => "fire",
        }
    }

    /// The device the step concerns, if one.
    pub fn device(&self) -> Option<usize> {
        match self {
            Action::Alloc(a) => Some(a.device),
            Action::Free { device, .. }
            | Action::Retarget { device, .. }
            | Action::Query { device }
            | Action::Reset { device }
            | Action::Fire { device, .. } => Some(*device),
            Action::ResetVm => None,
        }
    }
}

/// Expected outcomes of a step; each one set is checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// Final status.
    pub status: Option<Status>,
    /// Resource named by the refusal (the final one, or the one a fallback answered).
    pub resource: Option<Resource>,
    /// `available` of that refusal, or QUERY's `available`.
    pub available: Option<u32>,
    /// Vectors granted (ALLOC), freed (FREE, RESET, reset_vm), moved (RETARGET), or held
    /// by the device (QUERY).
    pub granted: Option<u32>,
    /// Whether the fallback policy retried.
    pub fallback: Option<bool>,
    /// VM quota left after the step.
    pub quota_left: Option<u32>,
    /// Vectors the VM holds after the step.
    pub vm_held: Option<u32>,
    /// Free IRTEs over all units after the step.
    pub irtes_free: Option<u32>,
    /// Free host vectors after the step.
    pub vectors_free: Option<u32>,
    /// Interrupts delivered (fire).
    pub delivered: Option<u64>,
    /// Interrupts blocked (fire).
    pub blocked: Option<u64>,
    /// Host occupancy equals the snapshot of this name.
    pub host_equals: Option<String>,
}
