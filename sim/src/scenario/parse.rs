//! From text to a validated [`Scenario`]: serde reads the shape (unknown keys refused),
//! then every value and every reference is checked, each error naming line and field.

use super::error::{Position, ScenarioError};
use super::locate::{context_at, find_key, key_at, line_col};
use super::model::{
    Action, AllocStep, Dest, DeviceDecl, Expect, Fallback, HostDecl, Scenario, Step, VmDecl,
};
use super::raw::{
    CountValue, IndexValue, RawDevice, RawExpect, RawFallback, RawHost, RawOp, RawScenario,
    RawSpread, RawStep, RawTarget, RawVm,
};
use pvirq_host::config::{MAX_IMS_SLOTS, MAX_MSIX_TABLE};
use pvirq_proto::{IndexSpec, Kind, MAX_BATCH_LIMIT, Resource, Status};
use std::collections::HashSet;
use std::ops::Range;

/// Default `max_batch` of a VM.
const DEFAULT_MAX_BATCH: u16 = 64;
/// Default first guest vector of a spread.
const DEFAULT_SPREAD_VECTOR: u8 = 0x40;

/// Parses and validates a scenario. `origin` names the file in errors.
pub fn parse(src: &str, origin: &str) -> Result<Scenario, ScenarioError> {
    let raw: RawScenario = toml::from_str(src).map_err(|e| toml_error(src, origin, &e))?;
    Parser { src, origin }.scenario(raw)
}

/// A serde/toml error, with line, column, table and field recovered from its span.
fn toml_error(src: &str, origin: &str, e: &toml::de::Error) -> ScenarioError {
    let message = e.message().trim().to_string();
    let span = e.span();
    let quoted = ["unknown field `", "missing field `", "duplicate key `"]
        .iter()
        .find_map(|p| message.split_once(p))
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(field, _)| field.to_string());
    let field = quoted.or_else(|| span.as_ref().and_then(|s| key_at(src, s)));
    let position = span.as_ref().map(|s| {
        let (line, column) = line_col(src, s.start);
        Position { line, column }
    });
    ScenarioError {
        origin: origin.to_string(),
        position,
        context: span.and_then(|s| context_at(src, s.start)),
        field,
        message,
    }
}

struct Parser<'a> {
    src: &'a str,
    origin: &'a str,
}

/// A table being validated: its span and how errors name it.
struct Table<'t> {
    span: Range<usize>,
    context: &'t str,
}

impl Parser<'_> {
    fn error(&self, table: &Table<'_>, field: &str, message: String) -> ScenarioError {
        let key = field.rsplit('.').next().unwrap_or(field);
        let at = find_key(self.src, &table.span, key).unwrap_or(table.span.start);
        let (line, column) = line_col(self.src, at);
        ScenarioError {
            origin: self.origin.to_string(),
            position: Some(Position { line, column }),
            context: Some(table.context.to_string()),
            field: Some(field.to_string()),
            message,
        }
    }

    fn scenario(&self, raw: RawScenario) -> Result<Scenario, ScenarioError> {
        let host = self.host(raw.host)?;
        let mut vms: Vec<VmDecl> = Vec::new();
        let mut requester_ids = HashSet::new();
        for (i, vm) in raw.vm.into_iter().enumerate() {
            let context = format!("vm {}", i + 1);
            let span = vm.span();
            let table = Table {
                span,
                context: &context,
            };
            let decl = self.vm(&table, vm.into_inner(), &host, &mut requester_ids)?;
            if vms.iter().any(|v| v.name == decl.name) {
                return Err(self.error(
                    &table,
                    "name",
                    format!("VM {:?} is declared twice", decl.name),
                ));
            }
            vms.push(decl);
        }
        let mut snapshots = HashSet::new();
        let mut steps = Vec::new();
        for (i, step) in raw.step.into_iter().enumerate() {
            let context = format!("step {}", i + 1);
            let span = step.span();
            let line = line_col(self.src, span.start).0;
            let table = Table {
                span,
                context: &context,
            };
            steps.push(self.step(&table, line, step.into_inner(), &vms, &mut snapshots)?);
        }
        Ok(Scenario {
            name: raw.name.unwrap_or_else(|| self.origin.to_string()),
            description: raw.description,
            host,
            vms,
            steps,
        })
    }

    fn host(&self, raw: RawHost) -> Result<HostDecl, ScenarioError> {
        let table = Table {
            span: self
                .src
                .find("[host]")
                .map_or(0..self.src.len(), |s| s..self.src.len()),
            context: "host",
        };
        let host = HostDecl {
            iommu_units: raw.iommu_units.unwrap_or(1),
            irtes_per_unit: raw.irtes_per_unit,
            cpus: raw.cpus,
            first_vector: raw.first_vector.unwrap_or(0x20),
            end_vector: raw.end_vector.unwrap_or(0xEC),
            reserved_vectors: raw.reserved_vectors.unwrap_or_default(),
        };
        if host.iommu_units == 0 {
            return Err(self.error(&table, "iommu_units", "must be at least 1".into()));
        }
        if host.irtes_per_unit == 0 || host.irtes_per_unit > 65_536 {
            return Err(self.error(&table, "irtes_per_unit", "must be 1..=65536".into()));
        }
        if host.cpus == 0 {
            return Err(self.error(&table, "cpus", "must be at least 1".into()));
        }
        if host.first_vector >= host.end_vector {
            return Err(self.error(
                &table,
                "end_vector",
                format!("must be above first_vector ({:#x})", host.first_vector),
            ));
        }
        Ok(host)
    }

    fn vm(
        &self,
        table: &Table<'_>,
        raw: RawVm,
        host: &HostDecl,
        requester_ids: &mut HashSet<u16>,
    ) -> Result<VmDecl, ScenarioError> {
        if raw.name.is_empty() {
            return Err(self.error(table, "name", "must not be empty".into()));
        }
        if raw.vcpus == 0 {
            return Err(self.error(table, "vcpus", "must be at least 1".into()));
        }
        let max_batch = raw.max_batch.unwrap_or(DEFAULT_MAX_BATCH);
        if max_batch == 0 || max_batch > MAX_BATCH_LIMIT {
            return Err(self.error(table, "max_batch", format!("must be 1..={MAX_BATCH_LIMIT}")));
        }
        let mut devices: Vec<DeviceDecl> = Vec::new();
        for (j, dev) in raw.device.into_iter().enumerate() {
            let context = format!("{}, device {}", table.context, j + 1);
            let dtable = Table {
                span: dev.span(),
                context: &context,
            };
            let decl = self.device(&dtable, dev.into_inner(), host)?;
            if devices.iter().any(|d| d.name == decl.name) {
                return Err(self.error(
                    &dtable,
                    "name",
                    format!("VM {:?} already has a device {:?}", raw.name, decl.name),
                ));
            }
            if !requester_ids.insert(decl.requester_id) {
                return Err(self.error(
                    &dtable,
                    "requester_id",
                    format!(
                        "{:#06x} is already used by another device",
                        decl.requester_id
                    ),
                ));
            }
            devices.push(decl);
        }
        Ok(VmDecl {
            name: raw.name,
            vcpus: raw.vcpus,
            quota: raw.quota,
            max_batch,
            devices,
            features: pvirq_proto::feature::V1,
            apic_ids: None,
        })
    }

    fn device(
        &self,
        table: &Table<'_>,
        raw: RawDevice,
        host: &HostDecl,
    ) -> Result<DeviceDecl, ScenarioError> {
        let d = DeviceDecl {
            name: raw.name,
            requester_id: raw.requester_id,
            unit: raw.unit.unwrap_or(0),
            msi: raw.msi.unwrap_or(0),
            msix: raw.msix.unwrap_or(0),
            ims: raw.ims.unwrap_or(0),
        };
        if d.name.is_empty() {
            return Err(self.error(table, "name", "must not be empty".into()));
        }
        if d.unit >= host.iommu_units {
            return Err(self.error(
                table,
                "unit",
                format!("the host has {} IOMMU unit(s)", host.iommu_units),
            ));
        }
        if d.msi != 0 && (!d.msi.is_power_of_two() || d.msi > 32) {
            return Err(self.error(table, "msi", "must be 0 or a power of two up to 32".into()));
        }
        if d.msix > MAX_MSIX_TABLE {
            return Err(self.error(table, "msix", format!("must be at most {MAX_MSIX_TABLE}")));
        }
        if d.ims > MAX_IMS_SLOTS {
            return Err(self.error(table, "ims", format!("must be at most {MAX_IMS_SLOTS}")));
        }
        if d.msi == 0 && d.msix == 0 && d.ims == 0 {
            return Err(self.error(table, "msix", "the device needs msi, msix or ims".into()));
        }
        Ok(d)
    }

    fn step(
        &self,
        table: &Table<'_>,
        line: usize,
        raw: RawStep,
        vms: &[VmDecl],
        snapshots: &mut HashSet<String>,
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
        let allowed: &[&str] = match raw.op {
            RawOp::Alloc => &[
                "device", "kind", "index", "count", "min", "max", "targets", "spread", "vector",
                "vcpu", "pasid", "fallback",
            ],
            RawOp::Free => &["device", "kind", "first", "count"],
            RawOp::Retarget => &[
                "device", "kind", "first", "count", "targets", "spread", "vector", "vcpu",
            ],
            RawOp::Query | RawOp::Reset => &["device"],
            RawOp::ResetVm => &[],
            RawOp::Fire => &["device", "include_freed"],
        };
        if let Some(extra) = raw.present().into_iter().find(|k| !allowed.contains(k)) {
            return Err(self.error(
                table,
                extra,
                format!("does not apply to op {:?}", op_name(raw.op)),
            ));
        }
        let device = match raw.op {
            RawOp::ResetVm => None,
            _ => Some(self.device_ref(table, &raw, decl)?),
        };
        let device = device.unwrap_or(0);
        let action = match raw.op {
            RawOp::Alloc => Action::Alloc(self.alloc(table, &raw, decl, device)?),
            RawOp::Free => {
                let count = match raw.count {
                    None => 1,
                    Some(CountValue { min, max }) if min == max && min > 0 => min,
                    Some(_) => {
                        return Err(self.error(table, "count", "must be one number ≥ 1".into()));
                    }
                };
                Action::Free {
                    device,
                    kind: self.kind(table, &raw)?,
                    first: self.first(table, &raw)?,
                    count,
                }
            }
            RawOp::Retarget => {
                let count = match (raw.count, &raw.targets) {
                    (Some(CountValue { min, max }), _) if min == max && min > 0 => min,
                    (Some(_), _) => {
                        return Err(self.error(table, "count", "must be one number ≥ 1".into()));
                    }
                    (None, Some(t)) => u16::try_from(t.len()).unwrap_or(u16::MAX),
                    (None, None) => 1,
                };
                Action::Retarget {
                    device,
                    kind: self.kind(table, &raw)?,
                    first: self.first(table, &raw)?,
                    targets: self.targets(table, &raw, decl, count)?,
                }
            }
            RawOp::Query => Action::Query { device },
            RawOp::Reset => Action::Reset { device },
            RawOp::ResetVm => Action::ResetVm,
            RawOp::Fire => Action::Fire {
                device,
                include_freed: raw.include_freed.unwrap_or(false),
            },
        };
        let expect = self.expect(table, raw.expect.unwrap_or_default(), snapshots)?;
        if let Some(name) = &raw.snapshot
            && !snapshots.insert(name.clone())
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

    fn device_ref(
        &self,
        table: &Table<'_>,
        raw: &RawStep,
        vm: &VmDecl,
    ) -> Result<usize, ScenarioError> {
        let names: Vec<&str> = vm.devices.iter().map(|d| d.name.as_str()).collect();
        let Some(name) = &raw.device else {
            return Err(self.error(
                table,
                "device",
                format!(
                    "op {:?} needs a device (VM {:?} has: {})",
                    op_name(raw.op),
                    vm.name,
                    names.join(", ")
                ),
            ));
        };
        vm.devices
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
            })
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

    fn first(&self, table: &Table<'_>, raw: &RawStep) -> Result<u32, ScenarioError> {
        raw.first
            .ok_or_else(|| self.error(table, "first", "required: the first table index".into()))
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
            IndexValue::At(i) => IndexSpec::At(i),
        };
        Ok(AllocStep {
            device,
            kind,
            index,
            min,
            max,
            targeting: pvirq_proto::Targeting::PerVector,
            targets: self.targets(table, raw, vm, max)?,
            pasid: raw.pasid,
            fallback: match raw.fallback {
                None | Some(RawFallback::None) => Fallback::None,
                Some(RawFallback::Linux) => Fallback::Linux,
            },
        })
    }

    /// `count` destinations: the explicit `targets` list, or the spread rule.
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
            return Ok(list
                .iter()
                .map(|&RawTarget { vcpu, vector }| Dest { vcpu, vector })
                .collect());
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
        if u32::from(vector) + u32::from(count) > 0x100 {
            return Err(self.error(
                table,
                "vector",
                format!("{vector:#x} + {count} vectors runs past 0xff"),
            ));
        }
        let spread = raw.spread.unwrap_or(RawSpread::RoundRobin);
        Ok((0..u32::from(count))
            .map(|i| Dest {
                vcpu: match spread {
                    RawSpread::RoundRobin => (first_vcpu + i) % vm.vcpus,
                    RawSpread::SameVcpu => first_vcpu,
                },
                vector: (u32::from(vector) + i) as u8,
            })
            .collect())
    }

    fn expect(
        &self,
        table: &Table<'_>,
        raw: RawExpect,
        snapshots: &HashSet<String>,
    ) -> Result<Expect, ScenarioError> {
        let status = match &raw.status {
            None => None,
            Some(s) => Some(Status::from_name(s).ok_or_else(|| {
                let names: Vec<&str> = Status::ALL.iter().map(|s| s.name()).collect();
                self.error(
                    table,
                    "expect.status",
                    format!("unknown status {s:?} ({})", names.join(", ")),
                )
            })?),
        };
        let resource = match &raw.resource {
            None => None,
            Some(r) => Some(Resource::from_name(r).ok_or_else(|| {
                let names: Vec<&str> = Resource::ALL.iter().map(|r| r.name()).collect();
                self.error(
                    table,
                    "expect.resource",
                    format!("unknown resource {r:?} ({})", names.join(", ")),
                )
            })?),
        };
        if let Some(name) = &raw.host_equals
            && !snapshots.contains(name)
        {
            return Err(self.error(
                table,
                "expect.host_equals",
                format!("no earlier step has snapshot = {name:?}"),
            ));
        }
        Ok(Expect {
            status,
            resource,
            available: raw.available,
            granted: raw.granted,
            fallback: raw.fallback,
            quota_left: raw.quota_left,
            vm_held: raw.vm_held,
            irtes_free: raw.irtes_free,
            vectors_free: raw.vectors_free,
            delivered: raw.delivered,
            blocked: raw.blocked,
            host_equals: raw.host_equals,
        })
    }
}

fn op_name(op: RawOp) -> &'static str {
    match op {
        RawOp::Alloc => "alloc",
        RawOp::Free => "free",
        RawOp::Retarget => "retarget",
        RawOp::Query => "query",
        RawOp::Reset => "reset",
        RawOp::ResetVm => "reset_vm",
        RawOp::Fire => "fire",
    }
}
