//! Fault injection through the extensions' request shapes (issue 13), as `fault_walk.rs`
//! does for version 1's: for each new shape (SPREAD over a count the host shortened,
//! PARKED, ANY_CONTIGUOUS, APIC-ID targets, index lists, PARK, activation, the extended
//! QUERY), every reserving layer call (backend enable; route add, update, remove and
//! commit) is made to fail in turn, N = 1, 2, ... until the request completes without
//! reaching the fault, as a shortage and as an internal failure. The driver must get
//! NO_SPACE or DEVICE_ERROR naming the layer, the host and the VM must be exactly as
//! before ([DEV-9]), every invariant must hold, and the request retried must get
//! byte for byte the reply a fault-free run gets. Then the reply write itself fails at
//! every point: no reply, nothing changed ([DEV-12]).
//!
//! The guest library negotiates version 1 only for now, so requests are encoded with
//! `pvirq-proto` and handed to the VM ([`Vm::handle`]) as a transport would.

use pvirq_host::fault::{FaultKind, FaultPlan, Faulty, LayerCall, Shortfall, ShortfallCap};
use pvirq_host::model::{ModelConfig, ModelHost, RemapConfig};
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::{ApicIds, BufferSink, Vm, VmConfig};
use pvirq_proto::{
    Alloc, IndexList, IndexRange, IndexSpec, Indices, Kind, Le32, Operation, Outcome, Refusal,
    Request, Resource, Response, Retarget, RetargetTo, Status, Target, Targeting, feature,
};
use pvirq_tests::setup::{Snapshot, dev, snapshot};

/// A VM on a posting host whose backends can be made to back fewer vectors than sized
/// and whose every layer counts (and can fail) its reserving calls.
struct Rig {
    host: ModelHost,
    vm: Vm,
    plan: FaultPlan,
    cap: ShortfallCap,
}

/// APIC IDs 0, 2, 4, 6, vector 0x50 on.
fn apic_targets(n: usize) -> Vec<Target> {
    (0..n)
        .map(|i| Target::new(2 * (i % 4) as u32, 0x50 + i as u8))
        .collect()
}

fn entries(indices: &[u32]) -> Vec<Le32> {
    indices.iter().map(|i| Le32::new(*i)).collect()
}

fn list(kind: Kind, entries: &[Le32]) -> Indices<'_> {
    Indices::List {
        kind,
        indices: IndexList::new(entries).unwrap(),
    }
}

fn run(kind: Kind, first: u32, count: u16) -> Indices<'static> {
    Indices::Run(IndexRange { kind, first, count })
}

fn alloc<'a>(
    kind: Kind,
    index: IndexSpec,
    (min, max): (u16, u16),
    pasid: Option<u32>,
    targeting: Targeting,
    targets: &'a [Target],
) -> Operation<'a> {
    Operation::Alloc(Alloc {
        kind,
        index,
        min,
        max,
        pasid,
        targeting,
        targets,
    })
}

impl Rig {
    fn new() -> Rig {
        let plan = FaultPlan::new();
        let cap = ShortfallCap::new(usize::MAX);
        let host = ModelHost::new(&ModelConfig {
            remap: RemapConfig {
                units: 1,
                entries_per_unit: 128,
            },
            posted: true,
            ..ModelConfig::default()
        })
        .unwrap();
        let mut a = dev(0x100, 4, 16, 16);
        a.share = Some(40);
        let config = VmConfig {
            quota: 64,
            num_vcpus: 4,
            max_batch: 64,
            devices: vec![a, dev(0x101, 4, 0, 0)],
            apic_ids: ApicIds::Table(vec![0, 2, 4, 6]),
        };
        let routes = Faulty::new(MemoryRoutes::kvm_like(), plan.clone());
        let vm = host
            .create_vm_wrapped(
                config,
                |b| Box::new(Faulty::new(Shortfall::new(b, cap.clone()), plan.clone())),
                Box::new(routes),
            )
            .unwrap();
        vm.set_features(feature::ALL);
        let rig = Rig {
            host,
            vm,
            plan,
            cap,
        };
        // Something to roll back to: MSI-X 0..4 active, 4..6 parked, IMS 0..2 with a
        // PASID, and an MSI block of 4 on the other device.
        let t = apic_targets(4);
        for (device, op) in [
            (
                0,
                alloc(
                    Kind::MsiX,
                    IndexSpec::Any,
                    (4, 4),
                    None,
                    Targeting::PerVector,
                    &t,
                ),
            ),
            (
                0,
                alloc(
                    Kind::MsiX,
                    IndexSpec::Any,
                    (2, 2),
                    None,
                    Targeting::Parked,
                    &[],
                ),
            ),
            (
                0,
                alloc(
                    Kind::Ims,
                    IndexSpec::At(0),
                    (2, 2),
                    Some(7),
                    Targeting::Spread,
                    &t,
                ),
            ),
            (
                1,
                alloc(
                    Kind::Msi,
                    IndexSpec::Any,
                    (4, 4),
                    None,
                    Targeting::PerVector,
                    &t,
                ),
            ),
        ] {
            let reply = rig.call(device, op);
            assert!(matches!(rig.status(&reply), Some(Status::Ok)), "setup");
        }
        rig.plan.disarm();
        rig
    }

    fn snapshot(&self) -> Snapshot {
        snapshot(&self.host, &[&self.vm])
    }

    fn request(device: u32, op: Operation<'_>) -> Request<'_> {
        Request {
            device,
            tag: 0x13_13,
            op,
        }
    }

    fn call(&self, device: u32, op: Operation<'_>) -> Vec<u8> {
        self.vm.call(&Self::request(device, op))
    }

    /// The reply's status, if it decodes.
    fn status(&self, reply: &[u8]) -> Option<Status> {
        let response = Response::decode(reply, self.vm.features()).ok()?;
        Some(match response.outcome {
            Outcome::Refused(r) => r.status(),
            _ => Status::Ok,
        })
    }

    fn refusal(&self, reply: &[u8]) -> Option<Refusal> {
        match Response::decode(reply, self.vm.features()).ok()?.outcome {
            Outcome::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// Handles `op` with a reply buffer whose first write fails; the used length.
    fn call_unwritable(&self, device: u32, op: Operation<'_>) -> u32 {
        let request = Self::request(device, op);
        let mut bytes = vec![0; request.encoded_len()];
        let len = request.encode(&mut bytes).unwrap();
        let mut sink = BufferSink::failing(request.max_response_len(self.vm.features()), 1);
        self.vm.handle(&bytes[..len], &mut sink).used_len
    }
}

/// One request of each new shape: name, device, operation, the host's backing cap.
fn requests<'a>(
    t: &'a [Target],
    lists: &'a [Vec<Le32>; 4],
) -> Vec<(&'static str, u32, Operation<'a>, usize)> {
    vec![
        (
            "alloc spread, host short",
            0,
            alloc(
                Kind::MsiX,
                IndexSpec::Any,
                (1, 6),
                None,
                Targeting::Spread,
                &t[..4],
            ),
            2,
        ),
        (
            "alloc parked",
            0,
            alloc(
                Kind::MsiX,
                IndexSpec::Any,
                (2, 3),
                None,
                Targeting::Parked,
                &[],
            ),
            usize::MAX,
        ),
        (
            "alloc contiguous",
            0,
            alloc(
                Kind::MsiX,
                IndexSpec::AnyContiguous,
                (1, 4),
                None,
                Targeting::PerVector,
                &t[..4],
            ),
            usize::MAX,
        ),
        (
            "alloc ims by apic id, pasid",
            0,
            alloc(
                Kind::Ims,
                IndexSpec::At(8),
                (2, 2),
                Some(9),
                Targeting::PerVector,
                &t[2..4],
            ),
            usize::MAX,
        ),
        (
            "free list",
            0,
            Operation::Free(list(Kind::MsiX, &lists[0])),
            usize::MAX,
        ),
        (
            "free msi block by list",
            1,
            Operation::Free(list(Kind::Msi, &lists[1])),
            usize::MAX,
        ),
        (
            "retarget list",
            0,
            Operation::Retarget(Retarget {
                indices: list(Kind::MsiX, &lists[2]),
                to: RetargetTo::Targets(&t[..2]),
            }),
            usize::MAX,
        ),
        (
            "park",
            0,
            Operation::Retarget(Retarget {
                indices: run(Kind::MsiX, 0, 3),
                to: RetargetTo::Park,
            }),
            usize::MAX,
        ),
        (
            "activate",
            0,
            Operation::Retarget(Retarget {
                indices: list(Kind::MsiX, &lists[3]),
                to: RetargetTo::Targets(&t[1..3]),
            }),
            usize::MAX,
        ),
        ("query", 0, Operation::Query, usize::MAX),
    ]
}

/// What the driver must be told when `call` fails with `kind` during `op` (as in
/// `fault_walk.rs`): a shortage of a resource being allocated is NO_SPACE, anything else
/// DEVICE_ERROR, naming the layer.
fn expected(op: &Operation<'_>, call: LayerCall, kind: FaultKind) -> (Status, Resource) {
    let shortage = matches!(op, Operation::Alloc(_)) && call.allocates();
    let status = if shortage && kind == FaultKind::Exhausted {
        Status::NoSpace
    } else {
        Status::DeviceError
    };
    (status, call.resource())
}

fn layer(r: Refusal) -> (Status, Resource) {
    match r {
        Refusal::NoSpace { resource, .. } | Refusal::DeviceError { resource } => {
            (r.status(), resource)
        }
        other => panic!("not a layer refusal: {other:?}"),
    }
}

#[test]
fn every_layer_fault_of_every_new_shape_is_refused_and_rolled_back() {
    let t = apic_targets(4);
    let lists = [
        entries(&[1, 3, 4]),
        entries(&[0, 1, 2, 3]),
        entries(&[0, 2]),
        entries(&[4, 5]),
    ];
    let mut points = 0;
    let mut updates = 0;
    for (name, device, op, cap) in requests(&t, &lists) {
        let reference = Rig::new();
        reference.cap.set(cap);
        let expected_reply = reference.call(device, op);
        assert_eq!(
            reference.status(&expected_reply),
            Some(Status::Ok),
            "{name}"
        );
        let calls = reference.plan.log();
        assert!(
            !calls.is_empty() || name == "query",
            "{name}: no layer call"
        );
        if name.starts_with("alloc spread") {
            // The spread settled on the 2 granted moved a staged route.
            assert!(calls.contains(&LayerCall::RouteUpdate), "{name}: {calls:?}");
        }
        for kind in [FaultKind::Exhausted, FaultKind::Failed] {
            for n in 1.. {
                let rig = Rig::new();
                rig.cap.set(cap);
                let before = rig.snapshot();
                rig.plan.fail_nth(n, kind);
                let reply = rig.call(device, op);
                if rig.plan.injected() == 0 {
                    assert_eq!(n as usize, calls.len() + 1, "{name}");
                    break;
                }
                points += 1;
                let log = rig.plan.log();
                assert_eq!(log[..], calls[..n as usize], "{name} n={n}: same calls");
                let failed = log[n as usize - 1];
                if failed == LayerCall::RouteUpdate {
                    updates += 1;
                }
                let refusal = rig
                    .refusal(&reply)
                    .unwrap_or_else(|| panic!("{name} n={n}: not refused"));
                assert_eq!(
                    layer(refusal),
                    expected(&op, failed, kind),
                    "{name} n={n} {kind:?} at {failed:?}: {refusal}"
                );
                assert_eq!(
                    rig.snapshot(),
                    before,
                    "{name} n={n} {kind:?} at {failed:?}"
                );
                rig.plan.disarm();
                assert_eq!(rig.call(device, op), expected_reply, "{name} n={n}: retry");
                rig.host.check_invariants().unwrap();
            }
        }
    }
    eprintln!("layer fault points: {points} ({updates} route updates)");
    assert!(points >= 40, "only {points} fault points walked");
    assert!(updates >= 2 * 4, "route updates walked: {updates}");
}

#[test]
fn an_unwritable_reply_of_every_new_shape_changes_nothing() {
    let t = apic_targets(4);
    let lists = [
        entries(&[1, 3, 4]),
        entries(&[0, 1, 2, 3]),
        entries(&[0, 2]),
        entries(&[4, 5]),
    ];
    for (name, device, op, cap) in requests(&t, &lists) {
        let reference = Rig::new();
        reference.cap.set(cap);
        let expected_reply = reference.call(device, op);
        // No layer fault, and each layer fault in turn: the reply (OK or refusal) cannot
        // be written, so nothing is said and nothing changes.
        for n in 0.. {
            let rig = Rig::new();
            rig.cap.set(cap);
            let before = rig.snapshot();
            rig.plan.fail_nth(n, FaultKind::Failed);
            assert_eq!(rig.call_unwritable(device, op), 0, "{name} n={n}");
            assert_eq!(rig.snapshot(), before, "{name} n={n}: unanswered");
            let done = n > 0 && rig.plan.injected() == 0;
            rig.plan.disarm();
            assert_eq!(rig.call(device, op), expected_reply, "{name} n={n}: retry");
            if done || n > 64 {
                break;
            }
        }
    }
}
