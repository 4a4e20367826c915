//! Phase 3: every failure point of the full pvirq path on the real kernel — guest driver,
//! virtqueue, device, transaction, `VfioBackend` — made to fail in turn. After each,
//! nothing is held that was not before: not in the kernel (its `vfio-msix` IRQ handlers in
//! /proc/interrupts, and the triggers VFIO itself holds), not in the backend, not in the
//! VM's quota or grants. Then the same request without the fault succeeds, and is undone.
//!
//! Two requests, with six MSI-X vectors held around them (indices 0–3, 6 and 9): an ALLOC
//! of 5 at the lowest free indices, 4–5, 7–8 and 10, which the backend enables with three
//! `VFIO_DEVICE_SET_IRQS` calls, one per run; and a FREE of indices 0–1. The points:
//!
//! - route stage and route commit: every call of the route layer (`Faulty` routes), as a
//!   shortage and as a failure;
//! - backend enable: each `VFIO_DEVICE_SET_IRQS` the ALLOC makes, refused with `ENOSPC`,
//!   `EBADF` and `EINVAL` before it reaches the kernel (`FailNth`);
//! - reply write: each guest-memory write of the reply, through a reply buffer the guest
//!   cut up so that the Nth write leaves guest memory (`TamperChannel`).

use crate::procfs::lines;
use crate::report::{GrantSeen, HeldState, PathFaultCase, PathFaults};
use crate::routes::EventfdRoutes;
use pvirq_guest::{Error as DriverError, Options};
use pvirq_host::fault::{FaultKind, FaultPlan, Faulty, LayerCall};
use pvirq_host::routes::RouteId;
use pvirq_host::vfio::{
    FailNth, IommuKind, IrqHost, IrqSet, OpenedDevice, VfioBackend, VfioDeviceIrqs, vfio_index,
};
use pvirq_host::{DeviceSpec, Vm, VmConfig};
use pvirq_proto::{
    Alloc, IndexRange, IndexSpec, Kind, Operation, Outcome, Refusal, Response, Target, Targeting,
};
use pvirq_tests::tamper::{BadBuffer, ReplyFault, TamperChannel};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use vmm_sys_util::eventfd::EventFd;

/// Why the walk could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// Eventfds.
    #[error("eventfds: {0}")]
    Io(#[from] std::io::Error),
    /// The VM.
    #[error("VM: {0}")]
    Host(#[from] pvirq_host::HostError),
    /// The channel.
    #[error("channel: {0}")]
    Sim(#[from] pvirq_sim::SimError),
}

/// The backend, shared: the VM calls it, the walk arms its failure injector and reads
/// what it has enabled.
type SharedBackend = Arc<Mutex<VfioBackend<FailNth<VfioDeviceIrqs>>>>;

const DEVICE: u32 = 0;
const QUOTA: u32 = 64;
const TARGET_VECTOR: u8 = 0x42;
/// Held around every request: the ALLOC's lowest free indices are then three runs.
const BASE: [u32; 6] = [0, 1, 2, 3, 6, 9];
/// The ALLOC's size (min = max).
const ALLOC_COUNT: u16 = 5;
/// The FREE: indices 0 and 1.
const FREE_RANGE: IndexRange = IndexRange {
    kind: Kind::MsiX,
    first: 0,
    count: 2,
};
/// No request here has more failure points of one kind than this.
const MAX_POINTS: u64 = 64;

/// One of the two requests walked.
#[derive(Clone, Copy)]
enum Request {
    Alloc,
    Free,
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Request::Alloc => "alloc",
            Request::Free => "free",
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the guest got, in the report's words.
fn outcome(result: Result<Response<'_>, DriverError>) -> String {
    match result {
        Ok(response) => match response.outcome {
            Outcome::Refused(Refusal::NoSpace {
                resource,
                available,
            }) => format!("no-space {} {available}", resource.name()),
            Outcome::Refused(Refusal::DeviceError { resource }) => {
                format!("device-error {}", resource.name())
            }
            Outcome::Refused(other) => format!("refused: {other}"),
            Outcome::Allocated { grants, .. } => format!("ok:{}", grants.len()),
            Outcome::Freed { count, .. } => format!("ok:{count}"),
            other => format!("unexpected: {other:?}"),
        },
        Err(DriverError::NoReply) => "no-reply".into(),
        Err(e) => format!("error: {e}"),
    }
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOSPC => "ENOSPC",
        libc::EBADF => "EBADF",
        libc::EINVAL => "EINVAL",
        _ => "errno",
    }
}

fn call_name(call: Option<LayerCall>) -> &'static str {
    match call {
        Some(LayerCall::RouteAdd) => "route-add",
        Some(LayerCall::RouteRemove) => "route-remove",
        Some(LayerCall::RouteUpdate) => "route-update",
        Some(LayerCall::RouteCommit) => "route-commit",
        Some(LayerCall::Enable) => "enable",
        None => "none",
    }
}

/// The VM over the real device, with a failure injector at each point.
struct Rig {
    ch: TamperChannel,
    backend: SharedBackend,
    plan: FaultPlan,
    eventfds: Arc<BTreeMap<RouteId, Arc<EventFd>>>,
    /// Its own handle on the device, for the `Fire` call that reads VFIO's state.
    probe: VfioDeviceIrqs,
    table: u32,
    targets: Vec<Target>,
    errors: Vec<String>,
}

impl Rig {
    fn new(opened: &OpenedDevice, sysfs: &Path) -> Result<Rig, WalkError> {
        let host = FailNth::new(VfioDeviceIrqs::new(opened.device.clone()));
        let backend: SharedBackend =
            Arc::new(Mutex::new(VfioBackend::new(host, IommuKind::detect(sysfs))));
        let table = lock(&backend).table_size(Kind::MsiX);
        let routes = EventfdRoutes::new(QUOTA)?;
        let eventfds = routes.eventfds();
        let plan = FaultPlan::new();
        let config = VmConfig {
            quota: QUOTA,
            num_vcpus: 2,
            max_batch: 64,
            devices: vec![DeviceSpec {
                requester_id: 0x0018,
                msi_max: 0,
                msix_table_size: u16::try_from(table).unwrap_or(0),
                ims_slots: 0,
                ..DeviceSpec::default()
            }],
            ..VmConfig::default()
        };
        let vm = Vm::new(
            config,
            vec![Box::new(Arc::clone(&backend))],
            Box::new(Faulty::new(routes, plan.clone())),
        )?;
        Ok(Rig {
            ch: TamperChannel::for_vm(vm, Options::default())?,
            backend,
            plan,
            eventfds,
            probe: VfioDeviceIrqs::new(opened.device.clone()),
            table,
            targets: (0..u32::from(ALLOC_COUNT))
                .map(|i| Target::new(i % 2, TARGET_VECTOR))
                .collect(),
            errors: Vec::new(),
        })
    }

    fn run(&mut self, request: Request) -> String {
        let op = match request {
            Request::Alloc => Operation::Alloc(Alloc {
                kind: Kind::MsiX,
                index: IndexSpec::Any,
                min: ALLOC_COUNT,
                max: ALLOC_COUNT,
                pasid: None,
                targeting: Targeting::PerVector,
                targets: &self.targets,
            }),
            Request::Free => Operation::Free(FREE_RANGE.into()),
        };
        let driver = self.ch.driver();
        let mut reply = vec![0u8; driver.max_reply_len()];
        outcome(driver.call(DEVICE, op, &mut reply))
    }

    fn held_indices(&self) -> BTreeSet<u32> {
        self.ch
            .vm()
            .grants(DEVICE)
            .into_iter()
            .filter(|(kind, _, _)| *kind == Kind::MsiX)
            .map(|(_, index, _)| index)
            .collect()
    }

    /// Brings the VM back to holding exactly [`BASE`], one request per index.
    fn restore_base(&mut self) {
        let now = self.held_indices();
        let base: BTreeSet<u32> = BASE.into_iter().collect();
        for &index in now.difference(&base) {
            let range = IndexRange {
                kind: Kind::MsiX,
                first: index,
                count: 1,
            };
            let driver = self.ch.driver();
            let mut reply = vec![0u8; driver.max_reply_len()];
            let got = outcome(driver.call(DEVICE, Operation::Free(range.into()), &mut reply));
            if got != "ok:1" {
                self.errors.push(format!("free {index}: {got}"));
            }
        }
        for &index in base.difference(&now) {
            let one = Alloc {
                kind: Kind::MsiX,
                index: IndexSpec::At(index),
                min: 1,
                max: 1,
                pasid: None,
                targeting: Targeting::PerVector,
                targets: self.targets.get(..1).unwrap_or_default(),
            };
            let driver = self.ch.driver();
            let mut reply = vec![0u8; driver.max_reply_len()];
            let got = outcome(driver.call(DEVICE, Operation::Alloc(one), &mut reply));
            if got != "ok:1" {
                self.errors.push(format!("alloc {index}: {got}"));
            }
        }
    }

    /// The routes whose eventfd VFIO signals when asked to fire every vector: the
    /// triggers the kernel holds. Each eventfd is drained first.
    fn attached(&mut self) -> (Vec<RouteId>, i32) {
        for fd in self.eventfds.values() {
            let _ = fd.read();
        }
        let fire = IrqSet::Fire {
            index: vfio_index(Kind::MsiX).unwrap_or(2),
            start: 0,
            count: self.table,
        };
        match self.probe.set_irqs(&fire) {
            // The kernel signals synchronously, before the call returns.
            Ok(_) => {
                let fired = self
                    .eventfds
                    .iter()
                    .filter(|(_, fd)| fd.read().is_ok())
                    .map(|(id, _)| *id)
                    .collect();
                (fired, 0)
            }
            Err(errno) => (Vec::new(), errno),
        }
    }

    fn observe(&mut self) -> HeldState {
        let (attached, fire_errno) = self.attached();
        let mut grants: Vec<GrantSeen> = self
            .ch
            .vm()
            .grants(DEVICE)
            .into_iter()
            .filter(|(kind, _, _)| *kind == Kind::MsiX)
            .map(|(_, index, r)| GrantSeen {
                index,
                route: r.route,
                data: r.message.data,
            })
            .collect();
        grants.sort_by_key(|g| g.index);
        HeldState {
            lines: lines(),
            attached,
            fire_errno,
            backend_enabled: lock(&self.backend).enabled(Kind::MsiX),
            held: self.ch.vm().occupancy().held,
            grants,
        }
    }

    /// Runs `request` with the fault `arm` sets up. `None` if `hit` says the fault was
    /// never reached (the request went through untouched, and was undone); otherwise the
    /// case, with `point` still to be named by the caller when it is empty.
    fn case(
        &mut self,
        request: Request,
        arm: impl FnOnce(&mut Rig),
        hit: impl FnOnce(&Rig, &str) -> bool,
    ) -> Option<PathFaultCase> {
        let before = self.observe();
        arm(self);
        let outcome = self.run(request);
        let reached = hit(self, &outcome);
        self.plan.disarm();
        lock(&self.backend).host_mut().disarm();
        if !reached {
            self.restore_base();
            return None;
        }
        let after = self.observe();
        let retry = self.run(request);
        let retried = self.observe();
        self.restore_base();
        let restored = self.observe();
        Some(PathFaultCase {
            request: request.name().into(),
            outcome,
            before,
            after,
            retry,
            retried,
            restored,
            ..PathFaultCase::default()
        })
    }

    /// Every call of the route layer, failed as a shortage and as a failure.
    fn route_faults(&mut self, request: Request, cases: &mut Vec<PathFaultCase>) {
        for (kind, name) in [
            (FaultKind::Exhausted, "exhausted"),
            (FaultKind::Failed, "failed"),
        ] {
            for nth in 1..=MAX_POINTS {
                let injected = self.plan.injected();
                let mut failed_call = None;
                let case = self.case(
                    request,
                    |rig| rig.plan.fail_nth(nth, kind),
                    |rig, _| {
                        failed_call = usize::try_from(nth - 1)
                            .ok()
                            .and_then(|i| rig.plan.log().get(i).copied());
                        rig.plan.injected() > injected
                    },
                );
                let Some(mut case) = case else { break };
                case.point = call_name(failed_call).into();
                case.nth = nth;
                case.fault = name.into();
                cases.push(case);
            }
        }
    }

    /// Each `VFIO_DEVICE_SET_IRQS` of the ALLOC, refused with each errno.
    fn enable_faults(&mut self, cases: &mut Vec<PathFaultCase>) {
        for errno in [libc::ENOSPC, libc::EBADF, libc::EINVAL] {
            for nth in 1..=MAX_POINTS {
                let refused = lock(&self.backend).host().refused();
                let case = self.case(
                    Request::Alloc,
                    |rig| lock(&rig.backend).host_mut().arm(nth, errno),
                    |rig, _| lock(&rig.backend).host().refused() > refused,
                );
                let Some(mut case) = case else { break };
                case.point = "enable".into();
                case.nth = nth;
                case.fault = errno_name(errno).into();
                cases.push(case);
            }
        }
    }

    /// Each guest-memory write of the reply, failed: `good` 8-byte pieces of the reply
    /// buffer are writable, the rest lies outside guest memory.
    fn reply_faults(&mut self, request: Request, cases: &mut Vec<PathFaultCase>) {
        for good in 0..MAX_POINTS {
            let case = self.case(
                request,
                |rig| {
                    rig.ch.arm(ReplyFault {
                        good: usize::try_from(good).unwrap_or(0),
                        piece: 8,
                        bad: BadBuffer::Outside,
                    })
                },
                |_, outcome| outcome == "no-reply",
            );
            let Some(mut case) = case else { break };
            case.point = "reply-write".into();
            case.nth = good + 1;
            case.fault = "outside".into();
            cases.push(case);
        }
    }

    /// `VFIO_DEVICE_SET_IRQS` calls the ALLOC makes without a fault (then undone).
    fn alloc_calls(&mut self) -> u64 {
        lock(&self.backend).host_mut().disarm();
        let got = self.run(Request::Alloc);
        let calls = lock(&self.backend).host().calls();
        if got != format!("ok:{ALLOC_COUNT}") {
            self.errors.push(format!("fault-free alloc: {got}"));
        }
        self.restore_base();
        calls
    }
}

/// Walks every failure point of both requests on the opened device.
pub fn run(opened: &OpenedDevice, sysfs: &Path) -> Result<PathFaults, WalkError> {
    let mut rig = Rig::new(opened, sysfs)?;
    rig.restore_base();
    let mut w = PathFaults {
        base: rig.held_indices().into_iter().collect(),
        alloc_calls: rig.alloc_calls(),
        ..PathFaults::default()
    };
    for request in [Request::Alloc, Request::Free] {
        rig.route_faults(request, &mut w.cases);
        rig.reply_faults(request, &mut w.cases);
    }
    rig.enable_faults(&mut w.cases);
    // Everything back: the VM holds nothing, and neither does the kernel.
    let reset = rig.ch.driver().reset_device(DEVICE);
    if let Err(e) = reset {
        rig.errors.push(format!("reset: {e}"));
    }
    w.errors = rig.errors;
    Ok(w)
}
