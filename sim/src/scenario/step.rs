//! A validated scenario's steps: names resolved to handles, counts and targets checked.

use super::expect::Expect;
use pvirq_proto::{IndexSpec, Kind, Target, Targeting};
use serde::Serialize;

/// A guest destination: vCPU and guest vector, as they go on the wire.
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
    /// Any index, any contiguous run, or from this one.
    pub index: IndexSpec,
    /// Fewest vectors accepted.
    pub min: u16,
    /// Most vectors wanted.
    pub max: u16,
    /// How the granted vectors get their targets.
    pub targeting: Targeting,
    /// [`Targeting::PerVector`]: one destination per vector that may be granted (`max`);
    /// [`Targeting::Spread`]: the set the granted vectors are spread over;
    /// [`Targeting::Parked`]: empty.
    pub targets: Vec<Dest>,
    /// IMS PASID.
    pub pasid: Option<u32>,
    /// Fallback policy on NO_SPACE.
    pub fallback: Fallback,
}

impl AllocStep {
    /// The targets on the wire.
    pub fn wire_targets(&self) -> Vec<Target> {
        self.targets.iter().map(|d| d.target()).collect()
    }

    /// Where grant `i` of `n` granted goes (`None`: parked).
    pub fn dest_of(&self, i: usize, n: usize) -> Option<Dest> {
        let wire = self.wire_targets();
        let t = self.targeting.target_of(i, n, &wire)?;
        Some(Dest {
            vcpu: t.vcpu(),
            vector: t.vector(),
        })
    }
}

/// Which indices a FREE, RETARGET or PARK names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexSel {
    /// A run `first..first + count`.
    Run {
        /// First index.
        first: u32,
        /// Run length.
        count: u16,
    },
    /// A strictly increasing list (needs `INDEX_LIST`).
    List(Vec<u32>),
}

impl IndexSel {
    /// The indices, in order.
    pub fn indices(&self) -> Vec<u32> {
        match self {
            IndexSel::Run { first, count } => (0..u32::from(*count))
                .map(|i| first.saturating_add(i))
                .collect(),
            IndexSel::List(list) => list.clone(),
        }
    }

    /// How many.
    pub fn len(&self) -> usize {
        match self {
            IndexSel::Run { count, .. } => usize::from(*count),
            IndexSel::List(list) => list.len(),
        }
    }

    /// Whether it names none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// ALLOC.
    Alloc(AllocStep),
    /// FREE of the named indices of `kind`.
    Free {
        /// Device handle.
        device: usize,
        /// Kind.
        kind: Kind,
        /// Which.
        indices: IndexSel,
    },
    /// RETARGET of the named indices of `kind`: `activate` says the guest activates parked
    /// grants (the same request; the report names it so).
    Retarget {
        /// Device handle.
        device: usize,
        /// Kind.
        kind: Kind,
        /// Which.
        indices: IndexSel,
        /// New destinations, one per index.
        targets: Vec<Dest>,
        /// Written as `op = "activate"`.
        activate: bool,
    },
    /// RETARGET `PARK` of the named indices of `kind`.
    Park {
        /// Device handle.
        device: usize,
        /// Kind.
        kind: Kind,
        /// Which.
        indices: IndexSel,
    },
    /// QUERY (with `INFO` when negotiated).
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
    /// The guest polls its event queue and applies what it reads.
    Events,
    /// The VMM sets the VM's quota.
    SetQuota {
        /// The new quota.
        quota: u32,
    },
    /// The VMM sets a device's share (`None`: no share of its own).
    SetShare {
        /// Device handle.
        device: usize,
        /// The new share.
        share: Option<u32>,
    },
    /// The VMM assigns a hot-plugged device to the VM.
    AddDevice {
        /// Its handle (its position in the VM's devices).
        device: usize,
    },
    /// The VMM takes an assigned device away.
    RemoveDevice {
        /// Device handle.
        device: usize,
    },
    /// The VMM tells the VM's device that other VMs released shared host resources.
    ResourcesChanged,
    /// The VMM migrates the VM to a destination host.
    Migrate {
        /// The destination (index into [`Scenario::destinations`]).
        to: usize,
    },
}

impl Action {
    /// The op name, as in the file.
    pub fn op(&self) -> &'static str {
        match self {
            Action::Alloc(_) => "alloc",
            Action::Free { .. } => "free",
            Action::Retarget {
                activate: false, ..
            } => "retarget",
            Action::Retarget { activate: true, .. } => "activate",
            Action::Park { .. } => "park",
            Action::Query { .. } => "query",
            Action::Reset { .. } => "reset",
            Action::ResetVm => "reset_vm",
            Action::Fire { .. } => "fire",
            Action::Events => "events",
            Action::SetQuota { .. } => "set_quota",
            Action::SetShare { .. } => "set_share",
            Action::AddDevice { .. } => "add_device",
            Action::RemoveDevice { .. } => "remove_device",
            Action::ResourcesChanged => "resources_changed",
            Action::Migrate { .. } => "migrate",
        }
    }

    /// The device the step concerns, if one.
    pub fn device(&self) -> Option<usize> {
        match self {
            Action::Alloc(a) => Some(a.device),
            Action::Free { device, .. }
            | Action::Retarget { device, .. }
            | Action::Park { device, .. }
            | Action::Query { device }
            | Action::Reset { device }
            | Action::Fire { device, .. }
            | Action::SetShare { device, .. }
            | Action::AddDevice { device }
            | Action::RemoveDevice { device } => Some(*device),
            Action::ResetVm
            | Action::Events
            | Action::SetQuota { .. }
            | Action::ResourcesChanged
            | Action::Migrate { .. } => None,
        }
    }
}
