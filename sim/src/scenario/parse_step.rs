//! Validating `[[step]]` tables: the VM and device they name, the keys their op takes,
//! counts, indices and targets, and the feature bits their request needs.

use super::error::ScenarioError;
use super::locate::line_col;
use super::model::{DestinationDecl, VmDecl};
use super::parse::{Parser, Table, feature_name};
use super::raw::{RawOp, RawStep};
use super::step::{Action, Step};
use pvirq_proto::{Kind, feature};
use std::collections::HashSet;
use toml::Spanned;

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
    pub(super) fn needs(
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

    pub(super) fn kind(&self, table: &Table<'_>, raw: &RawStep) -> Result<Kind, ScenarioError> {
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
}
