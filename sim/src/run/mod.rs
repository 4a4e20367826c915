//! Running a scenario: the hosts ([`hosts`]), one guest side per VM ([`Side`]), every
//! step through the guest driver, the virtqueue and the host device, or through the VMM's
//! calls on the device; a [`Report`] of what happened.

mod answer;
mod backend;
mod channel_side;
mod error;
mod expect;
mod fire;
mod guest_side;
mod guest_tables;
mod hosts;
mod kvm_backend;
mod outcome;
mod records;
mod requests;
mod side;
mod view;
mod vmm_steps;

pub use backend::{Backend, MemoryBackend, guest_image_lacks, kvm_backend, kvm_unusable};
pub use channel_side::ChannelSide;
pub use error::RunError;
pub use guest_side::GuestSide;
pub use kvm_backend::KvmBackend;
pub use outcome::{AllocOutcome, EventView, GrantView, QueryView, StepError};
pub use side::Side;

use crate::report::{FireCounts, HostSnapshot, Report, StepRecord, VmSummary};
use crate::scenario::{Action, Scenario, Step, VmDecl, feature_names};
use answer::{Answer, At, refusal_record};
use hosts::Hosts;
use pvirq_proto::feature;
use std::collections::HashMap;
use view::DeviceView;

/// One VM as the run knows it.
struct VmRun {
    side: Side,
    /// The scenario's record of what its guest holds, per device handle.
    devices: Vec<DeviceView>,
    /// The host it is on (0: `[host]`, `i + 1`: destination `i`).
    host: usize,
}

/// Runs `scenario` on fresh hosts with `backend` delivering into the guests.
pub fn run(scenario: &Scenario, backend: &mut dyn Backend) -> Result<Report, RunError> {
    if let Some(lack) = backend.lacks(scenario) {
        return Err(lack);
    }
    let hosts = Hosts::new(scenario)?;
    let initial_host = hosts.snapshot(0);
    let mut vms = Vec::with_capacity(scenario.vms.len());
    for (i, decl) in scenario.vms.iter().enumerate() {
        let side = backend.side(hosts.main(), i, decl)?;
        vms.push(VmRun {
            side,
            devices: vec![DeviceView::default(); decl.devices.len()],
            host: 0,
        });
    }
    let mut runner = Runner {
        scenario,
        hosts,
        vms,
        at: At { step: 0, line: 0 },
    };
    let mut snapshots: HashMap<String, HostSnapshot> = HashMap::new();
    let mut steps = Vec::with_capacity(scenario.steps.len());
    let mut totals = FireCounts::default();
    for (i, step) in scenario.steps.iter().enumerate() {
        runner.at = At {
            step: i + 1,
            line: step.line,
        };
        let outcome = runner.step(step)?;
        runner.update_expectations(step.vm);
        if let Some(f) = outcome.fire {
            totals.fired += f.fired;
            totals.delivered += f.delivered;
            totals.blocked += f.blocked;
            totals.misrouted += f.misrouted;
            if let Some(o) = f.observed {
                totals.observed = Some(totals.observed.unwrap_or(0) + o);
            }
        }
        let mut record = runner.record(i, step, outcome);
        record.checks = expect::checks(&step.expect, &record, &snapshots);
        if let Some(name) = &step.snapshot {
            snapshots.insert(name.clone(), record.host.clone());
        }
        steps.push(record);
    }
    let expectations_checked = steps.iter().map(|s| s.checks.len()).sum();
    let expectations_failed = steps
        .iter()
        .map(|s| s.checks.iter().filter(|c| !c.met).count())
        .sum();
    Ok(Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        backend: backend.name().to_string(),
        initial_host,
        steps,
        final_host: runner.hosts.snapshot(0),
        destinations: runner.hosts.reports(),
        vms: runner.summaries(),
        fire_totals: totals,
        host_faults: runner.hosts.faults(),
        invariant_violations: runner.hosts.violations(),
        expectations_checked,
        expectations_failed,
    })
}

struct Runner<'a> {
    scenario: &'a Scenario,
    hosts: Hosts,
    vms: Vec<VmRun>,
    at: At,
}

impl Runner<'_> {
    fn vm_run(&mut self, vm: usize) -> Result<&mut VmRun, RunError> {
        self.vms.get_mut(vm).ok_or(RunError::NoChannel(vm))
    }

    fn decl(&self, vm: usize) -> Result<&VmDecl, RunError> {
        self.scenario.vms.get(vm).ok_or(RunError::NoChannel(vm))
    }

    fn step(&mut self, step: &Step) -> Result<Answer, RunError> {
        let vm = step.vm;
        match &step.action {
            Action::Alloc(a) => self.alloc(vm, a),
            Action::Free {
                device,
                kind,
                indices,
            } => self.free(vm, *device, *kind, indices),
            Action::Retarget {
                device,
                kind,
                indices,
                targets,
                activate,
            } => self.retarget(vm, *device, *kind, indices, Some(targets), *activate),
            Action::Park {
                device,
                kind,
                indices,
            } => self.retarget(vm, *device, *kind, indices, None, false),
            Action::Query { device } => self.query(vm, *device),
            Action::Reset { device } => self.reset(vm, *device),
            Action::ResetVm => self.reset_vm(vm),
            Action::Fire {
                device,
                include_freed,
            } => self.fire(vm, *device, *include_freed),
            Action::Events => self.events(vm),
            Action::SetQuota { quota } => self.set_quota(vm, *quota),
            Action::SetShare { device, share } => self.set_share(vm, *device, *share),
            Action::AddDevice { device } => self.add_device(vm, *device),
            Action::RemoveDevice { device } => self.remove_device(vm, *device),
            Action::ResourcesChanged => self.resources_changed(vm),
            Action::Migrate { to } => self.migrate(vm, *to),
        }
    }

    /// Where each vector of VM `vm` must be delivered, from its target: the APIC ID the
    /// target names (`APIC_ID`) or that of the vCPU index it names.
    fn update_expectations(&mut self, vm: usize) {
        let Some(decl) = self.scenario.vms.get(vm) else {
            return;
        };
        if let Some(run) = self.vms.get_mut(vm) {
            for view in &mut run.devices {
                view.expect_with(|d| decl.delivery_apic_id(d.vcpu).map(|a| (a, d.vector)));
            }
        }
    }

    fn record(&self, i: usize, step: &Step, out: Answer) -> StepRecord {
        let decl = self.scenario.vms.get(step.vm);
        let run = self.vms.get(step.vm);
        let occupancy = run.and_then(|r| r.side.vm()).map(|v| v.occupancy());
        let (held, quota) = occupancy.map_or((0, 0), |o| (o.held, o.quota));
        let host = run.map_or(0, |r| r.host);
        StepRecord {
            step: i + 1,
            line: step.line,
            op: step.action.op().to_string(),
            vm: decl.map_or_else(String::new, |d| d.name.clone()),
            device: step
                .action
                .device()
                .and_then(|d| decl.and_then(|v| v.devices.get(d)))
                .map(|d| d.name.clone()),
            request: out.request,
            status: out.status.name().to_string(),
            answer: out.answer,
            refusal: out.refusal.map(refusal_record),
            fallback: out.fallback,
            attempts: out.attempts,
            count: out.count,
            available: out.available,
            quota_left: quota.saturating_sub(held),
            vm_held: held,
            vm_quota: quota,
            host_name: self.hosts.name(host),
            host: self.hosts.snapshot(host),
            grants: out.grants,
            query: out.query,
            events: out.events,
            migration: out.migration,
            fire: out.fire,
            note: step.note.clone(),
            checks: Vec::new(),
        }
    }

    fn summaries(&self) -> Vec<VmSummary> {
        self.scenario
            .vms
            .iter()
            .zip(&self.vms)
            .map(|(decl, run)| {
                let vm = run.side.vm();
                let occupancy = vm.map(|v| v.occupancy());
                let negotiated = vm.map_or(0, |v| v.features());
                VmSummary {
                    name: decl.name.clone(),
                    vcpus: decl.vcpus,
                    apic_ids: decl.apic_ids.clone(),
                    features: feature_names(negotiated & feature::EXTENSIONS)
                        .into_iter()
                        .map(String::from)
                        .collect(),
                    host: self.hosts.name(run.host),
                    held: occupancy.as_ref().map_or(0, |o| o.held),
                    quota: occupancy.as_ref().map_or(decl.quota, |o| o.quota),
                    devices: decl
                        .devices
                        .iter()
                        .enumerate()
                        .map(|(i, d)| {
                            let held = occupancy
                                .as_ref()
                                .and_then(|o| o.per_device.get(i).copied())
                                .unwrap_or(0);
                            (d.name.clone(), held)
                        })
                        .collect(),
                }
            })
            .collect()
    }
}
