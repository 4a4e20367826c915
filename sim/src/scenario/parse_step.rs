//! Validating `[[step]]` tables: the VM and device they name, the keys their op takes,
//! counts, indices and targets, and the feature bits their request needs.

use super::error::ScenarioError;
use super::locate::line_col;
use super::model::{DestinationDecl, VmDecl};
use super::parse::{Parser, Table, feature_name};
use super::raw::{CountValue, IndexValue, RawFallback, RawOp, RawSpread, RawStep, RawTargeting};
use super::step::{Action, AllocStep, Dest, Fallback, IndexSel, Step};
use pvirq_proto::{IndexSpec, Kind, Targeting, feature};
use std::collections::HashSet;
use toml::Spanned;

/// Default first guest vector of a spread.
const DEFAULT_SPREAD_VECTOR: u8 = 0x40;

/// The keys each op takes (besides `op`, `vm`, `note`, `snapshot`, `expect`).
fn allowed(op: RawOp) -> &'static [&'static str] {
    match op {
        RawOp::Alloc => &[
            "device",
            "kind",
            "index",
            "count",
            "min",
            "max",
            "targeting",
            "targets",
            "spread",
            "vector",
            "vcpu",
            "pasid",
            "fallback",
        ],
        RawOp::Free | RawOp::Park => &["device", "kind", "first", "count", "indices"],
        RawOp::Retarget | RawOp::Activate => &[
            "device", "kind", "first", "count", "indices", "targets", "spread", "vector", "vcpu",
        ],
        RawOp::Query | RawOp::Reset | RawOp::AddDevice | RawOp::RemoveDevice => &["device"],
        RawOp::ResetVm | RawOp::Events | RawOp::ResourcesChanged => &[],
        RawOp::Fire => &["device", "include_freed"],
        RawOp::SetQuota => &["quota"],
        RawOp::SetShare => &["device", "share"],
        RawOp::Migrate => &["to"],
    }
}

/// What earlier steps settled that later ones are checked against.
#[derive(Default)]
struct Progress {
    /// Snapshot names taken so far.
    snapshots: HashSet<String>,
    /// Per VM: devices plugged so far (handles `0..n`).
    plugged: Vec<usize>,
}

impl Parser<'_> {
    pub(super) fn steps(
        &self,
        raw: Vec<Spanned<RawStep>>,
        vms: &[VmDecl],
        destinations: &[DestinationDecl],
    ) -> Result<Vec<Step>, ScenarioError> {
        let mut progress = Progress {
            snapshots: HashSet::new(),
            plugged: vms.iter().map(VmDecl::initial_devices).collect(),
        };
        let mut steps = Vec::with_capacity(raw.len());
        for (i, step) in raw.into_iter().enumerate() {
            let context = format!("step {}", i + 1);
            let span = step.span();
            let line = line_col(self.src, span.start).0;
            let table = Table {
                span,
                context: &context,
            };
            steps.push(self.step(
                &table,
                line,
                step.into_inner(),
                vms,
                destinations,
                &mut progress,
            )?);
        }
        Ok(steps)
    }

    fn step(
        &self,
        table: &Table<'_>,
        line: usize,
        raw: RawStep,
        vms: &[VmDecl],
        destinations: &[DestinationDecl],
        progress: &mut Progress,
    ) -> Result<Step, ScenarioError> {
        let vm = vms.iter().position(|v| v.name == raw.vm).ok_or_else(|| {
            let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
            self.error(
                table,
                "vm",
                format!("no VM named {:?} (VMs: {})", raw.vm, names.join(", ")),
            )
        })?;
        let decl = &vms[vm];
        let allowed = allowed(raw.op);
        if let Some(extra) = raw.present().into_iter().find(|k| !allowed.contains(k)) {
            return Err(self.error(
                table,
                extra,
                format!("does not apply to op {:?}", raw.op.name()),
            ));
        }
        let plugged = progress.plugged.get(vm).copied().unwrap_or(0);
        let device = match allowed.contains(&"device") {
            false => 0,
            true => self.device_ref(table, &raw, decl, plugged)?,
        };
        let action = match raw.op {
            RawOp::Alloc => Action::Alloc(self.alloc(table, &raw, decl, device)?),
            RawOp::Free => Action::Free {
                device,
                kind: self.kind(table, &raw)?,
                indices: self.indices(table, &raw, decl, None)?,
            },
            RawOp::Park => {
                self.needs(table, decl, "op", feature::PARKED)?;
                Action::Park {
                    device,
                    kind: self.kind(table, &raw)?,
                    indices: self.indices(table, &raw, decl, None)?,
                }
            }
            RawOp::Retarget | RawOp::Activate => {
                let listed = raw.targets.as_ref().map(Vec::len);
                let indices = self.indices(table, &raw, decl, listed)?;
                let count = u16::try_from(indices.len()).unwrap_or(u16::MAX);
                Action::Retarget {
                    device,
                    kind: self.kind(table, &raw)?,
                    targets: self.targets(table, &raw, decl, count)?,
                    indices,
                    activate: raw.op == RawOp::Activate,
                }
            }
            RawOp::Query => Action::Query { device },
            RawOp::Reset => Action::Reset { device },
            RawOp::ResetVm => Action::ResetVm,
            RawOp::Fire => Action::Fire {
                device,
                include_freed: raw.include_freed.unwrap_or(false),
            },
            RawOp::Events => {
                self.needs(table, decl, "op", feature::EVENTS)?;
                Action::Events
            }
            RawOp::SetQuota => Action::SetQuota {
                quota: raw
                    .quota
                    .ok_or_else(|| self.error(table, "quota", "required: the new quota".into()))?,
            },
            RawOp::SetShare => Action::SetShare {
                device,
                share: raw
                    .share
                    .ok_or_else(|| {
                        self.error(table, "share", "required: a count or \"none\"".into())
                    })?
                    .0,
            },
            RawOp::AddDevice => {
                if device != plugged {
                    return Err(self.error(
                        table,
                        "device",
                        "is plugged already (hot-plugged devices are added once, in the \
                         order they are declared)"
                            .into(),
                    ));
                }
                if let Some(p) = progress.plugged.get_mut(vm) {
                    *p += 1;
                }
                Action::AddDevice { device }
            }
            RawOp::RemoveDevice => Action::RemoveDevice { device },
            RawOp::ResourcesChanged => Action::ResourcesChanged,
            RawOp::Migrate => Action::Migrate {
                to: self.destination_ref(table, &raw, decl, destinations)?,
            },
        };
        let expect = self.expect(table, raw.expect.unwrap_or_default(), &progress.snapshots)?;
        if let Some(name) = &raw.snapshot
            && !progress.snapshots.insert(name.clone())
        {
            return Err(self.error(
                table,
                "snapshot",
                format!("snapshot {name:?} is already taken by an earlier step"),
            ));
        }
        Ok(Step {
            line,
            vm,
            action,
            note: raw.note,
            snapshot: raw.snapshot,
            expect,
        })
    }

    /// An error unless the VM's driver asks for `bit` (`field` is what needs it).
    fn needs(
        &self,
        table: &Table<'_>,
        vm: &VmDecl,
        field: &str,
        bit: u64,
    ) -> Result<(), ScenarioError> {
        if vm.asks(bit) {
            return Ok(());
        }
        Err(self.error(
            table,
            field,
            format!(
                "needs feature {:?}, which VM {:?} does not ask for (its `features`)",
                feature_name(bit),
                vm.name
            ),
        ))
    }

    /// The device handle `device = "name"` names: plugged at start, or by an earlier
    /// `add_device` step (which itself names the next hot-plugged device).
    fn device_ref(
        &self,
        table: &Table<'_>,
        raw: &RawStep,
        vm: &VmDecl,
        plugged: usize,
    ) -> Result<usize, ScenarioError> {
        let names: Vec<&str> = vm.devices.iter().map(|d| d.name.as_str()).collect();
        let Some(name) = &raw.device else {
            return Err(self.error(
                table,
                "device",
                format!(
                    "op {:?} needs a device (VM {:?} has: {})",
                    raw.op.name(),
                    vm.name,
                    names.join(", ")
                ),
            ));
        };
        let handle = vm
            .devices
            .iter()
            .position(|d| &d.name == name)
            .ok_or_else(|| {
                self.error(
                    table,
                    "device",
                    format!(
                        "VM {:?} has no device {:?} (devices: {})",
                        vm.name,
                        name,
                        names.join(", ")
                    ),
                )
            })?;
        let hotplug = vm.devices.get(handle).is_some_and(|d| d.hotplug);
        if raw.op == RawOp::AddDevice && !hotplug {
            return Err(self.error(
                table,
                "device",
                format!("{name:?} is assigned at start: only a `hotplug = true` device is added"),
            ));
        }
        if raw.op != RawOp::AddDevice && handle >= plugged {
            return Err(self.error(
                table,
                "device",
                format!("{name:?} is not plugged yet: an earlier add_device step plugs it"),
            ));
        }
        Ok(handle)
    }

    fn destination_ref(
        &self,
        table: &Table<'_>,
        raw: &RawStep,
        vm: &VmDecl,
        destinations: &[DestinationDecl],
    ) -> Result<usize, ScenarioError> {
        let names: Vec<&str> = destinations.iter().map(|d| d.name.as_str()).collect();
        let Some(name) = &raw.to else {
            return Err(self.error(
                table,
                "to",
                format!("required: a destination ({})", names.join(", ")),
            ));
        };
        let to = destinations
            .iter()
            .position(|d| &d.name == name)
            .ok_or_else(|| {
                self.error(
                    table,
                    "to",
                    format!(
                        "no destination {name:?} (destinations: {})",
                        names.join(", ")
                    ),
                )
            })?;
        let units = destinations.get(to).map_or(0, |d| d.host.iommu_units);
        if let Some(d) = vm
            .devices
            .iter()
            .find(|d| d.amd_table.is_none() && d.unit >= units)
        {
            return Err(self.error(
                table,
                "to",
                format!(
                    "device {:?} is behind unit {}; {name:?} has {units} IOMMU unit(s)",
                    d.name, d.unit
                ),
            ));
        }
        Ok(to)
    }

    fn kind(&self, table: &Table<'_>, raw: &RawStep) -> Result<Kind, ScenarioError> {
        let Some(name) = &raw.kind else {
            return Err(self.error(
                table,
                "kind",
                "required: \"msi\", \"msix\" or \"ims\"".into(),
            ));
        };
        Kind::from_name(name).ok_or_else(|| {
            self.error(
                table,
                "kind",
                format!("unknown kind {name:?} (msi, msix, ims)"),
            )
        })
    }

    /// `indices = [...]` (a list: needs `INDEX_LIST`) or `first` with `count` (default:
    /// `listed`, the number of targets given, or 1).
    fn indices(
        &self,
        table: &Table<'_>,
        raw: &RawStep,
        vm: &VmDecl,
        listed: Option<usize>,
    ) -> Result<IndexSel, ScenarioError> {
        if let Some(list) = &raw.indices {
            if raw.first.is_some() || raw.count.is_some() {
                return Err(self.error(
                    table,
                    "indices",
                    "give either `indices` or `first` (with `count`)".into(),
                ));
            }
            self.needs(table, vm, "indices", feature::INDEX_LIST)?;
            if list.is_empty() || list.len() > usize::from(vm.max_batch) {
                return Err(self.error(
                    table,
                    "indices",
                    format!("needs 1..={} indices", vm.max_batch),
                ));
            }
            if list.windows(2).any(|w| w[0] >= w[1]) {
                return Err(self.error(table, "indices", "must be strictly increasing".into()));
            }
            return Ok(IndexSel::List(list.clone()));
        }
        let first = raw.first.ok_or_else(|| {
            self.error(
                table,
                "first",
                "required: the first table index (or `indices`)".into(),
            )
        })?;
        let count = match (raw.count, listed) {
            (None, Some(n)) => u16::try_from(n).unwrap_or(u16::MAX),
            (None, None) => 1,
            (Some(CountValue { min, max }), _) if min == max && min > 0 => min,
            (Some(_), _) => {
                return Err(self.error(table, "count", "must be one number ≥ 1".into()));
            }
        };
        Ok(IndexSel::Run { first, count })
    }

    fn alloc(
        &self,
        table: &Table<'_>,
        raw: &RawStep,
        vm: &VmDecl,
        device: usize,
    ) -> Result<AllocStep, ScenarioError> {
        let kind = self.kind(table, raw)?;
        let (min, max) = match (raw.count, raw.min, raw.max) {
            (Some(c), None, None) => (c.min, c.max),
            (Some(_), _, _) => {
                return Err(self.error(
                    table,
                    "count",
                    "give either `count` or `min`/`max`".into(),
                ));
            }
            (None, min, Some(max)) => (min.unwrap_or(1), max),
            (None, _, None) => {
                return Err(self.error(table, "count", "required: N or \"min..max\"".into()));
            }
        };
        if min == 0 || min > max {
            return Err(self.error(
                table,
                "count",
                format!("needs 1 ≤ min ≤ max (got {min}..{max})"),
            ));
        }
        if max > vm.max_batch {
            return Err(self.error(
                table,
                "count",
                format!(
                    "max {max} exceeds VM {:?}'s max_batch {}",
                    vm.name, vm.max_batch
                ),
            ));
        }
        let index = match raw.index.unwrap_or(IndexValue::Any) {
            IndexValue::Any => IndexSpec::Any,
            IndexValue::AnyContiguous => {
                self.needs(table, vm, "index", feature::CONTIGUOUS)?;
                IndexSpec::AnyContiguous
            }
            IndexValue::At(i) => IndexSpec::At(i),
        };
        let (targeting, targets) = match raw.targeting.unwrap_or(RawTargeting::PerVector) {
            RawTargeting::PerVector => (Targeting::PerVector, self.targets(table, raw, vm, max)?),
            RawTargeting::Spread => {
                self.needs(table, vm, "targeting", feature::SPREAD)?;
                let set = match &raw.targets {
                    Some(list) if list.is_empty() || list.len() > usize::from(vm.max_batch) => {
                        return Err(self.error(
                            table,
                            "targets",
                            format!("a spread needs 1..={} targets", vm.max_batch),
                        ));
                    }
                    Some(list) => list.len(),
                    // By default, one target per vCPU.
                    None => usize::try_from(vm.vcpus).unwrap_or(usize::MAX),
                };
                let set = u16::try_from(set).unwrap_or(u16::MAX);
                (Targeting::Spread, self.targets(table, raw, vm, set)?)
            }
            RawTargeting::Parked => {
                self.needs(table, vm, "targeting", feature::PARKED)?;
                if let Some(key) = ["targets", "spread", "vcpu", "vector"]
                    .into_iter()
                    .find(|k| raw.present().contains(k))
                {
                    return Err(self.error(
                        table,
                        key,
                        "a parked ALLOC has no targets (activate gives them)".into(),
                    ));
                }
                (Targeting::Parked, Vec::new())
            }
        };
        Ok(AllocStep {
            device,
            kind,
            index,
            min,
            max,
            targeting,
            targets,
            pasid: raw.pasid,
            fallback: match raw.fallback {
                None | Some(RawFallback::None) => Fallback::None,
                Some(RawFallback::Linux) => Fallback::Linux,
            },
        })
    }

    /// `count` destinations on the wire: the explicit `targets` list, or the spread rule.
    /// A target names a vCPU index (`vcpu`), which goes on the wire as its APIC ID when
    /// the VM asks for `APIC_ID`, or an APIC ID itself (`apic_id`, needs `APIC_ID`).
    fn targets(
        &self,
        table: &Table<'_>,
        raw: &RawStep,
        vm: &VmDecl,
        count: u16,
    ) -> Result<Vec<Dest>, ScenarioError> {
        if let Some(list) = &raw.targets {
            if raw.spread.is_some() || raw.vector.is_some() || raw.vcpu.is_some() {
                return Err(self.error(
                    table,
                    "targets",
                    "give either `targets` or a spread (`spread`, `vcpu`, `vector`)".into(),
                ));
            }
            if list.len() != usize::from(count) {
                return Err(self.error(
                    table,
                    "targets",
                    format!(
                        "{} targets for {count} vectors: give one per vector",
                        list.len()
                    ),
                ));
            }
            let mut out = Vec::with_capacity(list.len());
            for t in list {
                let vcpu = match (t.vcpu, t.apic_id) {
                    (Some(vcpu), None) => vm.wire_vcpu(vcpu),
                    (None, Some(apic_id)) => {
                        self.needs(table, vm, "targets", feature::APIC_ID)?;
                        apic_id
                    }
                    _ => {
                        return Err(self.error(
                            table,
                            "targets",
                            "each target names `vcpu` or `apic_id`, not both".into(),
                        ));
                    }
                };
                out.push(Dest {
                    vcpu,
                    vector: t.vector,
                });
            }
            return Ok(out);
        }
        let first_vcpu = raw.vcpu.unwrap_or(0);
        if first_vcpu >= vm.vcpus {
            return Err(self.error(
                table,
                "vcpu",
                format!("VM {:?} has {} vCPUs", vm.name, vm.vcpus),
            ));
        }
        let vector = raw.vector.unwrap_or(DEFAULT_SPREAD_VECTOR);
        let spread = raw.spread.unwrap_or(RawSpread::RoundRobin);
        // Interleaved, each vCPU takes the next vector in turn: count / vcpus per vCPU.
        let per_vcpu = match spread {
            RawSpread::Interleave => u32::from(count).div_ceil(vm.vcpus),
            RawSpread::RoundRobin | RawSpread::SameVcpu => u32::from(count),
        };
        if u32::from(vector) + per_vcpu > 0x100 {
            return Err(self.error(
                table,
                "vector",
                format!("{vector:#x} + {per_vcpu} vectors runs past 0xff"),
            ));
        }
        Ok((0..u32::from(count))
            .map(|i| {
                let (vcpu, offset) = match spread {
                    RawSpread::RoundRobin => ((first_vcpu + i) % vm.vcpus, i),
                    RawSpread::SameVcpu => (first_vcpu, i),
                    RawSpread::Interleave => ((first_vcpu + i) % vm.vcpus, i / vm.vcpus),
                };
                Dest {
                    vcpu: vm.wire_vcpu(vcpu),
                    vector: (u32::from(vector) + offset) as u8,
                }
            })
            .collect())
    }
}
