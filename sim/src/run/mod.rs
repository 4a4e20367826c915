//! Running a scenario: one [`Host`], one [`Channel`] per VM, every guest request through
//! the guest driver, the virtqueue and the host device; a [`Report`] of what happened.

mod backend;
mod error;
mod expect;
mod guest_side;
mod kvm_backend;
mod outcome;
mod side;
mod view;

pub use backend::{Backend, MemoryBackend, kvm_backend, kvm_unusable};
pub use error::RunError;
pub use guest_side::GuestSide;
pub use kvm_backend::KvmBackend;
pub use outcome::{AllocOutcome, EventView, GrantView, QueryView, StepError};
pub use side::Side;

use crate::SimError;
use crate::report::{FireCounts, HostSnapshot, RefusalRecord, Report, StepRecord, VmSummary};
use crate::scenario::{Action, AllocStep, Dest, Fallback, Scenario, Step};
use pvirq_host::model::ModelHost;
use pvirq_proto::{IndexRange, IndexSpec, Refusal, Status, Target};
use std::collections::HashMap;
use view::{DeviceView, runs};

struct VmRun {
    side: Option<Side>,
    devices: Vec<DeviceView>,
}

/// What one request step produced, before the common columns are added.
struct Outcome {
    request: String,
    status: Status,
    answer: String,
    refusal: Option<Refusal>,
    fallback: bool,
    attempts: u32,
    count: Option<u32>,
    available: Option<u32>,
    fire: Option<FireCounts>,
}

impl Outcome {
    fn new(request: String) -> Self {
        Outcome {
            request,
            status: Status::Ok,
            answer: String::new(),
            refusal: None,
            fallback: false,
            attempts: 1,
            count: None,
            available: None,
            fire: None,
        }
    }

    fn refused(mut self, refusal: Refusal) -> Self {
        self.status = refusal.status();
        self.answer = format!("refused: {}", refusal.status());
        self.refusal = Some(refusal);
        self
    }
}

fn refusal_record(r: Refusal) -> RefusalRecord {
    let (resource, available) = match r {
        Refusal::NoSpace {
            resource,
            available,
        } => (Some(resource.name().to_string()), Some(available)),
        Refusal::DeviceError { resource } => (Some(resource.name().to_string()), None),
        _ => (None, None),
    };
    RefusalRecord {
        status: r.status().name().to_string(),
        resource,
        available,
        text: r.to_string(),
    }
}

/// Runs `scenario` on a fresh host with `backend` delivering into the guests.
pub fn run(scenario: &Scenario, backend: &mut dyn Backend) -> Result<Report, RunError> {
    let host = ModelHost::new(&scenario.host.config())?;
    for device in scenario.vms.iter().flat_map(|vm| &vm.devices) {
        host.place(device.requester_id, device.unit)?;
    }
    let initial_host = HostSnapshot::of(&host.occupancy());
    let mut vms = Vec::with_capacity(scenario.vms.len());
    for (i, decl) in scenario.vms.iter().enumerate() {
        let side = backend.side(&host, i, decl)?;
        vms.push(VmRun {
            side: Some(side),
            devices: vec![DeviceView::default(); decl.devices.len()],
        });
    }
    let mut runner = Runner {
        scenario,
        host,
        vms,
        backend,
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
        backend: runner.backend.name().to_string(),
        initial_host,
        steps,
        final_host: HostSnapshot::of(&runner.host.occupancy()),
        vms: runner.summaries(),
        fire_totals: totals,
        host_faults: runner.host.faults().count,
        invariant_violations: runner.host.check_invariants().err().unwrap_or_default(),
        expectations_checked,
        expectations_failed,
    })
}

/// The step being run, for errors.
#[derive(Clone, Copy)]
struct At {
    step: usize,
    line: usize,
}

impl At {
    fn fail(self, source: impl Into<SimError>) -> RunError {
        RunError::Driver {
            step: self.step,
            line: self.line,
            source: source.into(),
        }
    }
}

struct Runner<'a> {
    scenario: &'a Scenario,
    host: ModelHost,
    vms: Vec<VmRun>,
    backend: &'a mut dyn Backend,
    at: At,
}

impl Runner<'_> {
    fn channel(&mut self, vm: usize) -> Result<(&mut Side, &mut Vec<DeviceView>), RunError> {
        let run = self.vms.get_mut(vm).ok_or(RunError::NoChannel(vm))?;
        let side = run.side.as_mut().ok_or(RunError::NoChannel(vm))?;
        Ok((side, &mut run.devices))
    }

    fn step(&mut self, step: &Step) -> Result<Outcome, RunError> {
        let at = self.at;
        match &step.action {
            Action::Alloc(a) => self.alloc(step.vm, a),
            Action::Free {
                device,
                kind,
                first,
                count,
            } => {
                let range = IndexRange {
                    kind: *kind,
                    first: *first,
                    count: *count,
                };
                let last = u64::from(*first) + u64::from(*count) - 1;
                let out = Outcome::new(format!("free {kind} {first}-{last}"));
                let (channel, views) = self.channel(step.vm)?;
                match channel.free(*device, range) {
                    Ok(count) => {
                        if let Some(view) = views.get_mut(*device) {
                            range.indices().for_each(|i| view.retire(*kind, i));
                        }
                        Ok(Outcome {
                            answer: format!("freed {count}"),
                            count: Some(count),
                            ..out
                        })
                    }
                    Err(e) => refused_or(out, e, at),
                }
            }
            Action::Retarget {
                device,
                kind,
                first,
                targets,
            } => {
                let count = u16::try_from(targets.len()).unwrap_or(u16::MAX);
                let range = IndexRange {
                    kind: *kind,
                    first: *first,
                    count,
                };
                let wire: Vec<Target> = targets.iter().map(|d| d.target()).collect();
                let out = Outcome::new(format!(
                    "retarget {kind} {first}{} → {}",
                    if count > 1 {
                        format!("-{}", u64::from(*first) + u64::from(count) - 1)
                    } else {
                        String::new()
                    },
                    dests(targets)
                ));
                let (channel, views) = self.channel(step.vm)?;
                match channel.retarget(*device, range, &wire) {
                    Ok(count) => {
                        if let Some(view) = views.get_mut(*device) {
                            for (i, d) in range.indices().zip(targets) {
                                view.retarget(*kind, i, *d);
                            }
                        }
                        Ok(Outcome {
                            answer: format!("moved {count}"),
                            count: Some(count),
                            ..out
                        })
                    }
                    Err(e) => refused_or(out, e, at),
                }
            }
            Action::Query { device } => {
                let out = Outcome::new(String::from("query"));
                let (channel, _) = self.channel(step.vm)?;
                match channel.query(*device) {
                    Ok((granted, available)) => Ok(Outcome {
                        answer: format!("holds {granted}, available {available}"),
                        count: Some(granted),
                        available: Some(available),
                        ..out
                    }),
                    Err(e) => refused_or(out, e, at),
                }
            }
            Action::Reset { device } => {
                let out = Outcome::new(String::from("reset device"));
                let (channel, views) = self.channel(step.vm)?;
                match channel.reset_device(*device) {
                    Ok(count) => {
                        if let Some(view) = views.get_mut(*device) {
                            view.retire_all();
                        }
                        Ok(Outcome {
                            answer: format!("freed {count}"),
                            count: Some(count),
                            ..out
                        })
                    }
                    Err(e) => refused_or(out, e, at),
                }
            }
            Action::ResetVm => self.reset_vm(step.vm),
            Action::Fire {
                device,
                include_freed,
            } => self.fire(step.vm, *device, *include_freed),
        }
    }

    fn alloc(&mut self, vm: usize, a: &AllocStep) -> Result<Outcome, RunError> {
        let index = match a.index {
            IndexSpec::Any => String::from("any"),
            IndexSpec::AnyContiguous => String::from("any-contiguous"),
            IndexSpec::At(i) => format!("@{i}"),
        };
        let count = if a.min == a.max {
            a.max.to_string()
        } else {
            format!("{}..{}", a.min, a.max)
        };
        let mut request = format!("alloc {} {index} ×{count}", a.kind);
        if let Some(p) = a.pasid {
            request.push_str(&format!(" pasid {p}"));
        }
        if a.fallback == Fallback::Linux {
            request.push_str(" (fallback)");
        }
        let mut out = Outcome::new(request);
        let at = self.at;
        let (side, views) = self.channel(vm)?;
        let outcome = side.alloc(a).map_err(|e| at.fail(e))?;
        out.attempts = outcome.attempts;
        out.fallback = outcome.attempts > 1;
        if let Some(refusal) = outcome.refused {
            // Refused (after falling back, if the policy did): the answer is the last refusal.
            out.count = Some(0);
            return Ok(out.refused(refusal));
        }
        let mut indices = Vec::with_capacity(outcome.grants.len());
        if let Some(view) = views.get_mut(a.device) {
            for (g, d) in outcome.grants.iter().zip(&a.targets) {
                view.grant(a.kind, g.index, g.message, *d);
                indices.push(g.index);
            }
        }
        out.answer = format!("granted {} @{}", indices.len(), runs(&indices));
        out.count = Some(indices.len() as u32);
        out.refusal = outcome.first_refusal;
        Ok(out)
    }

    fn reset_vm(&mut self, vm: usize) -> Result<Outcome, RunError> {
        let out = Outcome::new(String::from("virtio reset"));
        let at = self.at;
        let run = self.vms.get_mut(vm).ok_or(RunError::NoChannel(vm))?;
        let side = run.side.take().ok_or(RunError::NoChannel(vm))?;
        let before = side.vm().occupancy().held;
        let side = side.reset_virtio().map_err(|e| at.fail(e))?;
        let freed = before.saturating_sub(side.vm().occupancy().held);
        run.side = Some(side);
        run.devices.iter_mut().for_each(DeviceView::retire_all);
        Ok(Outcome {
            answer: format!("re-initialised, freed {freed}"),
            count: Some(freed),
            ..out
        })
    }

    fn fire(&mut self, vm: usize, device: usize, include_freed: bool) -> Result<Outcome, RunError> {
        let requester_id = self
            .scenario
            .vms
            .get(vm)
            .and_then(|v| v.devices.get(device))
            .map_or(0, |d| d.requester_id);
        let at = self.at;
        let host = self.host.clone();
        let (side, views) = self.channel(vm)?;
        let view = views.get(device).cloned().unwrap_or_default();
        let counts = match side.fire(&host, device, requester_id, &view, include_freed) {
            Ok(c) => c,
            Err(StepError::Failed(e)) => return Err(at.fail(e)),
            Err(StepError::Refused(r)) => {
                return Err(at.fail(SimError::GuestReport(refusal_text(r))));
            }
        };
        let mut request = format!("fire {} held", view.live.len());
        if include_freed {
            request.push_str(&format!(" + {} freed", view.retired.len()));
        }
        let mut out = Outcome::new(request);
        out.answer = format!("delivered {}, blocked {}", counts.delivered, counts.blocked);
        out.fire = Some(counts);
        Ok(out)
    }

    fn record(&self, i: usize, step: &Step, out: Outcome) -> StepRecord {
        let decl = self.scenario.vms.get(step.vm);
        let occupancy = self
            .vms
            .get(step.vm)
            .and_then(|r| r.side.as_ref())
            .map(|c| c.vm().occupancy());
        let (held, quota) = occupancy.map_or((0, 0), |o| (o.held, o.quota));
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
            host: HostSnapshot::of(&self.host.occupancy()),
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
                let occupancy = run.side.as_ref().map(|c| c.vm().occupancy());
                VmSummary {
                    name: decl.name.clone(),
                    held: occupancy.as_ref().map_or(0, |o| o.held),
                    quota: decl.quota,
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

/// A refusal becomes the step's answer; any other failure ends the run.
fn refused_or(out: Outcome, e: StepError, at: At) -> Result<Outcome, RunError> {
    match e {
        StepError::Refused(r) => Ok(out.refused(r)),
        StepError::Failed(e) => Err(at.fail(e)),
    }
}

/// A fire step is never refused by the device; should a guest say so, the run ends.
fn refusal_text(_: Refusal) -> &'static str {
    "a fire step was refused"
}

/// Destinations in short: `vCPU3:0x50`, or `vCPU0:0x40 +3`.
fn dests(targets: &[Dest]) -> String {
    match targets {
        [] => String::from("-"),
        [d] => format!("vCPU{}:{:#x}", d.vcpu, d.vector),
        [d, rest @ ..] => format!("vCPU{}:{:#x} +{}", d.vcpu, d.vector, rest.len()),
    }
}
