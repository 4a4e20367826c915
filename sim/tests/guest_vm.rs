//! The guest image in driver mode: the pvirq driver runs as guest code in a real KVM vCPU
//! and every step here is what the guest did and saw (skips without /dev/kvm, fails under
//! PVIRQ_REQUIRE_KVM=1). The extensions' commands are in `guest_vm/extensions.rs`, the
//! VMM's changes and the event queue in `guest_vm/events.rs`, migration in
//! `guest_vm/migration.rs`; they drive the VM as the scenario runner does, through
//! [`GuestSide`].

#[path = "guest_vm/events.rs"]
mod events;
#[path = "guest_vm/extensions.rs"]
mod extensions;
#[path = "guest_vm/migration.rs"]
mod migration;

use pvirq_guest_image_abi::mailbox::{GRANT_WORDS, Op, Status};
use pvirq_host::model::{ModelConfig, ModelHost};
use pvirq_host::{DeviceSpec, VmConfig};
use pvirq_proto::{IndexSpec, Kind as ProtoKind, Targeting};
use pvirq_sim::kvm::require_kvm_or_skip;
use pvirq_sim::run::GuestSide;
use pvirq_sim::scenario::{AllocStep, Dest, DeviceDecl, Fallback, VmDecl};
use pvirq_sim::vmm::bar::{BarConfig, Flow, TableMode};
use pvirq_sim::vmm::{Command, GUEST_VM_MEM, GuestVm, GuestVmConfig};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const MSIX: u32 = 1;
const IMS: u32 = 2;

fn vm(host: &ModelHost, table: TableMode) -> GuestVm {
    let bar = BarConfig {
        requester_id: 0x0100,
        msix_entries: 64,
        ims_slots: 64,
        table,
        flow: Flow::Pvirq,
    };
    let config = GuestVmConfig {
        vcpus: 2,
        mem_size: GUEST_VM_MEM,
        vm: VmConfig {
            quota: 32,
            num_vcpus: 2,
            max_batch: 64,
            devices: vec![DeviceSpec {
                requester_id: 0x0100,
                msi_max: 0,
                msix_table_size: 64,
                ims_slots: 64,
                ..DeviceSpec::default()
            }],
            ..VmConfig::default()
        },
        bars: vec![bar],
    };
    GuestVm::new(host, config).unwrap()
}

fn run(vm: &mut GuestVm, op: Op, args: &[u32], list: Vec<u32>) -> pvirq_sim::vmm::Report {
    vm.command(&Command::new(op, args).with_list(list), T)
        .unwrap()
}

/// A pass-through device of a scenario VM.
fn device(name: &str, requester_id: u16, msix: u16, ims: u32) -> DeviceDecl {
    DeviceDecl {
        name: name.to_string(),
        requester_id,
        unit: 0,
        msi: 0,
        msix,
        ims,
        amd_table: None,
        share: None,
        identity: None,
        hotplug: false,
    }
}

/// A scenario VM whose guest asks for `features`.
fn decl(features: u64, vcpus: u32, quota: u32, devices: Vec<DeviceDecl>) -> VmDecl {
    VmDecl {
        name: String::from("vm"),
        vcpus,
        quota,
        max_batch: 64,
        devices,
        features,
        apic_ids: None,
    }
}

/// A destination.
fn dest(vcpu: u32, vector: u8) -> Dest {
    Dest { vcpu, vector }
}

/// An ALLOC step.
fn alloc(
    device: usize,
    kind: ProtoKind,
    index: IndexSpec,
    targeting: Targeting,
    (min, max): (u16, u16),
    targets: Vec<Dest>,
) -> AllocStep {
    AllocStep {
        device,
        kind,
        index,
        min,
        max,
        targeting,
        targets,
        pasid: None,
        fallback: Fallback::None,
    }
}

/// The guest side of `decl` on `host`.
fn side(host: &ModelHost, decl: &VmDecl) -> GuestSide {
    GuestSide::new(host, decl).unwrap()
}

#[test]
fn the_guest_allocates_programs_fires_and_counts_what_arrived() {
    if !require_kvm_or_skip() {
        return;
    }
    let host = ModelHost::new(&ModelConfig::default()).unwrap();
    let mut vm = vm(&host, TableMode::Memory);
    let init = run(&mut vm, Op::Init, &[], vec![]);
    assert_eq!(init.status, Status::Ok, "{init:?}");
    assert_eq!((init.r(0), init.r(1), init.r(2)), (1, 32, 2));

    // Four MSI-X vectors over both vCPUs, one IMS slot with a PASID.
    let targets = vec![0, 0x40, 1, 0x41, 0, 0x42, 1, 0x43];
    let alloc = run(
        &mut vm,
        Op::Alloc,
        &[0, MSIX, 0, 0, 4, 4, 0, 0, 0, 4],
        targets,
    );
    assert_eq!(alloc.status, Status::Ok, "{alloc:?}");
    assert_eq!(alloc.r(0), 4);
    assert_eq!(alloc.list.len(), 4 * GRANT_WORDS);
    let ims = run(
        &mut vm,
        Op::Alloc,
        &[0, IMS, 0, 0, 1, 1, 1, 0x42, 0, 1],
        vec![1, 0x44],
    );
    assert_eq!(ims.status, Status::Ok, "{ims:?}");
    assert_eq!(vm.vm().occupancy().held, 5);

    let exits = vm.exits();
    let fire = run(&mut vm, Op::Fire, &[0, 0], vec![]);
    assert_eq!(fire.status, Status::Ok);
    // Rung 5, all 5 arrived where the guest expected them, nothing else.
    assert_eq!(
        (fire.r(0), fire.r(1), fire.r(2), fire.r(3)),
        (5, 5, 0, 0),
        "{fire:?}"
    );
    assert_eq!(vm.bar(0).unwrap().delivered, 5);
    // One doorbell exit per vector; programming the untrapped table and IMS slots cost none.
    assert_eq!(vm.exits().since(&exits).device_regs, 5);
    assert_eq!(vm.exits().since(&exits).msix_table, 0);

    // A message the guest was never granted: nothing arrives and the host records it.
    let faults = host.faults().count;
    let forged = run(&mut vm, Op::FireUngranted, &[0, 0, 10, 1, 0x45], vec![]);
    assert_eq!((forged.status, forged.r(0)), (Status::Ok, 0));
    assert_eq!(host.faults().count, faults + 1);

    // Freed but left programmed, then fired: blocked, counted as a fault, not delivered.
    let first = alloc.list[0];
    let free = run(&mut vm, Op::Free, &[0, MSIX, first, 1, 1], vec![]);
    assert_eq!((free.status, free.r(0)), (Status::Ok, 1));
    let fire = run(&mut vm, Op::Fire, &[0, 1], vec![]);
    assert_eq!(
        (fire.r(0), fire.r(1), fire.r(2), fire.r(3)),
        (5, 4, 0, 0),
        "{fire:?}"
    );
    assert_eq!(host.faults().count, faults + 2);

    let reset = run(&mut vm, Op::ResetVirtio, &[], vec![]);
    assert_eq!((reset.status, reset.r(0)), (Status::Ok, 4));
    assert_eq!(vm.vm().occupancy().held, 0);
    vm.shutdown().unwrap();
}

#[test]
fn nothing_is_lost_or_duplicated_across_mask_and_unmask_in_any_slot_storage() {
    if !require_kvm_or_skip() {
        return;
    }
    for table in [TableMode::Memory, TableMode::Trapped] {
        let host = ModelHost::new(&ModelConfig::default()).unwrap();
        let mut vm = vm(&host, table);
        assert_eq!(run(&mut vm, Op::Init, &[], vec![]).status, Status::Ok);
        let msix = run(
            &mut vm,
            Op::Alloc,
            &[0, MSIX, 0, 0, 1, 1, 0, 0, 0, 1],
            vec![1, 0x50],
        );
        let ims = run(
            &mut vm,
            Op::Alloc,
            &[0, IMS, 0, 0, 1, 1, 0, 0, 0, 1],
            vec![0, 0x51],
        );
        for (kind, grant, what) in [(MSIX, &msix, "MSI-X"), (IMS, &ims, "IMS")] {
            assert_eq!(grant.status, Status::Ok, "{what}: {grant:?}");
            // Masked, rung three times: nothing arrives; unmasked: exactly one; rung
            // again: exactly one more.
            let p = run(&mut vm, Op::Pending, &[0, kind, grant.list[0], 3], vec![]);
            assert_eq!(p.status, Status::Ok);
            assert_eq!(
                (p.r(0), p.r(1), p.r(2)),
                (0, 1, 1),
                "{what} with a {table:?} table: {p:?}"
            );
            if kind == MSIX {
                assert_eq!(p.r(3), 1, "the PBA bit is set while pending");
            }
        }
        vm.shutdown().unwrap();
    }
}

#[test]
fn bring_up_costs_one_exit_through_pvirq_and_five_exits_and_a_commit_per_vector_trapped() {
    use pvirq_sim::vmm::bench_vm::{
        PVIRQ_MEMORY, PVIRQ_TRAPPED, TRAPPED_FLOW, bench_host, bench_vm,
    };
    if !require_kvm_or_skip() {
        return;
    }
    let host = bench_host().unwrap();
    let mut vm = bench_vm(&host).unwrap();
    assert_eq!(run(&mut vm, Op::Init, &[], vec![]).status, Status::Ok);
    let n = 256;
    let measure = |vm: &mut GuestVm, op, args: &[u32]| {
        let (exits, commits) = (vm.exits(), vm.route_commits());
        let r = run(vm, op, args, vec![]);
        assert_eq!(r.status, Status::Ok, "{op:?}: {r:?}");
        (vm.exits().since(&exits), vm.route_commits() - commits, r)
    };
    // pvirq, untrapped table: one request, one exit, one routing commit for all 256.
    let (exits, commits, r) = measure(&mut vm, Op::BenchPvirqBringup, &[PVIRQ_MEMORY, n, MSIX]);
    assert_eq!(r.r(2), n);
    assert_eq!(
        (exits.mmio(), exits.pvirq, exits.msix_table, commits),
        (1, 1, 0, 1)
    );
    assert_eq!(vm.vm().occupancy().held, n);
    run(&mut vm, Op::ResetDevice, &[PVIRQ_MEMORY], vec![]);
    assert_eq!(vm.vm().occupancy().held, 0);
    // The trapped flow: five table writes per entry and a commit per unmask.
    let (exits, commits, _) = measure(&mut vm, Op::BenchTrappedBringup, &[TRAPPED_FLOW, n]);
    assert_eq!(
        (exits.msix_table, exits.pvirq, commits),
        (5 * u64::from(n), 0, u64::from(n))
    );
    run(
        &mut vm,
        Op::BenchTrappedBringup,
        &[TRAPPED_FLOW, 0, 1],
        vec![],
    );
    // pvirq behind a trapped table: the same table exits, still one commit.
    let (exits, commits, _) = measure(&mut vm, Op::BenchPvirqBringup, &[PVIRQ_TRAPPED, n, MSIX]);
    assert_eq!(
        (exits.msix_table, exits.pvirq, commits),
        (5 * u64::from(n), 1, 1)
    );
    vm.shutdown().unwrap();
}

#[test]
fn the_default_scenario_answers_the_same_when_the_guest_code_runs_every_step() {
    use pvirq_sim::run::{KvmBackend, MemoryBackend, run as run_scenario};
    use pvirq_sim::scenario::default_scenario;
    if !require_kvm_or_skip() {
        return;
    }
    let scenario = default_scenario().unwrap();
    let memory = run_scenario(&scenario, &mut MemoryBackend).unwrap();
    let kvm = run_scenario(&scenario, &mut KvmBackend::new()).unwrap();
    assert_eq!(kvm.expectations_failed, 0);
    assert_eq!(kvm.steps.len(), memory.steps.len());
    for (k, m) in kvm.steps.iter().zip(&memory.steps) {
        assert_eq!(
            (&k.status, &k.answer, k.count, k.attempts, &k.host),
            (&m.status, &m.answer, m.count, m.attempts, &m.host),
            "step {}",
            k.step
        );
        if let (Some(kf), Some(mf)) = (k.fire, m.fire) {
            // What the guest saw equals what the host delivered in-process.
            assert_eq!(
                (kf.fired, kf.delivered, kf.blocked, kf.misrouted),
                (mf.fired, mf.delivered, mf.blocked, mf.misrouted),
                "step {}",
                k.step
            );
            assert_eq!(kf.observed, Some(kf.delivered));
        }
    }
    // Every stale fire was refused by the host's remapping check and recorded.
    assert_eq!(kvm.host_faults, kvm.fire_totals.blocked);
    assert!(kvm.host_faults > 0);
}
