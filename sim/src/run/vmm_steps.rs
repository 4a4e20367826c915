//! The steps of issue 13's host side and issue 14's migration: the guest reading its
//! event queue, and what the VMM does to a running VM (quota, shares, hotplug, shared
//! resources released, live migration to another host).

use super::answer::Answer;
use super::records::{device_name, event_record, migration_record};
use super::{RunError, Runner};
use crate::SimError;
use crate::report::MigrationRecord;
use pvirq_proto::EventBody;

impl Runner<'_> {
    /// The guest polls its event queue and applies what it reads; the runner's record of
    /// what it holds follows (new messages, revoked vectors, a removed device's vectors).
    pub(super) fn events(&mut self, vm: usize) -> Result<Answer, RunError> {
        let scenario = self.scenario;
        let decl = scenario.vms.get(vm).ok_or(RunError::NoChannel(vm))?;
        let out = Answer::new(String::from("poll events"));
        let at = self.at;
        let run = self.vm_run(vm)?;
        let seen = match run.side.events() {
            Ok(seen) => seen,
            Err(e) => return at.refused_or(out, e),
        };
        for e in &seen {
            let view = e
                .event
                .body
                .device()
                .and_then(|d| run.devices.get_mut(d as usize));
            match (e.event.body, view) {
                (
                    EventBody::Reprogram {
                        kind,
                        index,
                        message,
                        ..
                    },
                    Some(view),
                ) if e.applied => view.reprogram(kind, index, message),
                (EventBody::Revoke { kind, index, .. }, Some(view)) if e.applied => {
                    view.retire(kind, index)
                }
                (EventBody::DeviceRemoved { .. }, Some(view)) => view.retire_all(),
                _ => {}
            }
        }
        let applied = seen.iter().filter(|e| e.applied).count();
        let answer = match (seen.len(), applied) {
            (0, _) => String::from("no events"),
            (1, 0) => String::from("1 event"),
            (n, 0) => format!("{n} events"),
            (n, a) => format!("{n} events, {a} applied"),
        };
        Ok(Answer {
            answer,
            count: Some(seen.len() as u32),
            events: seen.iter().map(|e| event_record(decl, e)).collect(),
            ..out
        })
    }

    pub(super) fn set_quota(&mut self, vm: usize, quota: u32) -> Result<Answer, RunError> {
        let run = self.vm_run(vm)?;
        run.side.set_quota(quota);
        let now = run.side.vm().map_or(0, |v| v.occupancy().quota);
        let answer = if now == quota {
            format!("quota {quota}")
        } else {
            // A live driver without the event queue sees the change after a reset.
            format!("staged: quota {now} until a reset")
        };
        Ok(Answer::done(format!("set quota {quota}"), answer))
    }

    pub(super) fn set_share(
        &mut self,
        vm: usize,
        device: usize,
        share: Option<u32>,
    ) -> Result<Answer, RunError> {
        let shown = share.map_or_else(|| String::from("none"), |s| s.to_string());
        let at = self.at;
        let run = self.vm_run(vm)?;
        run.side
            .set_device_share(device, share)
            .map_err(|e| at.fail(e))?;
        Ok(Answer::done(
            format!("set share {shown}"),
            format!("share {shown}"),
        ))
    }

    pub(super) fn add_device(&mut self, vm: usize, device: usize) -> Result<Answer, RunError> {
        let scenario = self.scenario;
        let decl = scenario.vms.get(vm).ok_or(RunError::NoChannel(vm))?;
        let spec = decl
            .devices
            .get(device)
            .map(|d| d.spec())
            .ok_or(RunError::NoChannel(vm))?;
        let at = self.at;
        let at_host = self.vm_run(vm)?.host;
        let host = self.hosts.get(at_host).clone();
        let run = self.vm_run(vm)?;
        let handle = run.side.add_device(&host, spec).map_err(|e| at.fail(e))?;
        if handle as usize != device {
            return Err(at.fail(SimError::GuestReport(
                "a plugged device got another handle than its place in the VM's devices",
            )));
        }
        Ok(Answer::done(
            format!("plug {}", device_name(decl, handle)),
            format!("handle {handle}"),
        ))
    }

    pub(super) fn remove_device(&mut self, vm: usize, device: usize) -> Result<Answer, RunError> {
        let at = self.at;
        let run = self.vm_run(vm)?;
        let held = |run: &super::VmRun| {
            run.side
                .vm()
                .and_then(|v| v.occupancy().per_device.get(device).copied())
                .unwrap_or(0)
        };
        let before = held(run);
        run.side.remove_device(device).map_err(|e| at.fail(e))?;
        let freed = before.saturating_sub(held(run));
        Ok(Answer {
            count: Some(freed),
            ..Answer::done(String::from("unplug"), format!("unplugged, freed {freed}"))
        })
    }

    pub(super) fn resources_changed(&mut self, vm: usize) -> Result<Answer, RunError> {
        self.vm_run(vm)?.side.resources_changed();
        Ok(Answer::done(
            String::from("resources changed"),
            String::from("told"),
        ))
    }

    /// Live migration to destination `to`. A destination that refuses (a driver that
    /// cannot be told of changed grants, features it does not offer) leaves the VM where
    /// it was, resumed: the step says so rather than ending the run.
    pub(super) fn migrate(&mut self, vm: usize, to: usize) -> Result<Answer, RunError> {
        let scenario = self.scenario;
        let decl = scenario.vms.get(vm).ok_or(RunError::NoChannel(vm))?;
        let name = scenario
            .destinations
            .get(to)
            .map_or_else(String::new, |d| d.name.clone());
        let host_index = to + 1;
        let dest = self.hosts.get(host_index).clone();
        let at = self.at;
        let run = self.vm_run(vm)?;
        let held = run.side.vm().map_or(0, |v| v.occupancy().held);
        let out = Answer::new(format!("migrate → {name}"));
        match run.side.migrate(&dest) {
            Ok(fates) => {
                run.host = host_index;
                let record = migration_record(decl, name, &fates, held);
                Ok(Answer {
                    answer: format!(
                        "kept {}, reprogrammed {}, revoked {}",
                        record.kept, record.reprogrammed, record.revoked
                    ),
                    count: Some(held),
                    migration: Some(record),
                    ..out
                })
            }
            Err(e @ (SimError::Restore(_) | SimError::Host(_))) => Ok(Answer {
                answer: String::from("refused: stays, resumed"),
                migration: Some(MigrationRecord {
                    to: name,
                    migrated: false,
                    refused: Some(e.to_string()),
                    kept: 0,
                    reprogrammed: 0,
                    revoked: 0,
                    fates: Vec::new(),
                    source_released: 0,
                }),
                ..out
            }),
            Err(e) => Err(at.fail(e)),
        }
    }
}
