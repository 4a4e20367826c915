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

use pvirq_host::layers::{MemoryRoutes, RemapConfig, VectorConfig};
use pvirq_host::{DeviceSpec, Host, HostConfig, Vm, VmConfig};
use pvirq_proto::{
    Alloc, DeviceInfo, Field, Grant, IndexRange, IndexSpec, Kind, KindSet, MAX_PASID, MsiMessage,
    Operation, Outcome, Refusal, RemappableMsi, Request, Resource, Response, Retarget, Target,
    feature,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Largest count the protocol allows in one request.
const PROTOCOL_MAX_BATCH: u16 = 4096;
/// Largest MSI block.
const MSI_MAX: u16 = 32;
/// First guest route id of every VM's [`MemoryRoutes`].
const FIRST_ROUTE: u32 = 24;

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
    /// Its devices (requester IDs unique host-wide, units < `HostShape::units`).
    pub devices: Vec<DeviceSpec>,
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

fn floor_pow2(n: u32) -> u32 {
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
            Step::Free { vm, device, range } => (*vm, *device, Operation::Free(*range)),
            Step::Retarget {
                vm,
                device,
                range,
                targets,
            } => (
                *vm,
                *device,
                Operation::Retarget(Retarget {
                    range: *range,
                    targets,
                }),
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
        match Response::decode(bytes) {
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
                grants: grants.to_vec(),
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

/// A granted vector in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ModelGrant {
    irte: u16,
    target: Target,
}

#[derive(Clone, Debug)]
struct ModelDevice {
    spec: DeviceSpec,
    /// Per kind (MSI, MSI-X, IMS): index → grant.
    tables: [BTreeMap<u32, ModelGrant>; 3],
}

fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Msi => 0,
        Kind::MsiX => 1,
        Kind::Ims => 2,
    }
}

impl ModelDevice {
    fn size(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Msi => u32::from(self.spec.msi_max),
            Kind::MsiX => u32::from(self.spec.msix_table_size),
            Kind::Ims => self.spec.ims_slots,
        }
    }

    fn table(&self, kind: Kind) -> &BTreeMap<u32, ModelGrant> {
        &self.tables[slot(kind)]
    }

    fn table_mut(&mut self, kind: Kind) -> &mut BTreeMap<u32, ModelGrant> {
        &mut self.tables[slot(kind)]
    }

    fn granted(&self) -> u32 {
        self.tables.iter().map(|t| t.len() as u32).sum()
    }

    /// Free slots an ANY_INDEX ALLOC of `kind` could use.
    fn free_slots(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Msi if !self.table(kind).is_empty() => 0,
            _ => self.size(kind) - self.table(kind).len() as u32,
        }
    }
}

#[derive(Clone, Debug)]
struct ModelVm {
    shape: VmShape,
    held: u32,
    devices: Vec<ModelDevice>,
}

impl ModelVm {
    fn usable(&self, dev: &ModelDevice, kind: Kind) -> bool {
        let bit = match kind {
            Kind::Msi => feature::MSI,
            Kind::MsiX => feature::MSIX,
            Kind::Ims => feature::IMS,
        };
        dev.size(kind) > 0 && self.shape.features & bit != 0
    }

    fn quota_left(&self) -> u32 {
        self.shape.quota.saturating_sub(self.held)
    }
}

/// The reference model of one host and its VMs.
#[derive(Clone, Debug)]
pub struct Model {
    /// Per unit, per IRTE: in use.
    irtes: Vec<Vec<bool>>,
    /// (unit, IRTE) → (VM, device, kind, index) of its grant.
    irte_owner: HashMap<(u16, u16), (usize, usize, Kind, u32)>,
    vectors_total: u32,
    vectors_used: u32,
    vms: Vec<ModelVm>,
}

impl Model {
    /// A model of `host` with `vms` on it, holding nothing.
    pub fn new(host: &HostShape, vms: &[VmShape]) -> Model {
        Model {
            irtes: vec![vec![false; host.entries_per_unit as usize]; usize::from(host.units)],
            irte_owner: HashMap::new(),
            vectors_total: host.cpus * u32::from(host.vectors_per_cpu),
            vectors_used: 0,
            vms: vms
                .iter()
                .map(|shape| ModelVm {
                    shape: shape.clone(),
                    held: 0,
                    devices: shape
                        .devices
                        .iter()
                        .map(|spec| ModelDevice {
                            spec: *spec,
                            tables: Default::default(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn free_irtes(&self, unit: u16) -> u32 {
        self.irtes
            .get(usize::from(unit))
            .map_or(0, |u| u.iter().filter(|used| !**used).count() as u32)
    }

    /// Lowest naturally aligned free block of `n` IRTEs.
    fn aligned_block(&self, unit: u16, n: u32) -> Option<u16> {
        let table = self.irtes.get(usize::from(unit))?;
        let n = n as usize;
        (0..table.len())
            .step_by(n)
            .find(|base| {
                table
                    .get(*base..*base + n)
                    .is_some_and(|b| b.iter().all(|used| !*used))
            })
            .map(|b| b as u16)
    }

    fn largest_block(&self, unit: u16) -> u32 {
        [32, 16, 8, 4, 2, 1]
            .into_iter()
            .find(|n| self.aligned_block(unit, *n).is_some())
            .unwrap_or(0)
    }

    /// What each resource (§3.3 order) can supply for `kind` on device `d` of VM `v`,
    /// given `slots` usable device slots.
    fn supply(&self, v: usize, d: usize, kind: Kind, slots: u32) -> [(Resource, u32); 5] {
        let vm = &self.vms[v];
        let unit = vm.devices[d].spec.unit;
        let irte = if kind == Kind::Msi {
            self.largest_block(unit)
        } else {
            self.free_irtes(unit)
        };
        [
            (Resource::VmQuota, vm.quota_left()),
            (Resource::DeviceSlots, slots),
            (Resource::Irte, irte),
            (Resource::HostVector, self.vectors_total - self.vectors_used),
            (Resource::GuestRoute, vm.shape.routes - vm.held),
        ]
    }

    fn grantable(supply: &[(Resource, u32); 5], kind: Kind, max: u32) -> u32 {
        let n = supply.iter().map(|(_, s)| *s).fold(max, u32::min);
        if kind == Kind::Msi { floor_pow2(n) } else { n }
    }

    /// The answer the host must give to `request` from VM `v`, applied to the model.
    pub fn apply(&mut self, v: usize, request: &Request<'_>) -> Answer {
        let max_batch = self.vms[v].shape.max_batch;
        // §5.3 step 3: the only decode check a request that encodes can still fail.
        let count = match &request.op {
            Operation::Alloc(a) => a.max,
            Operation::Free(r) => r.count,
            Operation::Retarget(r) => r.range.count,
            Operation::Query | Operation::Reset => 0,
        };
        if count > max_batch {
            return Answer::Refused(Refusal::BatchTooLarge {
                max_batch: u32::from(max_batch),
            });
        }
        // Step 6.
        let d = request.device as usize;
        if d >= self.vms[v].devices.len() {
            return Answer::Refused(Refusal::NoDevice);
        }
        match &request.op {
            Operation::Query => self.query(v, d),
            Operation::Alloc(a) => self.alloc(v, d, a),
            Operation::Free(r) => self.free(v, d, r),
            Operation::Retarget(r) => self.retarget(v, d, r),
            Operation::Reset => {
                let count = self.release(v, d, None);
                Answer::Reset {
                    count,
                    quota_remaining: self.vms[v].quota_left(),
                }
            }
        }
    }

    fn query(&self, v: usize, d: usize) -> Answer {
        let vm = &self.vms[v];
        let dev = &vm.devices[d];
        let mut kinds = KindSet::EMPTY;
        let mut available = 0;
        for kind in Kind::ALL.iter().copied() {
            if vm.usable(dev, kind) {
                kinds = kinds.with(kind);
                let supply = self.supply(v, d, kind, dev.free_slots(kind));
                let n = Self::grantable(&supply, kind, u32::from(vm.shape.max_batch));
                available = available.max(n);
            }
        }
        let shown = |kind: Kind, size: u32| if kinds.contains(kind) { size } else { 0 };
        Answer::Queried {
            info: DeviceInfo {
                kinds,
                msi_max: shown(Kind::Msi, dev.size(Kind::Msi)) as u16,
                msix_table_size: shown(Kind::MsiX, dev.size(Kind::MsiX)) as u16,
                ims_slots: shown(Kind::Ims, dev.size(Kind::Ims)),
                granted: dev.granted(),
                vm_quota: vm.shape.quota,
                available,
            },
            quota_remaining: vm.quota_left(),
        }
    }

    fn alloc(&mut self, v: usize, d: usize, a: &Alloc<'_>) -> Answer {
        let vm = &self.vms[v];
        let dev = &vm.devices[d];
        // Step 7: negotiation.
        if !vm.usable(dev, a.kind) {
            return Answer::Refused(Refusal::Unsupported { field: Field::Kind });
        }
        if a.pasid.is_some() && vm.shape.features & feature::PASID == 0 {
            return Answer::Refused(Refusal::Unsupported {
                field: Field::Pasid,
            });
        }
        // Step 8: every target's vCPU, used or not.
        if let Some(entry) = a
            .targets
            .iter()
            .position(|t| t.vcpu() >= vm.shape.num_vcpus)
        {
            return Answer::Refused(Refusal::InvalidTarget {
                field: Field::TargetVcpu,
                entry: entry as u32,
            });
        }
        // Step 9: indices.
        let (min, max) = (u32::from(a.min), u32::from(a.max));
        let table = dev.table(a.kind);
        let size = dev.size(a.kind);
        let slots = match (a.kind, a.index) {
            (Kind::Msi, _) => {
                if !table.is_empty() {
                    return Answer::Refused(Refusal::IndexInUse { index: 0 });
                }
                size
            }
            (_, IndexSpec::At(first)) => {
                let end = u64::from(first) + u64::from(max);
                if end > u64::from(size) {
                    return Answer::Refused(Refusal::IndexOutOfRange {
                        index: first.max(size),
                    });
                }
                if let Some(index) = (first..first + max).find(|i| table.contains_key(i)) {
                    return Answer::Refused(Refusal::IndexInUse { index });
                }
                max
            }
            (_, IndexSpec::Any) => dev.free_slots(a.kind),
        };
        // Step 10: resources.
        let supply = self.supply(v, d, a.kind, slots);
        let n = Self::grantable(&supply, a.kind, max);
        if n < min {
            let resource = supply
                .iter()
                .find(|(_, s)| *s < min)
                .map_or(Resource::None, |(r, _)| *r);
            return Answer::Refused(Refusal::NoSpace {
                resource,
                available: n,
            });
        }
        let indices: Vec<u32> = match (a.kind, a.index) {
            (Kind::Msi, _) => (0..n).collect(),
            (_, IndexSpec::At(first)) => (first..first + n).collect(),
            (_, IndexSpec::Any) => (0..size)
                .filter(|i| !table.contains_key(i))
                .take(n as usize)
                .collect(),
        };
        let unit = dev.spec.unit;
        let mut grants = Vec::with_capacity(n as usize);
        let mut base = None;
        if a.kind == Kind::Msi {
            base = self.aligned_block(unit, n);
        }
        for (i, index) in indices.iter().enumerate() {
            let (irte, msg) = match base {
                Some(b) => (
                    b + i as u16,
                    RemappableMsi {
                        handle: b,
                        subhandle: Some(i as u16),
                    },
                ),
                None => {
                    let irte = self.irtes[usize::from(unit)]
                        .iter()
                        .position(|used| !*used)
                        .unwrap_or(0) as u16;
                    (
                        irte,
                        RemappableMsi {
                            handle: irte,
                            subhandle: Some(0),
                        },
                    )
                }
            };
            self.irtes[usize::from(unit)][usize::from(irte)] = true;
            self.irte_owner.insert((unit, irte), (v, d, a.kind, *index));
            let target = a.targets[i];
            self.vms[v].devices[d]
                .table_mut(a.kind)
                .insert(*index, ModelGrant { irte, target });
            grants.push(Grant::new(*index, msg.message()));
        }
        self.vectors_used += n;
        self.vms[v].held += n;
        Answer::Allocated {
            grants,
            quota_remaining: self.vms[v].quota_left(),
        }
    }

    fn free(&mut self, v: usize, d: usize, r: &IndexRange) -> Answer {
        let vm = &self.vms[v];
        let dev = &vm.devices[d];
        if !vm.usable(dev, r.kind) {
            return Answer::Refused(Refusal::Unsupported { field: Field::Kind });
        }
        let table = dev.table(r.kind);
        if r.kind == Kind::Msi {
            let block = table.len() as u32;
            let count = u32::from(r.count);
            if block == 0 || r.first != 0 || count < block {
                return Answer::Refused(Refusal::NotGranted { index: r.first });
            }
            if count > block {
                return Answer::Refused(Refusal::NotGranted { index: block });
            }
        }
        if let Some(index) = r.indices().find(|i| !table.contains_key(i)) {
            return Answer::Refused(Refusal::NotGranted { index });
        }
        let count = self.release(v, d, Some(r));
        Answer::Freed {
            count,
            quota_remaining: self.vms[v].quota_left(),
        }
    }

    fn retarget(&mut self, v: usize, d: usize, r: &Retarget<'_>) -> Answer {
        let vm = &self.vms[v];
        let dev = &vm.devices[d];
        // Step 7, in its order: the kind, then the RETARGET feature.
        if !vm.usable(dev, r.range.kind) {
            return Answer::Refused(Refusal::Unsupported { field: Field::Kind });
        }
        if vm.shape.features & feature::RETARGET == 0 {
            return Answer::Refused(Refusal::Unsupported {
                field: Field::Opcode,
            });
        }
        // Step 8 before step 9.
        if let Some(entry) = r
            .targets
            .iter()
            .position(|t| t.vcpu() >= vm.shape.num_vcpus)
        {
            return Answer::Refused(Refusal::InvalidTarget {
                field: Field::TargetVcpu,
                entry: entry as u32,
            });
        }
        let table = dev.table(r.range.kind);
        if let Some(index) = r.range.indices().find(|i| !table.contains_key(i)) {
            return Answer::Refused(Refusal::NotGranted { index });
        }
        let table = self.vms[v].devices[d].table_mut(r.range.kind);
        for (index, target) in r.range.indices().zip(r.targets) {
            if let Some(g) = table.get_mut(&index) {
                g.target = *target;
            }
        }
        Answer::Retargeted {
            count: u32::from(r.range.count),
            quota_remaining: self.vms[v].quota_left(),
        }
    }

    /// Releases the grants of `range` (all of the device's for `None`); how many.
    fn release(&mut self, v: usize, d: usize, range: Option<&IndexRange>) -> u32 {
        let dev = &mut self.vms[v].devices[d];
        let unit = dev.spec.unit;
        let mut gone = Vec::new();
        for kind in Kind::ALL.iter().copied() {
            if range.is_some_and(|r| r.kind != kind) {
                continue;
            }
            let table = dev.table_mut(kind);
            let indices: Vec<u32> = match range {
                Some(r) => r.indices().collect(),
                None => table.keys().copied().collect(),
            };
            for i in indices {
                if let Some(g) = table.remove(&i) {
                    gone.push(g.irte);
                }
            }
        }
        for irte in &gone {
            self.irtes[usize::from(unit)][usize::from(*irte)] = false;
            self.irte_owner.remove(&(unit, *irte));
        }
        let n = gone.len() as u32;
        self.vectors_used -= n;
        self.vms[v].held -= n;
        n
    }

    /// Virtio reset of VM `v`: every grant of every device; how many.
    pub fn reset_vm(&mut self, v: usize) -> u32 {
        (0..self.vms[v].devices.len())
            .map(|d| self.release(v, d, None))
            .sum()
    }

    /// Where a message sent by `source` lands: `(VM, vCPU, vector)`, or `None` (a fault).
    pub fn fire(&self, source: u16, message: MsiMessage) -> Option<(usize, u32, u8)> {
        let dev = self
            .vms
            .iter()
            .find_map(|vm| vm.devices.iter().find(|d| d.spec.requester_id == source))?;
        let unit = dev.spec.unit;
        let irte = RemappableMsi::decode(message).ok()?.irte_index();
        let irte = u16::try_from(irte).ok()?;
        let (ov, od, kind, index) = *self.irte_owner.get(&(unit, irte))?;
        let owner = &self.vms[ov].devices[od];
        if owner.spec.requester_id != source {
            return None;
        }
        let g = owner.table(kind).get(&index)?;
        Some((ov, g.target.vcpu(), g.target.vector()))
    }

    /// Vectors VM `v` holds.
    pub fn held(&self, v: usize) -> u32 {
        self.vms[v].held
    }
}

/// What a run did, for the test's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Every kind of answer seen: `ok`, a status name, or `no-space:<resource>` and
    /// `unsupported:<field>`.
    pub answers: BTreeSet<String>,
    /// How many times each answer label was seen.
    pub counts: BTreeMap<String, u32>,
    /// Protocol steps answered OK.
    pub ok: u32,
    /// Protocol steps refused.
    pub refused: u32,
    /// Vectors granted over the run.
    pub granted: u32,
    /// Fires delivered.
    pub delivered: u32,
    /// Fires faulted.
    pub faulted: u32,
}

/// A short name for the kind of an answer.
fn label(answer: &Answer) -> String {
    match answer {
        Answer::Refused(Refusal::NoSpace { resource, .. }) => format!("no-space:{resource}"),
        Answer::Refused(Refusal::Unsupported { field }) => format!("unsupported:{field}"),
        Answer::Refused(Refusal::InvalidTarget { field, .. }) => format!("invalid-target:{field}"),
        Answer::Refused(r) => r.status().name().to_string(),
        Answer::Silent => "silent".into(),
        Answer::Malformed(_) => "malformed".into(),
        _ => "ok".into(),
    }
}

/// The live host side of a run.
struct Real {
    host: Host,
    vms: Vec<Vm>,
}

fn build(s: &Scenario) -> Result<Real, String> {
    let host = Host::new(&HostConfig {
        remap: RemapConfig {
            units: s.host.units,
            entries_per_unit: s.host.entries_per_unit,
        },
        vectors: VectorConfig {
            cpus: s.host.cpus,
            first: 0x20,
            end: 0x20 + s.host.vectors_per_cpu,
            reserved: Vec::new(),
        },
    })
    .map_err(|e| format!("host: {e}"))?;
    let mut vms = Vec::new();
    for shape in &s.vms {
        let routes = MemoryRoutes::with_range(FIRST_ROUTE, shape.routes)
            .map_err(|e| format!("routes: {e}"))?;
        let vm = host
            .create_vm(
                VmConfig {
                    quota: shape.quota,
                    num_vcpus: shape.num_vcpus,
                    max_batch: shape.max_batch,
                    devices: shape.devices.clone(),
                },
                Box::new(routes),
            )
            .map_err(|e| format!("vm: {e}"))?;
        vm.set_features(shape.features);
        vms.push(vm);
    }
    Ok(Real { host, vms })
}

/// Compares everything observable about the state (occupancy, records, invariants).
fn compare_state(real: &Real, model: &Model) -> Result<(), String> {
    real.host
        .check_invariants()
        .map_err(|e| format!("invariants: {e:?}"))?;
    for (v, (vm, mvm)) in real.vms.iter().zip(&model.vms).enumerate() {
        let occ = vm.occupancy();
        let per_device: Vec<u32> = mvm.devices.iter().map(ModelDevice::granted).collect();
        if occ.held != mvm.held || occ.routes != mvm.held || occ.per_device != per_device {
            return Err(format!(
                "vm {v}: occupancy {occ:?}, model held {} per device {per_device:?}",
                mvm.held
            ));
        }
        for (d, mdev) in mvm.devices.iter().enumerate() {
            let real_grants: Vec<(Kind, u32, u16)> = vm
                .grants(d as u32)
                .into_iter()
                .map(|(k, i, r)| (k, i, r.irte))
                .collect();
            let model_grants: Vec<(Kind, u32, u16)> = Kind::ALL
                .iter()
                .flat_map(|k| mdev.table(*k).iter().map(move |(i, g)| (*k, *i, g.irte)))
                .collect();
            if real_grants != model_grants {
                return Err(format!(
                    "vm {v} dev {d}: grants {real_grants:?}, model {model_grants:?}"
                ));
            }
        }
    }
    let occ = real.host.occupancy();
    for (u, unit) in occ.units.iter().enumerate() {
        let used = model.irtes[u].iter().filter(|x| **x).count() as u32;
        if unit.used != used {
            return Err(format!("unit {u}: {} IRTEs used, model {used}", unit.used));
        }
    }
    if occ.vectors_used != model.vectors_used {
        return Err(format!(
            "{} host vectors used, model {}",
            occ.vectors_used, model.vectors_used
        ));
    }
    Ok(())
}

/// Runs `scenario` against a real host and the model; the first disagreement, if any.
///
/// Steps are normalised first ([`Step::normalized`]). A scenario whose shapes the host
/// refuses (a bad configuration) is an error too: generators must produce valid shapes.
pub fn run(scenario: &Scenario) -> Result<RunStats, String> {
    let real = build(scenario)?;
    let mut model = Model::new(&scenario.host, &scenario.vms);
    let mut stats = RunStats::default();
    let nvms = real.vms.len();
    if nvms == 0 {
        return Ok(stats);
    }
    let sources: Vec<u16> = scenario
        .vms
        .iter()
        .flat_map(|vm| vm.devices.iter().map(|d| d.requester_id))
        .collect();
    let unknown = (0..=u16::MAX).find(|s| !sources.contains(s)).unwrap_or(0);
    // Every message ever granted, with the requester it was granted to.
    let mut messages: Vec<(MsiMessage, u16)> = Vec::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        let step = step.normalized();
        let fail = |what: String| format!("step {i} {step:?}: {what}");
        match &step {
            Step::ResetVm { vm } => {
                let v = vm % nvms;
                let count = real.vms[v]
                    .reset_all()
                    .map_err(|e| fail(format!("reset_all: {e}")))?;
                let expected = model.reset_vm(v);
                if count != expected {
                    return Err(fail(format!("reset_all freed {count}, model {expected}")));
                }
            }
            Step::Fire { source, message } => {
                let Some((message, owner)) = messages.get(message % messages.len().max(1)).copied()
                else {
                    continue;
                };
                let source = match source {
                    0 => owner,
                    i => sources.get(i - 1).copied().unwrap_or(unknown),
                };
                let real_delivery = real
                    .host
                    .fire(source, message)
                    .ok()
                    .map(|d| (d.vm, d.vcpu, d.vector));
                let expected = model
                    .fire(source, message)
                    .map(|(v, vcpu, vector)| (real.vms[v].id(), vcpu, vector));
                if real_delivery != expected {
                    return Err(fail(format!(
                        "fire {source:#x} {message:?}: {real_delivery:?}, model {expected:?}"
                    )));
                }
                if expected.is_some() {
                    stats.delivered += 1;
                } else {
                    stats.faulted += 1;
                }
            }
            _ => {
                let Some((vm, request)) = step.request() else {
                    continue;
                };
                let v = vm % nvms;
                let mut probe = vec![0u8; request.encoded_len()];
                if let Err(e) = request.encode(&mut probe) {
                    return Err(fail(format!("normalised request does not encode: {e:?}")));
                }
                let got = Answer::from_reply(&real.vms[v].call(&request));
                let expected = model.apply(v, &request);
                if got != expected {
                    return Err(fail(format!("host answered {got:?}, model {expected:?}")));
                }
                stats.answers.insert(label(&got));
                *stats.counts.entry(label(&got)).or_default() += 1;
                match &got {
                    Answer::Refused(_) => stats.refused += 1,
                    Answer::Allocated { grants, .. } => {
                        stats.ok += 1;
                        stats.granted += grants.len() as u32;
                        let owner = scenario.vms[v]
                            .devices
                            .get(request.device as usize)
                            .map_or(unknown, |d| d.requester_id);
                        messages.extend(grants.iter().map(|g| (g.message(), owner)));
                    }
                    _ => stats.ok += 1,
                }
            }
        }
        compare_state(&real, &model).map_err(fail)?;
    }
    // Reset every device through the protocol: the host must hold nothing afterwards.
    for (v, vm) in real.vms.iter().enumerate() {
        for d in 0..scenario.vms[v].devices.len() as u32 {
            let request = Request {
                device: d,
                tag: 0,
                op: Operation::Reset,
            };
            let got = Answer::from_reply(&vm.call(&request));
            let expected = model.apply(v, &request);
            if got != expected {
                return Err(format!(
                    "final reset vm {v} dev {d}: {got:?}, model {expected:?}"
                ));
            }
        }
    }
    compare_state(&real, &model)?;
    let occ = real.host.occupancy();
    if occ.vectors_used != 0 || occ.units.iter().any(|u| u.used != 0) {
        return Err(format!("after reset the host still holds {occ:?}"));
    }
    for (message, _) in &messages {
        for source in &sources {
            if let Ok(d) = real.host.fire(*source, *message) {
                return Err(format!(
                    "after reset {message:?} from {source:#x} delivered {d:?}"
                ));
            }
        }
    }
    Ok(stats)
}
