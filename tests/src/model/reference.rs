//! The reference model itself: flat tables and the spec's rules in §5.3 order.

use super::scenario::{Answer, HostShape, VmShape, floor_pow2};
use pvirq_host::DeviceSpec;
use pvirq_proto::{
    Alloc, DeviceInfo, Field, Grant, IndexRange, IndexSpec, Indices, Kind, KindSet, MsiMessage,
    Operation, Refusal, RemappableMsi, Request, Resource, Retarget, RetargetTo, Target, feature,
};
use std::collections::{BTreeMap, HashMap};

/// A granted vector in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ModelGrant {
    pub(super) irte: u16,
    target: Target,
}

#[derive(Clone, Debug)]
pub(super) struct ModelDevice {
    spec: DeviceSpec,
    unit: u16,
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

    pub(super) fn table(&self, kind: Kind) -> &BTreeMap<u32, ModelGrant> {
        &self.tables[slot(kind)]
    }

    fn table_mut(&mut self, kind: Kind) -> &mut BTreeMap<u32, ModelGrant> {
        &mut self.tables[slot(kind)]
    }

    pub(super) fn granted(&self) -> u32 {
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
pub(super) struct ModelVm {
    shape: VmShape,
    pub(super) held: u32,
    pub(super) devices: Vec<ModelDevice>,
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
    pub(super) irtes: Vec<Vec<bool>>,
    /// (unit, IRTE) → (VM, device, kind, index) of its grant.
    irte_owner: HashMap<(u16, u16), (usize, usize, Kind, u32)>,
    vectors_total: u32,
    pub(super) vectors_used: u32,
    pub(super) vms: Vec<ModelVm>,
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
                        .zip(shape.units.iter().copied().chain(std::iter::repeat(0)))
                        .map(|(spec, unit)| ModelDevice {
                            spec: *spec,
                            unit,
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
        let unit = vm.devices[d].unit;
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
            Operation::Free(indices) => indices.count(),
            Operation::Retarget(r) => r.indices.count(),
            Operation::Query | Operation::Reset => 0,
        };
        if count > max_batch {
            return Answer::Refused(Refusal::BatchTooLarge {
                max_batch: u32::from(max_batch),
            });
        }
        // The model is version 1's: its scenarios negotiate version-1 feature sets only,
        // under which the decoder never gives an extension's shape. Should one arrive, it
        // is outside the model (the extensions are tested in the host's
        // `transaction/ext_tests`, `tests/fault_walk_ext.rs` and `tests/e2e_extensions.rs`).
        if request.required_features() & feature::EXTENSIONS != 0 {
            return Answer::Refused(Refusal::BadRequest {
                field: Field::Flags,
                entry: 0,
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
            Operation::Free(Indices::Run(r)) => self.free(v, d, r),
            Operation::Retarget(Retarget {
                indices: Indices::Run(range),
                to: RetargetTo::Targets(targets),
            }) => self.retarget(v, d, range, targets),
            // Extensions: refused above.
            Operation::Free(_) | Operation::Retarget(_) => Answer::Refused(Refusal::BadRequest {
                field: Field::Flags,
                entry: 0,
            }),
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
                ext: None,
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
            // An extension: refused in `apply`, as the host refuses it.
            (_, IndexSpec::AnyContiguous) => {
                return Answer::Refused(Refusal::BadRequest {
                    field: Field::Flags,
                    entry: 0,
                });
            }
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
            (_, IndexSpec::Any | IndexSpec::AnyContiguous) => (0..size)
                .filter(|i| !table.contains_key(i))
                .take(n as usize)
                .collect(),
        };
        let unit = dev.unit;
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

    fn retarget(&mut self, v: usize, d: usize, range: &IndexRange, targets: &[Target]) -> Answer {
        let vm = &self.vms[v];
        let dev = &vm.devices[d];
        // Step 7, in its order: the kind, then the RETARGET feature.
        if !vm.usable(dev, range.kind) {
            return Answer::Refused(Refusal::Unsupported { field: Field::Kind });
        }
        if vm.shape.features & feature::RETARGET == 0 {
            return Answer::Refused(Refusal::Unsupported {
                field: Field::Opcode,
            });
        }
        // Step 8 before step 9.
        if let Some(entry) = targets.iter().position(|t| t.vcpu() >= vm.shape.num_vcpus) {
            return Answer::Refused(Refusal::InvalidTarget {
                field: Field::TargetVcpu,
                entry: entry as u32,
            });
        }
        let table = dev.table(range.kind);
        if let Some(index) = range.indices().find(|i| !table.contains_key(i)) {
            return Answer::Refused(Refusal::NotGranted { index });
        }
        let table = self.vms[v].devices[d].table_mut(range.kind);
        for (index, target) in range.indices().zip(targets) {
            if let Some(g) = table.get_mut(&index) {
                g.target = *target;
            }
        }
        Answer::Retargeted {
            count: u32::from(range.count),
            quota_remaining: self.vms[v].quota_left(),
        }
    }

    /// Releases the grants of `range` (all of the device's for `None`); how many.
    fn release(&mut self, v: usize, d: usize, range: Option<&IndexRange>) -> u32 {
        let dev = &mut self.vms[v].devices[d];
        let unit = dev.unit;
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
        let unit = dev.unit;
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
