//! The modelled kernel through whole VMs: AMD IOMMU tables, the VT-d multi-MSI bound,
//! posted entries.

use super::*;
use crate::config::DeviceSpec;
use crate::routes::MemoryRoutes;
use pvirq_proto::{
    Alloc, Grant, IndexSpec, Kind, Operation, Outcome, Refusal, Request, Resource, Response,
    Target, feature,
};

fn device(requester_id: u16, msi_max: u16, msix: u16) -> DeviceSpec {
    DeviceSpec {
        requester_id,
        msi_max,
        msix_table_size: msix,
        ims_slots: 0,
    }
}

fn vm(host: &ModelHost, devices: Vec<DeviceSpec>) -> Vm {
    host.create_vm(
        VmConfig {
            quota: 4096,
            num_vcpus: 2,
            max_batch: 4096,
            devices,
            ..VmConfig::default()
        },
        Box::new(MemoryRoutes::kvm_like()),
    )
    .unwrap()
}

fn alloc(vm: &Vm, device: u32, kind: Kind, min: u16, max: u16) -> Result<Vec<Grant>, Refusal> {
    let targets = vec![Target::new(1, 0x40); usize::from(max)];
    let mut a = Alloc::any(kind, min, &targets);
    a.index = IndexSpec::Any;
    let reply = vm.call(&Request {
        device,
        tag: 1,
        op: Operation::Alloc(a),
    });
    match Response::decode(&reply, feature::V1).unwrap().outcome {
        Outcome::Allocated { grants, .. } => Ok(grants.iter().map(|g| g.grant()).collect()),
        Outcome::Refused(r) => Err(r),
        other => panic!("{other:?}"),
    }
}

fn msi_max(vm: &Vm, device: u32) -> u16 {
    let reply = vm.call(&Request {
        device,
        tag: 2,
        op: Operation::Query,
    });
    match Response::decode(&reply, feature::V1).unwrap().outcome {
        Outcome::Queried { info, .. } => info.msi_max,
        other => panic!("{other:?}"),
    }
}

#[test]
fn amd_tables_are_per_device_and_run_out_on_their_own() {
    let host = ModelHost::new(&ModelConfig {
        vectors: VectorConfig {
            cpus: 8,
            ..VectorConfig::default()
        },
        ..ModelConfig::default()
    })
    .unwrap();
    host.place_as(0x100, Placement::Amd { entries: 512 })
        .unwrap();
    host.place_as(0x200, Placement::Amd { entries: 512 })
        .unwrap();
    assert!(
        host.place_as(0x300, Placement::Amd { entries: 1000 })
            .is_err()
    );
    let vm = vm(&host, vec![device(0x100, 8, 2048), device(0x200, 0, 2048)]);
    assert_eq!(
        vm.with_backend(0, |b| b.format()),
        Some(pvirq_proto::MessageFormat::AmdRemapped)
    );
    // 512 entries for device 0: the 513th vector is refused for IRTEs, not device slots.
    let first = alloc(&vm, 0, Kind::MsiX, 500, 500).unwrap();
    assert_eq!(
        alloc(&vm, 0, Kind::MsiX, 13, 13),
        Err(Refusal::NoSpace {
            resource: Resource::Irte,
            available: 12
        })
    );
    // Device 1's table is its own: all 512 entries are free.
    assert_eq!(alloc(&vm, 1, Kind::MsiX, 512, 512).unwrap().len(), 512);
    // Compatibility address, data = the entry's index in the sender's table.
    assert_eq!(first[7].message(), amd::amd_message(7));
    let d = host.fire(0x100, first[7].message()).unwrap();
    assert_eq!(d.to(), Some((1, 0x40)));
    // The other device's entry 7 is its own grant, not device 0's.
    host.fire(0x200, first[7].message()).unwrap();
    // A VT-d message means nothing to an AMD IOMMU.
    let vtd = pvirq_proto::RemappableMsi {
        handle: 7,
        subhandle: Some(0),
    }
    .message();
    assert_eq!(
        host.fire(0x100, vtd).unwrap_err().reason,
        FaultReason::Remap(RemapFault::NotRemappable)
    );
    // An MSI block in the last free aligned run: 12 entries left at 500..512 → block of 8.
    let block = alloc(&vm, 0, Kind::Msi, 1, 8).unwrap();
    assert_eq!(block.len(), 8);
    assert_eq!(block[0].message().data % 8, 0, "aligned");
    assert_eq!(host.occupancy().units[0].used, 0, "VT-d untouched");
    host.check_invariants().unwrap();
    drop(vm);
    host.check_invariants().unwrap();
}

#[test]
fn the_vtd_multi_msi_bound_caps_msi_max_and_the_block_granted() {
    let host = ModelHost::new(&ModelConfig {
        vtd_max_msi_block: 4,
        ..ModelConfig::default()
    })
    .unwrap();
    assert!(
        ModelHost::new(&ModelConfig {
            vtd_max_msi_block: 6,
            ..ModelConfig::default()
        })
        .is_err()
    );
    let vm = vm(&host, vec![device(0x100, 32, 0)]);
    assert_eq!(msi_max(&vm, 0), 4);
    assert_eq!(
        alloc(&vm, 0, Kind::Msi, 8, 32).unwrap_err().status(),
        pvirq_proto::Status::NoSpace
    );
    assert_eq!(alloc(&vm, 0, Kind::Msi, 1, 32).unwrap().len(), 4);
    host.check_invariants().unwrap();
}
