//! The extensions (issue 13, request side) the way real drivers use them, on a modelled
//! host shared by several VMs: a Linux-shaped MSI-X driver that allocates parked and
//! activates once it knows its count, one that asks for a spread, sub-functions kept
//! apart by shares, IMS interfaces told apart by PASID, and a version-1 driver beside
//! them on the same host. Every interrupt is fired through the host and must arrive where
//! the driver asked, or be blocked.
//!
//! The guest library negotiates version 1 only for now, so the requests are encoded with
//! `pvirq-proto` and handed to each VM ([`Vm::call`]).

use pvirq_host::model::{
    FaultReason, ModelConfig, ModelHost, Placement, RemapConfig, VectorConfig,
};
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::{ApicIds, DeviceSpec, Vm, VmConfig};
use pvirq_proto::{
    Alloc, DeviceInfo, GrantInfo, GrantMode, IndexList, IndexRange, IndexSpec, Indices, Kind, Le32,
    MessageFormat, Operation, Outcome, PciIdentity, Refusal, Request, Resource, Response, Retarget,
    RetargetTo, Target, Targeting, feature,
};

/// A posting host: one VT-d unit of 256 entries, 2 CPUs of 16 host vectors.
fn host() -> ModelHost {
    ModelHost::new(&ModelConfig {
        remap: RemapConfig {
            units: 1,
            entries_per_unit: 256,
        },
        vectors: VectorConfig {
            cpus: 2,
            first: 0x20,
            end: 0x30,
            reserved: Vec::new(),
        },
        posted: true,
        ..ModelConfig::default()
    })
    .unwrap()
}

/// QEMU-style sparse APIC IDs for 8 vCPUs (two sockets of four).
const APIC_IDS: [u32; 8] = [0, 1, 2, 3, 16, 17, 18, 19];

fn vm(host: &ModelHost, quota: u32, devices: Vec<DeviceSpec>, features: u64) -> Vm {
    let vm = host
        .create_vm(
            VmConfig {
                quota,
                num_vcpus: 8,
                max_batch: 64,
                devices,
                apic_ids: ApicIds::Table(APIC_IDS.to_vec()),
            },
            Box::new(MemoryRoutes::kvm_like()),
        )
        .unwrap();
    vm.set_features(features);
    vm
}

fn spec(requester_id: u16, msix: u16, ims: u32) -> DeviceSpec {
    DeviceSpec {
        requester_id,
        msix_table_size: msix,
        ims_slots: ims,
        ..DeviceSpec::default()
    }
}

fn call(vm: &Vm, device: u32, op: Operation<'_>) -> Vec<u8> {
    vm.call(&Request {
        device,
        tag: 0xe2e,
        op,
    })
}

fn alloc(vm: &Vm, device: u32, a: Alloc<'_>) -> Result<Vec<GrantInfo>, Refusal> {
    let reply = call(vm, device, Operation::Alloc(a));
    match Response::decode(&reply, vm.features()).unwrap().outcome {
        Outcome::Allocated { grants, .. } => Ok(grants.iter().collect()),
        Outcome::Refused(r) => Err(r),
        other => panic!("{other:?}"),
    }
}

fn count(vm: &Vm, device: u32, op: Operation<'_>) -> Result<u32, Refusal> {
    let reply = call(vm, device, op);
    match Response::decode(&reply, vm.features()).unwrap().outcome {
        Outcome::Freed { count, .. } | Outcome::Retargeted { count, .. } => Ok(count),
        Outcome::Refused(r) => Err(r),
        other => panic!("{other:?}"),
    }
}

fn query(vm: &Vm, device: u32) -> DeviceInfo {
    let reply = call(vm, device, Operation::Query);
    match Response::decode(&reply, vm.features()).unwrap().outcome {
        Outcome::Queried { info, .. } => info,
        other => panic!("{other:?}"),
    }
}

fn any(kind: Kind, min: u16, max: u16, targeting: Targeting, targets: &[Target]) -> Alloc<'_> {
    Alloc {
        kind,
        index: IndexSpec::Any,
        min,
        max,
        pasid: None,
        targeting,
        targets,
    }
}

fn le(indices: impl IntoIterator<Item = u32>) -> Vec<Le32> {
    indices.into_iter().map(Le32::new).collect()
}

/// Linux's affinity spread over `cpus` APIC IDs, one vector per CPU from 0x40.
fn per_cpu(cpus: &[u32]) -> Vec<Target> {
    cpus.iter()
        .enumerate()
        .map(|(i, id)| Target::new(*id, 0x40 + i as u8))
        .collect()
}

#[test]
fn a_linux_shaped_driver_allocates_parked_and_activates_once_it_knows_its_count() {
    let host = host();
    let features = feature::ALL;
    let nvme = vm(&host, 6, vec![spec(0x0100, 64, 0)], features);
    // It binds the handle by the PCI address the guest enumerates.
    let ext = query(&nvme, 0).ext.unwrap();
    assert_eq!((ext.identity.bus, ext.identity.devfn), (0x01, 0x00));
    assert_eq!(
        (ext.format, ext.can_post, ext.msix_free_run),
        (MessageFormat::VtdRemappable, true, 64)
    );
    // One vector per CPU wanted (9: admin + 8 I/O), at least 2; the quota allows 6.
    let parked = alloc(&nvme, 0, any(Kind::MsiX, 2, 9, Targeting::Parked, &[])).unwrap();
    assert_eq!(parked.len(), 6);
    assert!(
        parked
            .iter()
            .all(|g| g.parked() && g.mode() == GrantMode::Posted)
    );
    // Interrupts before activation are dropped (the driver keeps them masked anyway).
    assert_eq!(host.fire(0x0100, parked[0].message()).unwrap().dest, None);
    // Now it knows n = 6: affinity over its 8 CPUs, activated in one request.
    let cpus: Vec<u32> = (0..6).map(|i| APIC_IDS[i * 8 / 6]).collect();
    let targets = per_cpu(&cpus);
    let activate = Operation::Retarget(Retarget {
        indices: Indices::Run(IndexRange {
            kind: Kind::MsiX,
            first: 0,
            count: 6,
        }),
        to: RetargetTo::Targets(&targets),
    });
    assert_eq!(count(&nvme, 0, activate), Ok(6));
    for (g, t) in parked.iter().zip(&targets) {
        let d = host.fire(0x0100, g.message()).unwrap();
        assert_eq!(
            (d.to(), d.mode),
            (Some((t.dest(), t.vector())), GrantMode::Posted)
        );
    }
    // Posted: no host vector was taken, and none is needed.
    assert_eq!(host.occupancy().vectors_used, 0);
    // At teardown it frees everything the ALLOC gave in one request.
    let all = le(parked.iter().map(|g| g.index()));
    let free = Operation::Free(Indices::List {
        kind: Kind::MsiX,
        indices: IndexList::new(&all).unwrap(),
    });
    assert_eq!(count(&nvme, 0, free), Ok(6));
    assert!(host.fire(0x0100, parked[0].message()).is_err());
    host.check_invariants().unwrap();
}

#[test]
fn a_spread_request_lands_where_linux_spreads_affinity() {
    let host = host();
    let nic = vm(&host, 5, vec![spec(0x0200, 64, 0)], feature::ALL);
    let targets = per_cpu(&APIC_IDS);
    // 8 targets, 5 granted (the quota): grant i on target ⌊i × 8 / 5⌋.
    let g = alloc(&nic, 0, any(Kind::MsiX, 1, 16, Targeting::Spread, &targets)).unwrap();
    assert_eq!(g.len(), 5);
    for (i, g) in g.iter().enumerate() {
        let t = targets[i * 8 / 5];
        let d = host.fire(0x0200, g.message()).unwrap();
        assert_eq!(d.to(), Some((t.dest(), t.vector())), "grant {i}");
    }
    // Scattered indices go back in one request, and QUERY tells how long a contiguous
    // run the table still has (5..64, not the holes at 1 and 3).
    let holes = le([1, 3]);
    let free = Operation::Free(Indices::List {
        kind: Kind::MsiX,
        indices: IndexList::new(&holes).unwrap(),
    });
    assert_eq!(count(&nic, 0, free), Ok(2));
    assert_eq!(query(&nic, 0).ext.unwrap().msix_free_run, 59);
    host.check_invariants().unwrap();
}

#[test]
fn shares_keep_one_function_from_starving_its_sub_functions() {
    let host = host();
    let mut pf = spec(0x0300, 64, 0);
    pf.share = Some(8);
    let mut sf1 = spec(0x0301, 16, 0);
    sf1.share = Some(4);
    let sf2 = DeviceSpec {
        requester_id: 0x0302,
        ..sf1
    };
    let mlx = vm(&host, 16, vec![pf, sf1, sf2], feature::ALL);
    let t = per_cpu(&APIC_IDS);
    let t16: Vec<Target> = t.iter().cycle().take(16).copied().collect();
    // The PF asks for everything first and gets its share, not the quota.
    assert_eq!(
        alloc(&mlx, 0, any(Kind::MsiX, 1, 16, Targeting::PerVector, &t16))
            .unwrap()
            .len(),
        8
    );
    assert_eq!(
        alloc(
            &mlx,
            0,
            any(Kind::MsiX, 1, 1, Targeting::PerVector, &t[..1])
        ),
        Err(Refusal::NoSpace {
            resource: Resource::DeviceShare,
            available: 0
        })
    );
    for sf in 1..3 {
        assert_eq!(query(&mlx, sf).available, 4);
        assert_eq!(
            alloc(
                &mlx,
                sf,
                any(Kind::MsiX, 4, 4, Targeting::PerVector, &t[..4])
            )
            .unwrap()
            .len(),
            4
        );
    }
    assert_eq!(mlx.occupancy().per_device, [8, 4, 4]);
    mlx.check_invariants().unwrap();
}

#[test]
fn ims_interfaces_sharing_a_requester_id_are_told_apart_by_pasid() {
    let host = host();
    // Two work queues of one function: the guest sees one requester ID, two PASIDs.
    let wq = |host_rid, pasid| DeviceSpec {
        guest_identity: Some(PciIdentity {
            segment: 0,
            bus: 0x6a,
            devfn: 0x01,
            requester_id: 0x6a01,
            pasid: Some(pasid),
        }),
        ..spec(host_rid, 0, 32)
    };
    let idxd = vm(&host, 16, vec![wq(0x6a01, 1), wq(0x6a02, 2)], feature::ALL);
    let ids: Vec<_> = (0..2)
        .map(|d| query(&idxd, d).ext.unwrap().identity)
        .collect();
    assert_eq!(ids[0].requester_id, ids[1].requester_id);
    assert_eq!((ids[0].pasid, ids[1].pasid), (Some(1), Some(2)));
    let t = per_cpu(&APIC_IDS[..2]);
    let g = alloc(
        &idxd,
        1,
        Alloc {
            kind: Kind::Ims,
            index: IndexSpec::AnyContiguous,
            min: 2,
            max: 2,
            pasid: Some(2),
            targeting: Targeting::PerVector,
            targets: &t,
        },
    )
    .unwrap();
    assert!(g.iter().all(|g| g.pasid() == Some(2)));
    // The grant's PASID resolves; another interface's is blocked and recorded.
    assert!(host.fire_tagged(0x6a02, Some(2), g[0].message()).is_ok());
    let fault = host
        .fire_tagged(0x6a02, Some(1), g[0].message())
        .unwrap_err();
    assert_eq!(
        fault.reason,
        FaultReason::PasidMismatch {
            expected: Some(2),
            got: 1
        }
    );
    assert_eq!(host.faults().recent.last(), Some(&fault));
}

#[test]
fn a_version_1_driver_beside_them_gets_version_1_answers_on_an_amd_device() {
    let host = host();
    host.place_as(0x0400, Placement::Amd { entries: 512 })
        .unwrap();
    let v1 = vm(&host, 8, vec![spec(0x0400, 64, 0)], feature::V1);
    let ext = vm(&host, 8, vec![spec(0x0500, 64, 0)], feature::ALL);
    // vCPU indices for the version-1 driver: index 4 is APIC ID 16.
    let t = [Target::new(4, 0x41), Target::new(0, 0x42)];
    let reply = call(
        &v1,
        0,
        Operation::Alloc(any(Kind::MsiX, 2, 2, Targeting::PerVector, &t)),
    );
    assert_eq!(reply.len(), 24 + 2 * 16, "16-byte records");
    let g = alloc(&v1, 0, any(Kind::MsiX, 1, 1, Targeting::PerVector, &t[..1])).unwrap();
    assert_eq!(
        g[0].message().address,
        0xFEE0_0000,
        "AMD compatibility format"
    );
    assert_eq!(
        host.fire(0x0400, g[0].message()).unwrap().to(),
        Some((16, 0x41))
    );
    assert_eq!(query(&v1, 0).ext, None);
    // Its grants are remapped and take host vectors; the other VM's are posted.
    assert_eq!(host.occupancy().vectors_used, 3);
    alloc(&ext, 0, any(Kind::MsiX, 4, 4, Targeting::Parked, &[])).unwrap();
    assert_eq!(host.occupancy().vectors_used, 3);
    host.check_invariants().unwrap();
}
