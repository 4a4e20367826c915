//! The guest image in driver mode: the pvirq driver runs as guest code in a real KVM vCPU
//! and every step here is what the guest did and saw (skips without /dev/kvm, fails under
//! PVIRQ_REQUIRE_KVM=1).

use pvirq_guest_image_abi::mailbox::{Op, Status};
use pvirq_host::{DeviceSpec, Host, HostConfig, VmConfig};
use pvirq_sim::kvm::require_kvm_or_skip;
use pvirq_sim::vmm::bar::{BarConfig, Flow, TableMode};
use pvirq_sim::vmm::{Command, GUEST_VM_MEM, GuestVm, GuestVmConfig};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const MSIX: u32 = 1;
const IMS: u32 = 2;

fn vm(host: &Host, table: TableMode) -> GuestVm {
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
                unit: 0,
                msi_max: 0,
                msix_table_size: 64,
                ims_slots: 64,
            }],
        },
        bars: vec![bar],
    };
    GuestVm::new(host, config).unwrap()
}

fn run(vm: &mut GuestVm, op: Op, args: &[u32], list: Vec<u32>) -> pvirq_sim::vmm::Report {
    vm.command(&Command::new(op, args).with_list(list), T)
        .unwrap()
}

#[test]
fn the_guest_allocates_programs_fires_and_counts_what_arrived() {
    if !require_kvm_or_skip() {
        return;
    }
    let host = Host::new(&HostConfig::default()).unwrap();
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
    assert_eq!(alloc.list.len(), 16);
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
