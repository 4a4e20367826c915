//! Target `snapshot_restore`: a saved state from hostile bytes. The bytes are deserialised
//! (JSON, as the host's tests and most VMMs write it) into a `PvirqDeviceState` and
//! restored through `PvirqDevice::restore`, or into a `VmSnapshot` and restored through
//! `Vm::restore`, on a VM whose backends and routes fail on command.
//!
//! Never a panic; a refusal is a typed error and leaves nothing held (the VM holds
//! nothing, the host is back to what it held before); a restore that succeeds leaves the
//! host's invariants holding, the VM within its quota, and the report agreeing with what
//! the VM holds; resetting it then gives everything back.

use crate::memory::{DirtyMemory, ScratchMemory};
use crate::wire::Blob;
use crate::wire_struct;
use pvirq_host::device::test_utils::{Driver, spec, vm};
use pvirq_host::device::{PvirqDeviceState, RestoreParts};
use pvirq_host::fault::{FaultKind, FaultPlan, Faulty};
use pvirq_host::model::{HostOccupancy, ModelConfig, ModelHost, RemapConfig};
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::snapshot::Restored;
use pvirq_host::snapshot::VmSnapshot;
use pvirq_host::{MmioInterrupt, PvirqDevice, Vm, VmConfig};
use pvirq_proto::{Alloc, IndexSpec, Kind, Operation, Request, Target, Targeting, feature};
use std::cell::RefCell;
use std::sync::Arc;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// The destination VM's quota.
const QUOTA: u32 = 24;
/// Guest memory for restored queues.
const MEM_SIZE: u64 = 64 << 10;

wire_struct! {
    /// A whole `snapshot_restore` input.
    pub struct SnapshotInput {
        /// Bit 0: the bytes are a device state, restored through the device (else a VM
        /// snapshot, through the VM). Bit 1: the destination's backends and routes fail at
        /// their `fail`th call. Bit 2: that failure is a shortage.
        pub mode: u8,
        /// Which backend or route call fails (from 1).
        pub fail: u8,
        /// The saved state, as JSON.
        pub bytes: Blob,
    }
}

type Device = PvirqDevice<GuestMemoryAtomic<DirtyMemory>>;

/// Built once per process: the destination host and VM, the fault plan of its layers.
struct Rig {
    host: ModelHost,
    vm: Vm,
    plan: FaultPlan,
    /// What the device over the VM offers (what a snapshot may carry).
    offered: u64,
    baseline: HostOccupancy,
    memory: ScratchMemory,
    atomic: GuestMemoryAtomic<DirtyMemory>,
}

fn host() -> ModelHost {
    ModelHost::new(&ModelConfig {
        remap: RemapConfig {
            units: 1,
            entries_per_unit: 256,
        },
        ..ModelConfig::default()
    })
    .expect("the fuzz host")
}

impl Rig {
    fn new() -> Self {
        let host = host();
        let plan = FaultPlan::new();
        let backend_plan = plan.clone();
        let vm = host
            .create_vm_wrapped(
                VmConfig {
                    quota: QUOTA,
                    num_vcpus: 2,
                    max_batch: 64,
                    devices: vec![spec(0x100), spec(0x101)],
                    ..VmConfig::default()
                },
                |b| Box::new(Faulty::new(b, backend_plan.clone())),
                Box::new(Faulty::new(MemoryRoutes::kvm_like(), plan.clone())),
            )
            .expect("the destination VM");
        let offered = Device::new(vm.clone()).expect("device").avail_features();
        let memory = ScratchMemory::new(MEM_SIZE);
        let atomic = GuestMemoryAtomic::new(memory.mem().clone());
        Rig {
            baseline: host.occupancy(),
            host,
            vm,
            plan,
            offered,
            memory,
            atomic,
        }
    }

    fn check(&self, when: &str) {
        if let Err(errors) = self.host.check_invariants() {
            panic!("invariants broken {when}: {errors:#?}");
        }
    }

    /// Nothing held: the VM empty, the host as before the input.
    fn check_nothing_held(&self, when: &str) {
        self.check(when);
        assert_eq!(self.vm.occupancy().held, 0, "{when}: the VM holds grants");
        assert_eq!(
            self.host.occupancy(),
            self.baseline,
            "{when}: the host holds more than before"
        );
    }

    /// A restore succeeded: invariants (quota included), and the report says what the VM
    /// holds.
    fn check_restored(&self, kept: usize, when: &str) {
        self.check(when);
        let occ = self.vm.occupancy();
        assert!(occ.held <= QUOTA, "{when}: {} held over quota", occ.held);
        assert_eq!(
            occ.held as usize, kept,
            "{when}: the report and the VM disagree"
        );
    }
}

thread_local! {
    static RIG: RefCell<Rig> = RefCell::new(Rig::new());
}

fn kept(report: &[pvirq_host::snapshot::RestoredGrant]) -> usize {
    report
        .iter()
        .filter(|r| !matches!(r.outcome, Restored::Revoked(_)))
        .count()
}

/// Runs one input; whether the restore succeeded.
pub fn run(input: &SnapshotInput) -> bool {
    RIG.with_borrow(|rig| {
        if input.mode & 2 != 0 {
            let kind = if input.mode & 4 != 0 {
                FaultKind::Exhausted
            } else {
                FaultKind::Failed
            };
            rig.plan.fail_nth(u64::from(input.fail), kind);
        }
        let restored = if input.mode & 1 != 0 {
            restore_device(rig, &input.bytes.0)
        } else {
            restore_vm(rig, &input.bytes.0)
        };
        rig.plan.disarm();
        // Whatever happened, a reset gives everything back.
        rig.vm.reset_all();
        rig.check_nothing_held("after the reset");
        rig.memory.reset(None);
        restored
    })
}

fn restore_vm(rig: &Rig, bytes: &[u8]) -> bool {
    let Ok(snapshot) = serde_json::from_slice::<VmSnapshot>(bytes) else {
        return false;
    };
    match rig.vm.restore(&snapshot, rig.offered) {
        Ok(report) => {
            rig.check_restored(kept(&report), "after Vm::restore");
            true
        }
        Err(_) => {
            rig.check_nothing_held("after a refused Vm::restore");
            false
        }
    }
}

fn restore_device(rig: &Rig, bytes: &[u8]) -> bool {
    let Ok(state) = serde_json::from_slice::<PvirqDeviceState>(bytes) else {
        return false;
    };
    let parts = RestoreParts {
        mem: rig.atomic.clone(),
        interrupt: Arc::new(MmioInterrupt::new()),
        queue_evts: vec![EventFd::new(EFD_NONBLOCK).expect("eventfd")],
    };
    match Device::restore(rig.vm.clone(), &state, parts) {
        Ok((mut device, report)) => {
            rig.check_restored(kept(&report), "after PvirqDevice::restore");
            assert!(
                report.iter().all(|r| matches!(r.outcome, Restored::Kept)),
                "the device restored grants the guest cannot be told about: {report:?}"
            );
            device.reset();
            true
        }
        Err(_) => {
            rig.check_nothing_held("after a refused PvirqDevice::restore");
            false
        }
    }
}

/// Saved states of a source VM shaped as the destination, with grants of every kind.
fn sources() -> (VmSnapshot, PvirqDeviceState) {
    let host = host();
    let source = vm(&host, 0x100, QUOTA);
    let targets = [
        Target::new(0, 0x40),
        Target::new(1, 0x41),
        Target::new(1, 0x42),
    ];
    let alloc = |device, kind, index, n: usize, pasid| Request {
        device,
        tag: 1,
        op: Operation::Alloc(Alloc {
            kind,
            index,
            min: 1,
            max: n as u16,
            pasid,
            targeting: Targeting::PerVector,
            targets: &targets[..n],
        }),
    };
    source.call(&alloc(0, Kind::MsiX, IndexSpec::Any, 3, None));
    source.call(&alloc(0, Kind::Msi, IndexSpec::Any, 2, None));
    source.call(&alloc(1, Kind::Ims, IndexSpec::At(5), 1, Some(9)));
    source.call(&alloc(1, Kind::MsiX, IndexSpec::At(60), 2, None));
    let snapshot = source.snapshot();
    // The device, live on a queue of 16, saved.
    let memory = ScratchMemory::new(MEM_SIZE);
    let drv = Driver::with_data(memory.mem(), 16, 0x4000..MEM_SIZE);
    let mut device = Device::new(source).expect("device");
    device.ack_features(feature::V1);
    let queue = drv.q.create_queue().expect("queue");
    let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    device
        .activate(
            GuestMemoryAtomic::new(memory.mem().clone()),
            Arc::new(MmioInterrupt::new()),
            vec![queue],
            vec![evt],
        )
        .expect("activate");
    let state = device.save();
    (snapshot, state)
}

fn json<T: serde::Serialize>(value: &T) -> Blob {
    Blob(serde_json::to_vec(value).expect("a state serialises"))
}

/// Representative inputs: the seeds of the corpus.
pub fn seeds() -> Vec<SnapshotInput> {
    let (snapshot, state) = sources();
    let vm_seed = |mode, fail, s: &VmSnapshot| SnapshotInput {
        mode,
        fail,
        bytes: json(s),
    };
    let mut seeds = vec![
        vm_seed(0, 0, &snapshot),
        // A backend refusal, a shortage, a route commit refusal on the way.
        vm_seed(2, 2, &snapshot),
        vm_seed(6, 4, &snapshot),
        vm_seed(2, 9, &snapshot),
        SnapshotInput {
            mode: 1,
            fail: 0,
            bytes: json(&state),
        },
        SnapshotInput {
            mode: 3,
            fail: 3,
            bytes: json(&state),
        },
    ];
    // Hostile snapshots: each breaks one rule the validation enforces.
    let mut hostile = Vec::new();
    let mut s = snapshot.clone();
    // A version this host does not know (it reads versions 1 and 2).
    s.version = pvirq_host::snapshot::SNAPSHOT_VERSION + 1;
    hostile.push(s);
    let mut s = snapshot.clone();
    if let Some(d) = s.devices.first_mut()
        && let Some(g) = d.grants.first().copied()
    {
        d.grants.push(g);
    }
    hostile.push(s);
    let mut s = snapshot.clone();
    if let Some(g) = s.devices.first_mut().and_then(|d| d.grants.first_mut()) {
        g.index = 4096;
        g.mode = 9;
    }
    hostile.push(s);
    let mut s = snapshot.clone();
    if let Some(d) = s.devices.get_mut(1) {
        let g = d.grants.first().copied();
        d.grants.extend(std::iter::repeat_n(g, 30).flatten());
    }
    hostile.push(s);
    let mut s = snapshot;
    if let Some(g) = s.devices.first_mut().and_then(|d| d.grants.first_mut()) {
        g.pasid = Some(1 << 21);
        g.dest = Some((7, 0x10));
        g.address ^= 0x1000;
    }
    hostile.push(s);
    seeds.extend(hostile.iter().map(|s| vm_seed(0, 0, s)));
    // Not JSON at all, and a device state whose queue points outside guest memory.
    seeds.push(SnapshotInput {
        mode: 1,
        fail: 0,
        bytes: Blob(b"{\"version\":1,\"queues\":[".to_vec()),
    });
    let mut far = state;
    if let Some(q) = far.queues.as_mut().and_then(|q| q.first_mut()) {
        q.used_ring = u64::MAX - 7;
    }
    seeds.push(SnapshotInput {
        mode: 1,
        fail: 0,
        bytes: json(&far),
    });
    seeds
}
