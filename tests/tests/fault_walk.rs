//! Fault injection through the whole device path (issue 7): for every opcode, every
//! reserving layer call and every guest-memory write of the reply is made to fail in turn,
//! N = 1, 2, ... until the request completes without reaching the fault. Each time the
//! guest must get the right answer (NO_SPACE or DEVICE_ERROR naming the layer that failed,
//! or no reply at all when the reply cannot be written: [DEV-12]), the host and the VM must
//! be exactly as before ([DEV-9]), every invariant must hold, and the same request retried
//! without the fault must get exactly the answer a fault-free run gets.

use pvirq_guest::{Error, Options};
use pvirq_host::fault::{FaultKind, FaultPlan, Faulty, LayerCall};
use pvirq_host::model::{ModelConfig, ModelHost, RemapConfig};
use pvirq_host::routes::MemoryRoutes;
use pvirq_proto::{
    Alloc, IndexRange, IndexSpec, Kind, Operation, Outcome, Refusal, Retarget, Target, Targeting,
};
use pvirq_tests::setup::{Snapshot, dev, snapshot, targets, vm_config};
use pvirq_tests::tamper::{BadBuffer, ReplyFault, TamperChannel};

/// A VM with two devices and some grants to roll back to, on a host whose every layer
/// counts (and can fail) its reserving calls and records them.
struct Rig {
    host: ModelHost,
    ch: TamperChannel,
    plan: FaultPlan,
}

impl Rig {
    fn new() -> Rig {
        let plan = FaultPlan::new();
        let host = ModelHost::new(&ModelConfig {
            remap: RemapConfig {
                units: 1,
                entries_per_unit: 128,
            },
            ..ModelConfig::default()
        })
        .unwrap();
        let routes = Faulty::new(MemoryRoutes::kvm_like(), plan.clone());
        let config = vm_config(64, vec![dev(0x100, 4, 16, 16), dev(0x101, 4, 0, 0)]);
        let vm = host
            .create_vm_wrapped(
                config,
                |b| Box::new(Faulty::new(b, plan.clone())),
                Box::new(routes),
            )
            .unwrap();
        let mut ch = TamperChannel::for_vm(vm, Options::default()).unwrap();
        let t = targets(4, 0x30);
        let mut grants = [pvirq_proto::Grant::new(0, Default::default()); 4];
        let d = ch.driver();
        d.alloc_irq_vectors(0, Kind::MsiX, 2, &t[..2], &mut grants)
            .unwrap();
        d.alloc_irq_vectors(1, Kind::Msi, 4, &t, &mut grants)
            .unwrap();
        plan.disarm();
        Rig { host, ch, plan }
    }

    fn snapshot(&self) -> Snapshot {
        snapshot(&self.host, &[self.ch.vm()])
    }

    /// Runs one request; the outcome as text (owned), or the driver's error.
    fn run(&mut self, device: u32, op: Operation<'_>) -> Result<String, Error> {
        let mut reply = vec![0; self.ch.driver().max_reply_len()];
        let response = self.ch.driver().call(device, op, &mut reply)?;
        Ok(format!("{:?}", response.outcome))
    }

    fn refusal(&mut self, device: u32, op: Operation<'_>) -> Option<Refusal> {
        let mut reply = vec![0; self.ch.driver().max_reply_len()];
        let response = self.ch.driver().call(device, op, &mut reply).ok()?;
        match response.outcome {
            Outcome::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// One request of each opcode, and each ALLOC kind, against the rig's state.
fn requests(t: &[Target]) -> Vec<(&'static str, u32, Operation<'_>)> {
    let alloc = |kind, index, min, max, pasid| {
        Operation::Alloc(Alloc {
            kind,
            index,
            min,
            max,
            pasid,
            targets: &t[..usize::from(max)],
            targeting: Targeting::PerVector,
        })
    };
    let range = |kind, first, count| IndexRange { kind, first, count };
    vec![
        ("query", 0, Operation::Query),
        (
            "alloc msix",
            0,
            alloc(Kind::MsiX, IndexSpec::Any, 1, 4, None),
        ),
        ("alloc msi", 0, alloc(Kind::Msi, IndexSpec::Any, 2, 4, None)),
        (
            "alloc ims",
            0,
            alloc(Kind::Ims, IndexSpec::At(5), 3, 3, Some(1)),
        ),
        (
            "free msix",
            0,
            Operation::Free(range(Kind::MsiX, 0, 2).into()),
        ),
        (
            "free msi",
            1,
            Operation::Free(range(Kind::Msi, 0, 4).into()),
        ),
        (
            "retarget",
            0,
            Operation::Retarget(Retarget::run(range(Kind::MsiX, 0, 2), &t[..2])),
        ),
        ("reset", 0, Operation::Reset),
    ]
}

/// What the guest must be told when `call` fails with `kind` during `op`.
fn expected_refusal(
    op: &Operation<'_>,
    call: LayerCall,
    kind: FaultKind,
) -> (pvirq_proto::Status, pvirq_proto::Resource) {
    use pvirq_proto::Status;
    let shortage = matches!(op, Operation::Alloc(_)) && call.allocates();
    let status = if shortage && kind == FaultKind::Exhausted {
        Status::NoSpace
    } else {
        Status::DeviceError
    };
    (status, call.resource())
}

fn status_and_resource(r: Refusal) -> (pvirq_proto::Status, pvirq_proto::Resource) {
    match r {
        Refusal::NoSpace { resource, .. } | Refusal::DeviceError { resource } => {
            (r.status(), resource)
        }
        other => panic!("not a layer refusal: {other:?}"),
    }
}

/// Every reserving call and commit of every layer, failed in turn (as a shortage and as
/// an internal failure), for every opcode.
#[test]
fn every_layer_fault_of_every_opcode_is_refused_and_rolled_back() {
    let t = targets(4, 0x50);
    let mut points = 0;
    for (name, device, op) in requests(&t) {
        let mut reference = Rig::new();
        let expected = reference.run(device, op).unwrap();
        assert!(!expected.contains("Refused"), "{name}: {expected}");
        let calls = reference.plan.log();
        assert!(
            !calls.is_empty() || name == "query",
            "{name}: no layer call"
        );
        for kind in [FaultKind::Exhausted, FaultKind::Failed] {
            for n in 1.. {
                let mut rig = Rig::new();
                let before = rig.snapshot();
                rig.plan.fail_nth(n, kind);
                let refusal = rig.refusal(device, op);
                if rig.plan.injected() == 0 {
                    // Past the last reserving call: the request went through untouched.
                    assert_eq!(n as usize, calls.len() + 1, "{name}");
                    break;
                }
                points += 1;
                let log = rig.plan.log();
                assert_eq!(log[..], calls[..n as usize], "{name} n={n}: same calls");
                let failed = log[n as usize - 1];
                let refusal = refusal.unwrap_or_else(|| panic!("{name} n={n}: not refused"));
                assert_eq!(
                    status_and_resource(refusal),
                    expected_refusal(&op, failed, kind),
                    "{name} n={n} {kind:?} at {failed:?}: {refusal}"
                );
                if let Refusal::NoSpace { available, .. } = refusal
                    && let Operation::Alloc(a) = op
                {
                    assert!(available <= u32::from(a.max), "{name} n={n}: {available}");
                }
                assert_eq!(
                    rig.snapshot(),
                    before,
                    "{name} n={n} {kind:?} at {failed:?}"
                );
                rig.plan.disarm();
                assert_eq!(
                    rig.run(device, op).unwrap(),
                    expected,
                    "{name} n={n}: retry"
                );
                rig.host.check_invariants().unwrap();

                // The same fault when not even the refusal can be written: no answer at all,
                // and still nothing changed ([DEV-5], [DEV-12]).
                let mut rig = Rig::new();
                rig.plan.fail_nth(n, kind);
                rig.ch.arm(ReplyFault {
                    good: 0,
                    piece: 8,
                    bad: BadBuffer::Outside,
                });
                assert!(
                    matches!(rig.run(device, op), Err(Error::NoReply)),
                    "{name} n={n}"
                );
                assert_eq!(rig.snapshot(), before, "{name} n={n}: unanswered");
            }
        }
    }
    eprintln!("layer fault points: {points}");
    assert!(points >= 40, "only {points} fault points walked");
}

/// Every guest-memory write of every reply, failed in turn: the writable part of the chain
/// is cut into 8-byte descriptors inside the driver's buffer followed by one outside guest
/// memory (or straddling its end), so the Nth write of the reply fails.
#[test]
fn every_reply_write_fault_of_every_opcode_changes_nothing() {
    let t = targets(4, 0x50);
    let piece = 8;
    let mut points = 0;
    for (name, device, op) in requests(&t) {
        let expected = Rig::new().run(device, op).unwrap();
        for bad in [BadBuffer::Outside, BadBuffer::Straddling] {
            for good in 0.. {
                let mut rig = Rig::new();
                let before = rig.snapshot();
                rig.ch.arm(ReplyFault { good, piece, bad });
                let result = rig.run(device, op);
                assert!(!rig.ch.is_armed(), "{name}: the fault was not applied");
                match result {
                    Ok(outcome) => {
                        // The reply fit in the good descriptors: a normal answer.
                        assert_eq!(outcome, expected, "{name} good={good}");
                        assert!(good > 0, "{name}: answered through an unwritable buffer");
                        break;
                    }
                    Err(Error::NoReply) => points += 1,
                    Err(e) => panic!("{name} good={good} {bad:?}: {e:?}"),
                }
                assert_eq!(rig.snapshot(), before, "{name} write {} {bad:?}", good + 1);
                assert_eq!(rig.run(device, op).unwrap(), expected, "{name}: retry");
                rig.host.check_invariants().unwrap();
                assert!(good < 64, "{name}: never completes");
            }
        }
    }
    // Every reply is at least 24 bytes: at least 3 failing writes per opcode and buffer.
    eprintln!("reply write fault points: {points}");
    assert!(points >= 8 * 2 * 3, "only {points} write faults walked");
}
