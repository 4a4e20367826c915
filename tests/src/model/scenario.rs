//! What a scenario is made of: the pool's and VMs' shapes, the steps, and the owned form
//! of an answer.

use pvirq_host::DeviceSpec;
use pvirq_proto::{
    Alloc, DeviceInfo, Grant, IndexRange, IndexSpec, Indices, Kind, MAX_PASID, Operation, Outcome,
    Refusal, Request, Response, Retarget, Target, Targeting, feature,
};

/// Largest count the protocol allows in one request.
const PROTOCOL_MAX_BATCH: u16 = 4096;
/// Largest MSI block.
const MSI_MAX: u16 = 32;

/// The host pool's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostShape {
    /// Remapping units (≥ 1).
    pub units: u16,
    /// IRTEs per unit (1..=65,536).
    pub entries_per_unit: u32,
    /// Host CPUs (≥ 1).
    pub cpus: u32,
    /// Usable host vectors per CPU (1..=200), from 0x20.
    pub vectors_per_cpu: u8,
}

/// One VM's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmShape {
    /// Vectors the VM may hold.
    pub quota: u32,
    /// vCPUs (≥ 1).
    pub num_vcpus: u32,
    /// Largest count per request (1..=4096).
    pub max_batch: u16,
    /// Negotiated feature bits.
    pub features: u64,
    /// Guest routes its route table holds.
    pub routes: u32,
    /// Its devices (requester IDs unique host-wide).
    pub devices: Vec<DeviceSpec>,
    /// The remapping unit of each device, in the same order (each < `HostShape::units`).
    pub units: Vec<u16>,
}

/// One operation of a scenario. `vm` picks a VM modulo their number; `device` is the
/// handle as sent (it may name no device).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// QUERY.
    Query {
        /// VM.
        vm: usize,
        /// Device handle.
        device: u32,
    },
    /// ALLOC (normalised by [`Step::normalized`] into a request that encodes).
    Alloc {
        /// VM.
        vm: usize,
        /// Device handle.
        device: u32,
        /// Kind.
        kind: Kind,
        /// Indices.
        index: IndexSpec,
        /// Fewest accepted.
        min: u16,
        /// Most wanted.
        max: u16,
        /// PASID.
        pasid: Option<u32>,
        /// Targets (cycled or cut to `max`).
        targets: Vec<Target>,
    },
    /// FREE.
    Free {
        /// VM.
        vm: usize,
        /// Device handle.
        device: u32,
        /// The run.
        range: IndexRange,
    },
    /// RETARGET.
    Retarget {
        /// VM.
        vm: usize,
        /// Device handle.
        device: u32,
        /// The run.
        range: IndexRange,
        /// Targets (cycled or cut to the run's count).
        targets: Vec<Target>,
    },
    /// RESET of one device.
    Reset {
        /// VM.
        vm: usize,
        /// Device handle.
        device: u32,
    },
    /// Virtio device reset of a whole VM ([`Vm::reset_all`]).
    ResetVm {
        /// VM.
        vm: usize,
    },
    /// A device fires a message: `message` picks a message ever granted (modulo their
    /// number); `source` 0 is the device it was granted to, `1 + i` the `i`-th requester ID
    /// of the scenario (past the last: an unknown one).
    Fire {
        /// Requester pick.
        source: usize,
        /// Message pick.
        message: usize,
    },
}

/// A whole scenario: the pool, the VMs on it, and the steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// The pool.
    pub host: HostShape,
    /// The VMs.
    pub vms: Vec<VmShape>,
    /// The steps.
    pub steps: Vec<Step>,
}

pub(super) fn floor_pow2(n: u32) -> u32 {
    if n == 0 {
        0
    } else {
        1 << (31 - n.leading_zeros())
    }
}

fn fit_targets(targets: &[Target], n: u16) -> Vec<Target> {
    let fallback = [Target::new(0, 0x20)];
    let src = if targets.is_empty() {
        &fallback[..]
    } else {
        targets
    };
    src.iter()
        .cycle()
        .take(usize::from(n))
        .map(|t| Target::new(t.vcpu(), t.vector().max(0x20)))
        .collect()
}

fn fit_range(range: IndexRange) -> IndexRange {
    let count = range.count.clamp(1, PROTOCOL_MAX_BATCH);
    IndexRange {
        kind: range.kind,
        first: range.first.min(u32::MAX - (u32::from(count) - 1)),
        count,
    }
}

impl Step {
    /// The step made into one whose request encodes: counts in range (MSI: powers of two
    /// ≤ 32 at index 0), no index overflow, PASID only on IMS and < 2^20, as many targets
    /// as the count, every target vector ≥ 0x20. Out-of-range vCPUs and counts above a
    /// VM's `max_batch` stay: the device must refuse those.
    pub fn normalized(&self) -> Step {
        match self.clone() {
            Step::Alloc {
                vm,
                device,
                kind,
                index,
                min,
                max,
                pasid,
                targets,
            } => {
                let (mut min, mut max) = (min.clamp(1, PROTOCOL_MAX_BATCH), max);
                max = max.clamp(min, PROTOCOL_MAX_BATCH);
                let mut index = index;
                if kind == Kind::Msi {
                    min = (floor_pow2(u32::from(min)) as u16).min(MSI_MAX);
                    max = (floor_pow2(u32::from(max)) as u16).clamp(min, MSI_MAX);
                    if index != IndexSpec::Any {
                        index = IndexSpec::At(0);
                    }
                }
                if let IndexSpec::At(first) = index {
                    index = IndexSpec::At(first.min(u32::MAX - (u32::from(max) - 1)));
                }
                let pasid = match kind {
                    Kind::Ims => pasid.map(|p| p & MAX_PASID),
                    _ => None,
                };
                Step::Alloc {
                    vm,
                    device,
                    kind,
                    index,
                    min,
                    max,
                    pasid,
                    targets: fit_targets(&targets, max),
                }
            }
            Step::Free { vm, device, range } => Step::Free {
                vm,
                device,
                range: fit_range(range),
            },
            Step::Retarget {
                vm,
                device,
                range,
                targets,
            } => {
                let range = fit_range(range);
                Step::Retarget {
                    vm,
                    device,
                    range,
                    targets: fit_targets(&targets, range.count),
                }
            }
            other => other,
        }
    }

    /// The VM pick and the request of a protocol step (`None` for the others).
    pub fn request(&self) -> Option<(usize, Request<'_>)> {
        let (vm, device, op) = match self {
            Step::Query { vm, device } => (*vm, *device, Operation::Query),
            Step::Reset { vm, device } => (*vm, *device, Operation::Reset),
            Step::Free { vm, device, range } => {
                (*vm, *device, Operation::Free(Indices::Run(*range)))
            }
            Step::Retarget {
                vm,
                device,
                range,
                targets,
            } => (
                *vm,
                *device,
                Operation::Retarget(Retarget::run(*range, targets)),
            ),
            Step::Alloc {
                vm,
                device,
                kind,
                index,
                min,
                max,
                pasid,
                targets,
            } => (
                *vm,
                *device,
                Operation::Alloc(Alloc {
                    kind: *kind,
                    index: *index,
                    min: *min,
                    max: *max,
                    pasid: *pasid,
                    targets,
                    targeting: Targeting::PerVector,
                }),
            ),
            Step::ResetVm { .. } | Step::Fire { .. } => return None,
        };
        Some((
            vm,
            Request {
                device,
                tag: 0x7e57,
                op,
            },
        ))
    }
}

/// An answer, owned: what the device said (or nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// QUERY OK.
    Queried {
        /// The body.
        info: DeviceInfo,
        /// Quota left.
        quota_remaining: u32,
    },
    /// ALLOC OK.
    Allocated {
        /// Grants, in target order.
        grants: Vec<Grant>,
        /// Quota left.
        quota_remaining: u32,
    },
    /// FREE OK.
    Freed {
        /// Freed.
        count: u32,
        /// Quota left.
        quota_remaining: u32,
    },
    /// RETARGET OK.
    Retargeted {
        /// Moved.
        count: u32,
        /// Quota left.
        quota_remaining: u32,
    },
    /// RESET OK.
    Reset {
        /// Freed.
        count: u32,
        /// Quota left.
        quota_remaining: u32,
    },
    /// A refusal.
    Refused(Refusal),
    /// No reply at all (used length 0).
    Silent,
    /// A reply that does not decode.
    Malformed(String),
}

impl Answer {
    /// Decodes a reply (empty: [`Answer::Silent`]).
    pub fn from_reply(bytes: &[u8]) -> Answer {
        if bytes.is_empty() {
            return Answer::Silent;
        }
        match Response::decode(bytes, feature::V1) {
            Ok(r) => Answer::from_outcome(&r.outcome),
            Err(e) => Answer::Malformed(format!("{e:?}")),
        }
    }

    /// The owned form of an outcome.
    pub fn from_outcome(outcome: &Outcome<'_>) -> Answer {
        match *outcome {
            Outcome::Queried {
                info,
                quota_remaining,
            } => Answer::Queried {
                info,
                quota_remaining,
            },
            Outcome::Allocated {
                grants,
                quota_remaining,
            } => Answer::Allocated {
                grants: grants.iter().map(|g| g.grant()).collect(),
                quota_remaining,
            },
            Outcome::Freed {
                count,
                quota_remaining,
            } => Answer::Freed {
                count,
                quota_remaining,
            },
            Outcome::Retargeted {
                count,
                quota_remaining,
            } => Answer::Retargeted {
                count,
                quota_remaining,
            },
            Outcome::Reset {
                count,
                quota_remaining,
            } => Answer::Reset {
                count,
                quota_remaining,
            },
            Outcome::Refused(r) => Answer::Refused(r),
        }
    }
}
