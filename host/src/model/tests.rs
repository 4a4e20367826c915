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
        ..DeviceSpec::default()
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

#[test]
fn a_write_with_another_pasid_is_blocked_and_recorded() {
    let host = ModelHost::new(&ModelConfig::default()).unwrap();
    let vm = vm(
        &host,
        vec![DeviceSpec {
            requester_id: 0x100,
            ims_slots: 8,
            ..DeviceSpec::default()
        }],
    );
    let targets = [Target::new(1, 0x40), Target::new(0, 0x41)];
    let ims = |index, pasid| {
        let reply = vm.call(&Request {
            device: 0,
            tag: 3,
            op: Operation::Alloc(Alloc {
                kind: Kind::Ims,
                index: IndexSpec::At(index),
                min: 1,
                max: 1,
                pasid,
                targeting: pvirq_proto::Targeting::PerVector,
                targets: &targets[..1],
            }),
        });
        match Response::decode(&reply, feature::V1).unwrap().outcome {
            Outcome::Allocated { grants, .. } => grants.get(0).unwrap().message(),
            other => panic!("{other:?}"),
        }
    };
    let bound = ims(0, Some(0x42));
    let unbound = ims(1, None);
    // The PASID the grant was made for resolves; another is blocked and recorded.
    assert_eq!(
        host.fire_tagged(0x100, Some(0x42), bound).unwrap().to(),
        Some((1, 0x40))
    );
    let before = host.faults().count;
    let fault = host.fire_tagged(0x100, Some(0x43), bound).unwrap_err();
    assert_eq!(
        fault.reason,
        FaultReason::PasidMismatch {
            expected: Some(0x42),
            got: 0x43
        }
    );
    assert_eq!(host.faults().count, before + 1);
    assert_eq!(host.faults().recent.last(), Some(&fault));
    // A grant made without a PASID takes no tagged write.
    let fault = host.fire_tagged(0x100, Some(0x42), unbound).unwrap_err();
    assert_eq!(
        fault.reason,
        FaultReason::PasidMismatch {
            expected: None,
            got: 0x42
        }
    );
    // Another requester with the right PASID is still a source-id mismatch first.
    assert!(matches!(
        host.fire_tagged(0x200, Some(0x42), bound)
            .unwrap_err()
            .reason,
        FaultReason::Remap(_)
    ));
    assert_eq!(host.faults().count, before + 3);
    host.check_invariants().unwrap();
}

#[test]
fn the_model_config_selects_amd_tables_and_posting_and_backends_report_them() {
    for (placement, format) in [
        (
            Placement::Vtd { unit: 0 },
            pvirq_proto::MessageFormat::VtdRemappable,
        ),
        (
            Placement::Amd { entries: 2048 },
            pvirq_proto::MessageFormat::AmdRemapped,
        ),
    ] {
        for posted in [false, true] {
            let host = ModelHost::new(&ModelConfig {
                placement,
                posted,
                ..ModelConfig::default()
            })
            .unwrap();
            let vm = vm(&host, vec![device(0x100, 4, 64), device(0x200, 0, 64)]);
            for handle in 0..2 {
                assert_eq!(vm.with_backend(handle, |b| b.format()), Some(format));
                assert_eq!(vm.with_backend(handle, |b| b.can_post()), Some(posted));
            }
            // Grants carry the format's messages: an AMD device's data is its own index.
            let g = alloc(&vm, 1, Kind::MsiX, 2, 2).unwrap();
            if format == pvirq_proto::MessageFormat::AmdRemapped {
                assert_eq!(g[1].message(), amd::amd_message(1));
                assert_eq!(host.occupancy().units[0].used, 0, "VT-d untouched");
            } else {
                assert!(pvirq_proto::RemappableMsi::decode(g[1].message()).is_ok());
            }
            host.check_invariants().unwrap();
        }
    }
    let bad = |placement| {
        ModelHost::new(&ModelConfig {
            placement,
            ..ModelConfig::default()
        })
        .is_err()
    };
    assert!(bad(Placement::Vtd { unit: 1 }));
    assert!(bad(Placement::Amd { entries: 100 }));
}
