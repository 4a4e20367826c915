//! The steps in which the guest sends a request (ALLOC, FREE, RETARGET, PARK, QUERY,
//! RESET), resets its channel, or has its device fire: what each asked, what it was
//! answered, and the runner's record of what the guest holds.

use super::answer::{Answer, dests};
use super::outcome::StepError;
use super::records::{grant_records, query_record, target_label};
use super::view::DeviceView;
use super::{RunError, Runner};
use crate::SimError;
use crate::report::runs;
use crate::scenario::{AllocStep, Dest, Fallback, IndexSel};
use pvirq_proto::{GrantMode, IndexSpec, Kind, Target, Targeting, feature};

/// `first-last`, or `first` for a run of one, or the list's runs.
fn selection(sel: &IndexSel) -> String {
    match sel {
        IndexSel::Run { first, count } if *count > 1 => {
            format!("{first}-{}", u64::from(*first) + u64::from(*count) - 1)
        }
        IndexSel::Run { first, .. } => first.to_string(),
        IndexSel::List(list) => format!("list {}", runs(list)),
    }
}

impl Runner<'_> {
    pub(super) fn alloc(&mut self, vm: usize, a: &AllocStep) -> Result<Answer, RunError> {
        let scenario = self.scenario;
        let decl = scenario.vms.get(vm).ok_or(RunError::NoChannel(vm))?;
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
        match a.targeting {
            Targeting::PerVector => {}
            Targeting::Spread => request.push_str(&format!(" spread/{}", a.targets.len())),
            Targeting::Parked => request.push_str(" parked"),
        }
        if let Some(p) = a.pasid {
            request.push_str(&format!(" pasid {p}"));
        }
        if a.fallback == Fallback::Linux {
            request.push_str(" (fallback)");
        }
        let mut out = Answer::new(request);
        let at = self.at;
        let run = self.vm_run(vm)?;
        let outcome = run.side.alloc(a).map_err(|e| at.fail(e))?;
        out.attempts = outcome.attempts;
        out.fallback = outcome.attempts > 1;
        if let Some(refusal) = outcome.refused {
            // Refused (after falling back, if the policy did): the answer is the last refusal.
            out.count = Some(0);
            return Ok(out.refused(refusal));
        }
        let n = outcome.grants.len();
        if let Some(view) = run.devices.get_mut(a.device) {
            for (i, g) in outcome.grants.iter().enumerate() {
                let dest = if g.parked { None } else { a.dest_of(i, n) };
                view.grant(a.kind, g.index, g.message, dest);
            }
        }
        let indices: Vec<u32> = outcome.grants.iter().map(|g| g.index).collect();
        out.answer = format!("granted {n} @{}", runs(&indices));
        let posted = outcome
            .grants
            .iter()
            .filter(|g| g.mode == GrantMode::Posted)
            .count();
        match posted {
            0 => {}
            p if p == n => out.answer.push_str(", posted"),
            p => out.answer.push_str(&format!(", {p} posted")),
        }
        if n > 0 && outcome.grants.iter().all(|g| g.parked) {
            out.answer.push_str(", parked");
        }
        out.count = Some(n as u32);
        out.refusal = outcome.first_refusal;
        out.grants = grant_records(decl, a, &outcome.grants);
        Ok(out)
    }

    pub(super) fn free(
        &mut self,
        vm: usize,
        device: usize,
        kind: Kind,
        sel: &IndexSel,
    ) -> Result<Answer, RunError> {
        let out = Answer::new(format!("free {kind} {}", selection(sel)));
        let at = self.at;
        let run = self.vm_run(vm)?;
        match run.side.free(device, kind, sel) {
            Ok(count) => {
                if let Some(view) = run.devices.get_mut(device) {
                    sel.indices().into_iter().for_each(|i| view.retire(kind, i));
                }
                Ok(Answer {
                    answer: format!("freed {count}"),
                    count: Some(count),
                    ..out
                })
            }
            Err(e) => at.refused_or(out, e),
        }
    }

    /// RETARGET (`to` given; `activate` names it so) or PARK (`to = None`).
    pub(super) fn retarget(
        &mut self,
        vm: usize,
        device: usize,
        kind: Kind,
        sel: &IndexSel,
        to: Option<&Vec<Dest>>,
        activate: bool,
    ) -> Result<Answer, RunError> {
        let label = target_label(self.decl(vm)?);
        let (request, done) = match (to, activate) {
            (Some(t), false) => (
                format!("retarget {kind} {} → {}", selection(sel), dests(label, t)),
                "moved",
            ),
            (Some(t), true) => (
                format!("activate {kind} {} → {}", selection(sel), dests(label, t)),
                "activated",
            ),
            (None, _) => (format!("park {kind} {}", selection(sel)), "parked"),
        };
        let out = Answer::new(request);
        let wire: Option<Vec<Target>> = to.map(|t| t.iter().map(|d| d.target()).collect());
        let at = self.at;
        let run = self.vm_run(vm)?;
        match run.side.retarget(device, kind, sel, wire.as_deref()) {
            Ok(count) => {
                if let Some(view) = run.devices.get_mut(device) {
                    for (n, i) in sel.indices().into_iter().enumerate() {
                        view.retarget(kind, i, to.and_then(|t| t.get(n).copied()));
                    }
                }
                Ok(Answer {
                    answer: format!("{done} {count}"),
                    count: Some(count),
                    ..out
                })
            }
            Err(e) => at.refused_or(out, e),
        }
    }

    pub(super) fn query(&mut self, vm: usize, device: usize) -> Result<Answer, RunError> {
        let info = self.decl(vm)?.asks(feature::INFO);
        let out = Answer::new(String::from("query"));
        let at = self.at;
        let run = self.vm_run(vm)?;
        match run.side.query(device, info) {
            Ok(q) => Ok(Answer {
                answer: format!("holds {}, available {}", q.granted, q.available),
                count: Some(q.granted),
                available: Some(q.available),
                query: q.ext.as_ref().map(query_record),
                ..out
            }),
            Err(e) => at.refused_or(out, e),
        }
    }

    pub(super) fn reset(&mut self, vm: usize, device: usize) -> Result<Answer, RunError> {
        let out = Answer::new(String::from("reset device"));
        let at = self.at;
        let run = self.vm_run(vm)?;
        match run.side.reset_device(device) {
            Ok(count) => {
                if let Some(view) = run.devices.get_mut(device) {
                    view.retire_all();
                }
                Ok(Answer {
                    answer: format!("freed {count}"),
                    count: Some(count),
                    ..out
                })
            }
            Err(e) => at.refused_or(out, e),
        }
    }

    pub(super) fn reset_vm(&mut self, vm: usize) -> Result<Answer, RunError> {
        let out = Answer::new(String::from("virtio reset"));
        let at = self.at;
        let run = self.vm_run(vm)?;
        let held = |run: &super::VmRun| run.side.vm().map_or(0, |v| v.occupancy().held);
        let before = held(run);
        run.side.reset_virtio().map_err(|e| at.fail(e))?;
        let freed = before.saturating_sub(held(run));
        run.devices.iter_mut().for_each(DeviceView::retire_all);
        Ok(Answer {
            answer: format!("re-initialised, freed {freed}"),
            count: Some(freed),
            ..out
        })
    }

    pub(super) fn fire(
        &mut self,
        vm: usize,
        device: usize,
        include_freed: bool,
    ) -> Result<Answer, RunError> {
        let at = self.at;
        let at_host = self.vm_run(vm)?.host;
        let host = self.hosts.get(at_host).clone();
        let run = self.vm_run(vm)?;
        let view = run.devices.get(device).cloned().unwrap_or_default();
        let counts = match run.side.fire(&host, device, &view, include_freed) {
            Ok(c) => c,
            Err(StepError::Failed(e)) => return Err(at.fail(e)),
            Err(StepError::Refused(_)) => {
                return Err(at.fail(SimError::GuestReport("a fire step was refused")));
            }
        };
        let mut request = format!("fire {} held", view.live.len());
        if include_freed {
            request.push_str(&format!(" + {} freed", view.retired.len()));
        }
        let mut out = Answer::new(request);
        out.answer = format!("delivered {}, blocked {}", counts.delivered, counts.blocked);
        out.fire = Some(counts);
        Ok(out)
    }
}
