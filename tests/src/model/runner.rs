//! The runner: one scenario against a real host and the model, compared after every step.

use super::reference::{Model, ModelDevice};
use super::scenario::{Answer, Scenario, Step};
use pvirq_host::model::{ModelConfig, ModelHost};
use pvirq_host::model::{RemapConfig, VectorConfig};
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::{Vm, VmConfig};
use pvirq_proto::{Kind, MsiMessage, Operation, Refusal, Request};
use std::collections::{BTreeMap, BTreeSet};

/// First guest route id of every VM's [`MemoryRoutes`].
const FIRST_ROUTE: u32 = 24;

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

/// The IRTE a remappable message selects (MSI: the block's base plus the message number).
fn irte_of(message: MsiMessage) -> u16 {
    pvirq_proto::RemappableMsi::decode(message)
        .map(|m| m.irte_index() as u16)
        .unwrap_or(u16::MAX)
}

/// The live host side of a run.
struct Real {
    host: ModelHost,
    vms: Vec<Vm>,
}

fn build(s: &Scenario) -> Result<Real, String> {
    let host = ModelHost::new(&ModelConfig {
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
        ..ModelConfig::default()
    })
    .map_err(|e| format!("host: {e}"))?;
    for shape in &s.vms {
        for (device, unit) in shape.devices.iter().zip(&shape.units) {
            host.place(device.requester_id, *unit)
                .map_err(|e| format!("place: {e}"))?;
        }
    }
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
                    ..VmConfig::default()
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
                .map(|(k, i, r)| (k, i, irte_of(r.message)))
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
                let count = real.vms[v].reset_all();
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
                    .and_then(|d| d.to().map(|(apic, vector)| (Some(d.vm), apic, vector)));
                let expected = model
                    .fire(source, message)
                    .map(|(v, vcpu, vector)| (real.host.vm_id(&real.vms[v]), vcpu, vector));
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
