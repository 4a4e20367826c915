//! Transaction tests at the VM API (no virtio): statuses, counts, rollback, isolation.

use crate::backend::GuestDest;
use crate::config::{DeviceSpec, VmConfig};
use crate::fault::{FaultKind, FaultPlan, Faulty, LayerCall};
use crate::grants::GrantRecord;
use crate::model::{
    FaultReason, HostOccupancy, ModelConfig, ModelHost, RemapConfig, RemapFault, VectorConfig,
};
use crate::routes::{GuestRoutes, MemoryRoutes, RouteError, RouteId, RouteState, StagedRoute};
use crate::transaction::BufferSink;
use crate::vm::{Vm, VmOccupancy};
use pvirq_proto::{
    Alloc, DeviceInfo, Field, Grant, IndexRange, IndexSpec, Kind, KindSet, Operation, Outcome,
    Refusal, RemappableMsi, Request, Resource, Response, Retarget, Status, Target, Targeting,
    feature,
};

pub(crate) fn dev(requester_id: u16, msi: u16, msix: u16, ims: u32) -> DeviceSpec {
    DeviceSpec {
        requester_id,
        msi_max: msi,
        msix_table_size: msix,
        ims_slots: ims,
        ..DeviceSpec::default()
    }
}

pub(crate) fn small_host(entries: u32, cpus: u32) -> ModelHost {
    ModelHost::new(&ModelConfig {
        remap: RemapConfig {
            units: 2,
            entries_per_unit: entries,
        },
        vectors: VectorConfig {
            cpus,
            ..VectorConfig::default()
        },
        ..ModelConfig::default()
    })
    .unwrap()
}

fn vm_on(host: &ModelHost, quota: u32, devices: Vec<DeviceSpec>) -> Vm {
    host.create_vm(
        VmConfig {
            quota,
            num_vcpus: 4,
            max_batch: 64,
            devices,
            ..VmConfig::default()
        },
        Box::new(MemoryRoutes::kvm_like()),
    )
    .unwrap()
}

fn targets(n: u16) -> Vec<Target> {
    (0..n)
        .map(|i| Target::new(u32::from(i % 4), 0x30 + (i % 200) as u8))
        .collect()
}

fn req<'a>(device: u32, op: Operation<'a>) -> Request<'a> {
    Request {
        device,
        tag: 0x77,
        op,
    }
}

fn alloc(vm: &Vm, device: u32, kind: Kind, index: IndexSpec, min: u16, max: u16) -> Vec<u8> {
    let t = targets(max);
    vm.call(&req(
        device,
        Operation::Alloc(Alloc {
            kind,
            index,
            min,
            max,
            pasid: None,
            targets: &t,
            targeting: Targeting::PerVector,
        }),
    ))
}

fn free_req(vm: &Vm, device: u32, kind: Kind, first: u32, count: u16) -> Vec<u8> {
    vm.call(&req(
        device,
        Operation::Free(IndexRange { kind, first, count }.into()),
    ))
}

fn retarget_req(vm: &Vm, device: u32, kind: Kind, first: u32, t: &[Target]) -> Vec<u8> {
    vm.call(&req(
        device,
        Operation::Retarget(Retarget::run(
            IndexRange {
                kind,
                first,
                count: t.len() as u16,
            },
            t,
        )),
    ))
}

fn refusal(bytes: &[u8]) -> Option<Refusal> {
    match Response::decode(bytes, feature::V1).unwrap().outcome {
        Outcome::Refused(r) => Some(r),
        _ => None,
    }
}

fn grants(bytes: &[u8]) -> Vec<Grant> {
    match Response::decode(bytes, feature::V1).unwrap().outcome {
        Outcome::Allocated { grants, .. } => grants.iter().map(|g| g.grant()).collect(),
        other => panic!("expected grants, got {other:?}"),
    }
}

/// `(count, quota_remaining)` of an OK FREE/RETARGET/RESET/ALLOC.
fn counted(bytes: &[u8]) -> (u32, u32) {
    match Response::decode(bytes, feature::V1).unwrap().outcome {
        Outcome::Freed {
            count,
            quota_remaining,
        }
        | Outcome::Retargeted {
            count,
            quota_remaining,
        }
        | Outcome::Reset {
            count,
            quota_remaining,
        } => (count, quota_remaining),
        Outcome::Allocated {
            grants,
            quota_remaining,
        } => (grants.len() as u32, quota_remaining),
        other => panic!("expected a count, got {other:?}"),
    }
}

fn info(vm: &Vm, device: u32) -> (DeviceInfo, u32) {
    match Response::decode(&vm.call(&req(device, Operation::Query)), feature::V1)
        .unwrap()
        .outcome
    {
        Outcome::Queried {
            info,
            quota_remaining,
        } => (info, quota_remaining),
        other => panic!("expected info, got {other:?}"),
    }
}

fn remap_msg(handle: u16, sub: u16) -> pvirq_proto::MsiMessage {
    RemappableMsi {
        handle,
        subhandle: Some(sub),
    }
    .message()
}

/// One grant as a test sees it: kind, index, record, live route destination.
type GrantView = (Kind, u32, GrantRecord, Option<RouteState>);

/// Everything observable about the pools: compared before and after a refused request.
#[derive(Debug, PartialEq)]
struct Snapshot {
    host: HostOccupancy,
    vms: Vec<(VmOccupancy, Vec<Vec<GrantView>>)>,
}

fn snapshot(host: &ModelHost, vms: &[&Vm]) -> Snapshot {
    host.check_invariants().unwrap();
    Snapshot {
        host: host.occupancy(),
        vms: vms
            .iter()
            .map(|vm| {
                let devices = (0..vm.config().devices.len() as u32)
                    .map(|d| {
                        vm.grants(d)
                            .into_iter()
                            .map(|(k, i, r)| (k, i, r, vm.route(r.route)))
                            .collect()
                    })
                    .collect();
                (vm.occupancy(), devices)
            })
            .collect(),
    }
}

#[test]
fn msix_any_grants_the_lowest_indices_with_their_own_irtes() {
    let host = small_host(256, 2);
    let vm = vm_on(&host, 32, vec![dev(0x100, 0, 16, 0)]);
    let r = alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 1, 4);
    let g = grants(&r);
    assert_eq!(g.iter().map(Grant::index).collect::<Vec<_>>(), [0, 1, 2, 3]);
    for (i, grant) in g.iter().enumerate() {
        assert_eq!(grant.message(), remap_msg(i as u16, 0));
    }
    assert_eq!(counted(&r), (4, 28));
    let resp = Response::decode(&r, feature::V1).unwrap();
    assert_eq!((resp.opcode, resp.device, resp.tag), (2, 0, 0x77));
    // Next ANY skips the granted ones; AT elsewhere works.
    assert_eq!(
        grants(&alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 1, 1))[0].index(),
        4
    );
    assert_eq!(
        grants(&alloc(&vm, 0, Kind::MsiX, IndexSpec::At(10), 2, 2))[1].index(),
        11
    );
    assert_eq!(vm.occupancy().held, 7);
    host.check_invariants().unwrap();
}

#[test]
fn at_index_checks_range_and_use_before_anything() {
    let host = small_host(256, 2);
    let vm = vm_on(&host, 64, vec![dev(0x100, 0, 8, 0)]);
    assert_eq!(
        refusal(&alloc(&vm, 0, Kind::MsiX, IndexSpec::At(6), 1, 4)),
        Some(Refusal::IndexOutOfRange { index: 8 })
    );
    assert_eq!(
        refusal(&alloc(&vm, 0, Kind::MsiX, IndexSpec::At(9), 1, 1)),
        Some(Refusal::IndexOutOfRange { index: 9 })
    );
    grants(&alloc(&vm, 0, Kind::MsiX, IndexSpec::At(3), 1, 1));
    assert_eq!(
        refusal(&alloc(&vm, 0, Kind::MsiX, IndexSpec::At(1), 1, 4)),
        Some(Refusal::IndexInUse { index: 3 })
    );
    assert_eq!(vm.occupancy().held, 1);
}

#[test]
fn msi_block_is_aligned_whole_and_single() {
    let host = small_host(256, 2);
    let vm = vm_on(&host, 64, vec![dev(0x100, 8, 4, 0)]);
    grants(&alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 1, 1)); // IRTE 0 taken
    let g = grants(&alloc(&vm, 0, Kind::Msi, IndexSpec::Any, 1, 32));
    // Capped at the device's msi_max; the block avoids IRTE 0 and is aligned to 8.
    assert_eq!(g.len(), 8);
    for (i, grant) in g.iter().enumerate() {
        assert_eq!(grant.index(), i as u32);
        assert_eq!(grant.message(), remap_msg(8, i as u16));
    }
    assert_eq!(
        refusal(&alloc(&vm, 0, Kind::Msi, IndexSpec::Any, 1, 1)),
        Some(Refusal::IndexInUse { index: 0 })
    );
    assert_eq!(
        refusal(&free_req(&vm, 0, Kind::Msi, 0, 4)),
        Some(Refusal::NotGranted { index: 0 })
    );
    assert_eq!(
        refusal(&free_req(&vm, 0, Kind::Msi, 0, 16)),
        Some(Refusal::NotGranted { index: 8 })
    );
    assert_eq!(
        refusal(&free_req(&vm, 0, Kind::Msi, 2, 8)),
        Some(Refusal::NotGranted { index: 2 })
    );
    assert_eq!(counted(&free_req(&vm, 0, Kind::Msi, 0, 8)), (8, 63));
    assert_eq!(
        refusal(&free_req(&vm, 0, Kind::Msi, 0, 8)),
        Some(Refusal::NotGranted { index: 0 })
    );
    host.check_invariants().unwrap();
}

#[test]
fn msi_takes_the_largest_aligned_block_the_unit_has() {
    let host = small_host(64, 2);
    let vm = vm_on(&host, 64, vec![dev(0x100, 32, 64, 0)]);
    // Occupy IRTEs 0..=16 so that no aligned 32-block is free in 0..32 and 32..64 is free.
    grants(&alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 17, 17));
    // 47 free entries, one aligned 32-block (32..64).
    let g = grants(&alloc(&vm, 0, Kind::Msi, IndexSpec::Any, 1, 32));
    assert_eq!(g.len(), 32);
    assert_eq!(g[0].message(), remap_msg(32, 0));
    assert_eq!(counted(&free_req(&vm, 0, Kind::Msi, 0, 32)), (32, 47));
    // With 17..32 taken as well, the largest block left is 16 (0..16 has IRTE 0..17 used:
    // only 32..64 is free again).
    grants(&alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 16, 16));
    let g = grants(&alloc(&vm, 0, Kind::Msi, IndexSpec::Any, 1, 32));
    assert_eq!(g.len(), 16);
    host.check_invariants().unwrap();
}

#[test]
fn grants_as_many_as_available_between_min_and_max() {
    let host = small_host(256, 2);
    let vm = vm_on(&host, 5, vec![dev(0x100, 0, 16, 0)]);
    assert_eq!(
        counted(&alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 1, 8)),
        (5, 0)
    );
    assert_eq!(
        refusal(&alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 2, 4)),
        Some(Refusal::NoSpace {
            resource: Resource::VmQuota,
            available: 0
        })
    );
    host.check_invariants().unwrap();
}

#[test]
fn no_space_names_the_first_short_resource_and_what_was_available() {
    // Device slots.
    let host = small_host(256, 2);
    let vm = vm_on(&host, 64, vec![dev(0x100, 0, 4, 0)]);
    assert_eq!(
        refusal(&alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 5, 5)),
        Some(Refusal::NoSpace {
            resource: Resource::DeviceSlots,
            available: 4
        })
    );
    // MSI above the device's block size.
    let vm2 = vm_on(&host, 64, vec![dev(0x200, 4, 0, 0)]);
    assert_eq!(
        refusal(&alloc(&vm2, 0, Kind::Msi, IndexSpec::Any, 8, 8)),
        Some(Refusal::NoSpace {
            resource: Resource::DeviceSlots,
            available: 4
        })
    );
    // IRTEs: a unit of 4 entries.
    let host = small_host(4, 2);
    let vm = vm_on(&host, 64, vec![dev(0x100, 0, 16, 0)]);
    assert_eq!(
        refusal(&alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 6, 8)),
        Some(Refusal::NoSpace {
            resource: Resource::Irte,
            available: 4
        })
    );
    // Host vectors: one CPU with 3 usable vectors.
    let host = ModelHost::new(&ModelConfig {
        remap: RemapConfig::default(),
        vectors: VectorConfig {
            cpus: 1,
            first: 0x20,
            end: 0x23,
            reserved: vec![],
        },
        ..ModelConfig::default()
    })
    .unwrap();
    let vm = vm_on(&host, 64, vec![dev(0x100, 0, 16, 0)]);
    assert_eq!(
        refusal(&alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 4, 8)),
        Some(Refusal::NoSpace {
            resource: Resource::HostVector,
            available: 3
        })
    );
    // Guest routes.
    let host = small_host(256, 2);
    let vm = host
        .create_vm(
            VmConfig {
                quota: 64,
                num_vcpus: 1,
                max_batch: 64,
                devices: vec![dev(0x100, 0, 16, 0)],
                ..VmConfig::default()
            },
            Box::new(MemoryRoutes::with_range(24, 2).unwrap()),
        )
        .unwrap();
    let t = [Target::new(0, 0x40); 3];
    let r = vm.call(&req(0, Operation::Alloc(Alloc::any(Kind::MsiX, 3, &t))));
    assert_eq!(
        refusal(&r),
        Some(Refusal::NoSpace {
            resource: Resource::GuestRoute,
            available: 2
        })
    );
    assert_eq!(host.occupancy().vectors_used, 0);
}

#[test]
fn kinds_features_and_targets_are_checked() {
    let host = small_host(256, 2);
    let vm = vm_on(&host, 64, vec![dev(0x100, 0, 16, 8)]);
    assert_eq!(
        refusal(&alloc(&vm, 0, Kind::Msi, IndexSpec::Any, 1, 1)),
        Some(Refusal::Unsupported { field: Field::Kind })
    );
    assert_eq!(
        refusal(&alloc(&vm, 1, Kind::MsiX, IndexSpec::Any, 1, 1)),
        Some(Refusal::NoDevice)
    );
    let t = [Target::new(0, 0x40), Target::new(4, 0x41)];
    let r = vm.call(&req(0, Operation::Alloc(Alloc::any(Kind::MsiX, 1, &t))));
    assert_eq!(
        refusal(&r),
        Some(Refusal::InvalidTarget {
            field: Field::TargetVcpu,
            entry: 1
        })
    );
    vm.set_features(feature::VERSION_1 | feature::IMS);
    assert_eq!(
        refusal(&alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 1, 1)),
        Some(Refusal::Unsupported { field: Field::Kind })
    );
    let t = [Target::new(0, 0x40)];
    let ims_pasid = |vm: &Vm| {
        vm.call(&req(
            0,
            Operation::Alloc(Alloc {
                kind: Kind::Ims,
                index: IndexSpec::Any,
                min: 1,
                max: 1,
                pasid: Some(5),
                targets: &t,
                targeting: Targeting::PerVector,
            }),
        ))
    };
    assert_eq!(
        refusal(&ims_pasid(&vm)),
        Some(Refusal::Unsupported {
            field: Field::Pasid
        })
    );
    assert_eq!(
        refusal(&retarget_req(&vm, 0, Kind::Ims, 0, &t)),
        Some(Refusal::Unsupported {
            field: Field::Opcode
        })
    );
    let (i, _) = info(&vm, 0);
    assert_eq!(i.kinds, KindSet::EMPTY.with(Kind::Ims));
    assert_eq!((i.msix_table_size, i.ims_slots), (0, 8));
    vm.set_features(feature::V1);
    assert_eq!(grants(&ims_pasid(&vm)).len(), 1);
    assert_eq!(vm.occupancy().held, 1);
}

#[test]
fn decode_errors_and_reply_space() {
    let host = small_host(256, 2);
    let vm = vm_on(&host, 64, vec![dev(0x100, 0, 16, 0)]);
    let mut sink = BufferSink::new(64);
    // Shorter than a header: zeros echoed.
    let h = vm.handle(&[2, 0, 0], &mut sink);
    assert_eq!(h.status, Some(Status::BadRequest));
    let r = Response::decode(sink.bytes(), feature::V1).unwrap();
    assert_eq!((r.opcode, r.device, r.tag), (0, 0, 0));
    assert_eq!(
        r.outcome,
        Outcome::Refused(Refusal::BadRequest {
            field: Field::Length,
            entry: 0
        })
    );
    // Unknown opcode, echoed.
    let mut bad = [0u8; 16];
    bad[0] = 9;
    bad[4] = 3;
    bad[8] = 0x55;
    vm.handle(&bad, &mut sink);
    let r = Response::decode(sink.bytes(), feature::V1).unwrap();
    assert_eq!((r.opcode, r.device, r.tag), (9, 3, 0x55));
    assert_eq!(
        r.outcome,
        Outcome::Refused(Refusal::Unsupported {
            field: Field::Opcode
        })
    );
    // Reserved header bits.
    bad[0] = 1;
    bad[1] = 1;
    vm.handle(&bad, &mut sink);
    assert_eq!(
        refusal(sink.bytes()),
        Some(Refusal::BadRequest {
            field: Field::HeaderReserved,
            entry: 0
        })
    );
    // Batch too large (max_batch 64).
    let t = targets(65);
    let request = req(0, Operation::Alloc(Alloc::any(Kind::MsiX, 1, &t)));
    let mut bytes = vec![0u8; request.encoded_len()];
    request.encode(&mut bytes).unwrap();
    let mut big = BufferSink::new(4096);
    vm.handle(&bytes, &mut big);
    assert_eq!(
        refusal(big.bytes()),
        Some(Refusal::BatchTooLarge { max_batch: 64 })
    );

    // Reply space: < 24 says nothing; < max reply is RESPONSE_TOO_SMALL; nothing reserved.
    let t = targets(4);
    let request = req(0, Operation::Alloc(Alloc::any(Kind::MsiX, 1, &t)));
    let mut bytes = vec![0u8; request.encoded_len()];
    request.encode(&mut bytes).unwrap();
    let mut tiny = BufferSink::new(23);
    let h = vm.handle(&bytes, &mut tiny);
    assert_eq!((h.used_len, h.status), (0, None));
    let mut small = BufferSink::new(24 + 16 * 3);
    let h = vm.handle(&bytes, &mut small);
    assert_eq!(h.used_len, 24);
    assert_eq!(
        refusal(small.bytes()),
        Some(Refusal::ResponseTooSmall { needed: 24 + 64 })
    );
    assert_eq!(vm.occupancy().held, 0);
    assert_eq!(host.occupancy().vectors_used, 0);
}

#[test]
fn free_retarget_reset_are_checked_and_all_or_nothing() {
    let host = small_host(256, 2);
    let vm = vm_on(&host, 64, vec![dev(0x100, 0, 16, 0)]);
    grants(&alloc(&vm, 0, Kind::MsiX, IndexSpec::At(2), 3, 3)); // 2, 3, 4
    assert_eq!(
        refusal(&free_req(&vm, 0, Kind::MsiX, 3, 3)),
        Some(Refusal::NotGranted { index: 5 })
    );
    assert_eq!(
        refusal(&free_req(&vm, 0, Kind::MsiX, 1, 1)),
        Some(Refusal::NotGranted { index: 1 })
    );
    assert_eq!(vm.occupancy().held, 3);
    let t = [Target::new(3, 0x99), Target::new(9, 0x98)];
    assert_eq!(
        refusal(&retarget_req(&vm, 0, Kind::MsiX, 3, &t)),
        Some(Refusal::InvalidTarget {
            field: Field::TargetVcpu,
            entry: 1
        })
    );
    // Spec §5.3: the targets' vCPUs (step 8) are checked before the indices (step 9).
    assert_eq!(
        refusal(&retarget_req(&vm, 0, Kind::MsiX, 4, &t)),
        Some(Refusal::InvalidTarget {
            field: Field::TargetVcpu,
            entry: 1
        })
    );
    let t = [Target::new(3, 0x99), Target::new(2, 0x98)];
    assert_eq!(
        refusal(&retarget_req(&vm, 0, Kind::MsiX, 4, &t)),
        Some(Refusal::NotGranted { index: 5 })
    );
    let before = vm.grants(0);
    assert_eq!(counted(&retarget_req(&vm, 0, Kind::MsiX, 3, &t)), (2, 61));
    // Messages and routes unchanged; the routes moved, and the records say where.
    let after = vm.grants(0);
    let same = |g: &(Kind, u32, GrantRecord)| (g.0, g.1, g.2.route, g.2.message, g.2.mode);
    assert_eq!(
        after.iter().map(same).collect::<Vec<_>>(),
        before.iter().map(same).collect::<Vec<_>>()
    );
    let route_of = |i: u32| before.iter().find(|g| g.1 == i).unwrap().2.route;
    let moved = |apic_id, vector| Some(RouteState::Live(GuestDest { apic_id, vector }));
    assert_eq!(vm.route(route_of(3)), moved(3, 0x99));
    assert_eq!(vm.route(route_of(4)), moved(2, 0x98));
    assert_eq!(
        after.iter().find(|g| g.1 == 3).unwrap().2.dest,
        Some(GuestDest {
            apic_id: 3,
            vector: 0x99
        })
    );
    assert_eq!(counted(&free_req(&vm, 0, Kind::MsiX, 3, 2)), (2, 63));
    assert_eq!(counted(&vm.call(&req(0, Operation::Reset))), (1, 64));
    assert_eq!(counted(&vm.call(&req(0, Operation::Reset))), (0, 64));
    assert_eq!(
        refusal(&vm.call(&req(5, Operation::Reset))),
        Some(Refusal::NoDevice)
    );
    host.check_invariants().unwrap();
    assert_eq!(host.occupancy().vectors_used, 0);
}

#[test]
fn query_reports_limits_state_and_what_an_alloc_could_get() {
    let host = small_host(256, 2);
    let vm = vm_on(&host, 10, vec![dev(0x100, 4, 16, 0)]);
    let (i, q) = info(&vm, 0);
    assert_eq!(i.kinds, KindSet::EMPTY.with(Kind::Msi).with(Kind::MsiX));
    assert_eq!((i.msi_max, i.msix_table_size, i.ims_slots), (4, 16, 0));
    assert_eq!((i.granted, i.vm_quota, i.available, q), (0, 10, 10, 10));
    grants(&alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 7, 7));
    let (i, q) = info(&vm, 0);
    assert_eq!((i.granted, i.available, q), (7, 3, 3));
    assert_eq!(
        refusal(&vm.call(&req(1, Operation::Query))),
        Some(Refusal::NoDevice)
    );
}

#[test]
fn handles_are_per_vm_and_vms_do_not_touch_each_other() {
    let host = small_host(256, 2);
    let a = vm_on(&host, 8, vec![dev(0x100, 0, 16, 0)]);
    let b = vm_on(&host, 8, vec![dev(0x200, 0, 16, 0), dev(0x201, 0, 4, 0)]);
    let ga = grants(&alloc(&a, 0, Kind::MsiX, IndexSpec::Any, 8, 8));
    // A is at its quota; B is not affected.
    assert_eq!(info(&b, 0).1, 8);
    let gb = grants(&alloc(&b, 0, Kind::MsiX, IndexSpec::Any, 8, 8));
    // B's index 0 is B's own: the IRTEs differ.
    assert_ne!(ga[0].message(), gb[0].message());
    // B cannot free A's grants (its handle 0 is its own device); freeing its own works.
    assert_eq!(
        refusal(&free_req(&b, 1, Kind::MsiX, 0, 1)),
        Some(Refusal::NotGranted { index: 0 })
    );
    assert_eq!(
        refusal(&b.call(&req(2, Operation::Query))),
        Some(Refusal::NoDevice)
    );
    assert_eq!(a.occupancy().held, 8);
    assert_eq!(counted(&b.call(&req(0, Operation::Reset))).0, 8);
    assert_eq!(a.occupancy().held, 8);
    host.check_invariants().unwrap();
    // Duplicate requester IDs are refused at creation.
    assert!(
        host.create_vm(
            VmConfig {
                quota: 1,
                num_vcpus: 1,
                max_batch: 1,
                devices: vec![dev(0x100, 0, 1, 0)],
                ..VmConfig::default()
            },
            Box::new(MemoryRoutes::kvm_like())
        )
        .is_err()
    );
}

#[test]
fn dropping_a_vm_or_resetting_it_returns_everything() {
    let host = small_host(256, 2);
    let a = vm_on(&host, 64, vec![dev(0x100, 8, 16, 0)]);
    grants(&alloc(&a, 0, Kind::MsiX, IndexSpec::Any, 10, 10));
    grants(&alloc(&a, 0, Kind::Msi, IndexSpec::Any, 8, 8));
    assert_eq!(a.reset_all(), 18);
    assert_eq!(a.occupancy().held, 0);
    assert_eq!(host.occupancy().vectors_used, 0);
    grants(&alloc(&a, 0, Kind::MsiX, IndexSpec::Any, 10, 10));
    assert_eq!(host.occupancy().units[0].used, 10);
    drop(a);
    let occ = host.occupancy();
    assert_eq!((occ.units[0].used, occ.vectors_used, occ.vms), (0, 0, 0));
    host.check_invariants().unwrap();
    // Its requester ID is free again.
    vm_on(&host, 1, vec![dev(0x100, 0, 1, 0)]);
}

#[test]
fn fire_delivers_through_irte_vector_and_route_and_records_faults() {
    let host = small_host(256, 2);
    let a = vm_on(&host, 64, vec![dev(0x100, 4, 16, 0)]);
    let b = vm_on(&host, 64, vec![dev(0x200, 0, 16, 0)]);
    let t = [Target::new(2, 0x45)];
    let r = a.call(&req(0, Operation::Alloc(Alloc::any(Kind::MsiX, 1, &t))));
    let msg = grants(&r)[0].message();
    let d = host.fire(0x100, msg).unwrap();
    let dest = |apic_id, vector| Some(GuestDest { apic_id, vector });
    assert_eq!((Some(d.vm), d.dest), (host.vm_id(&a), dest(2, 0x45)));
    // Multi-MSI: the device ORs the vector number into the data.
    let block = grants(&alloc(&a, 0, Kind::Msi, IndexSpec::Any, 4, 4));
    let mut m = block[0].message();
    m.data |= 3;
    let d = host.fire(0x100, m).unwrap();
    assert_eq!(d.dest, dest(3, 0x33));
    // Another device (another VM's) using A's message: source-id mismatch.
    let f = host.fire(0x200, msg).unwrap_err();
    assert_eq!(
        f.reason,
        FaultReason::Remap(RemapFault::SourceIdMismatch {
            index: 0,
            expected: 0x100
        })
    );
    // Unknown requester; compatibility-format message.
    assert_eq!(
        host.fire(0x999, msg).unwrap_err().reason,
        FaultReason::Remap(RemapFault::UnknownSource)
    );
    let compat = pvirq_proto::CompatMsi::fixed(0, 0x45).message();
    assert_eq!(
        host.fire(0x100, compat).unwrap_err().reason,
        FaultReason::Remap(RemapFault::NotRemappable)
    );
    // After FREE the handle is dead.
    counted(&free_req(&a, 0, Kind::MsiX, 0, 1));
    assert_eq!(
        host.fire(0x100, msg).unwrap_err().reason,
        FaultReason::Remap(RemapFault::EntryNotPresent { index: 0 })
    );
    let faults = host.faults();
    assert_eq!(faults.count, 4);
    assert_eq!(faults.recent.len(), 4);
    assert_eq!(faults.recent[0].source_id, 0x200);
    drop(b);
    a.with_routes(|r| assert_eq!(r.live(), 4));
}

#[test]
fn a_failed_reply_write_changes_nothing() {
    let host = small_host(256, 2);
    let vm = vm_on(&host, 64, vec![dev(0x100, 4, 16, 0)]);
    grants(&alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 2, 2));
    let t = targets(4);
    let moved = [Target::new(1, 0x90), Target::new(1, 0x91)];
    let requests = [
        req(0, Operation::Alloc(Alloc::any(Kind::MsiX, 1, &t))),
        req(0, Operation::Alloc(Alloc::any(Kind::Msi, 1, &t))),
        req(
            0,
            Operation::Free(
                IndexRange {
                    kind: Kind::MsiX,
                    first: 0,
                    count: 2,
                }
                .into(),
            ),
        ),
        req(
            0,
            Operation::Retarget(Retarget::run(
                IndexRange {
                    kind: Kind::MsiX,
                    first: 0,
                    count: 2,
                },
                &moved,
            )),
        ),
        req(0, Operation::Reset),
    ];
    for request in &requests {
        let before = snapshot(&host, &[&vm]);
        let mut bytes = vec![0u8; request.encoded_len()];
        request.encode(&mut bytes).unwrap();
        let mut sink = BufferSink::failing(request.max_response_len(feature::V1), 1);
        let h = vm.handle(&bytes, &mut sink);
        assert_eq!((h.used_len, h.status), (0, None), "{request}");
        assert_eq!(snapshot(&host, &[&vm]), before, "{request}");
    }
}

/// The requests a rollback sweep runs, against a VM that already holds some grants.
fn sweep_requests(t: &[Target]) -> Vec<Request<'_>> {
    vec![
        req(0, Operation::Alloc(Alloc::any(Kind::MsiX, 1, t))),
        req(0, Operation::Alloc(Alloc::any(Kind::Msi, 2, t))),
        req(
            0,
            Operation::Alloc(Alloc {
                kind: Kind::Ims,
                index: IndexSpec::At(5),
                min: 4,
                max: 4,
                pasid: Some(1),
                targets: t,
                targeting: Targeting::PerVector,
            }),
        ),
        req(
            0,
            Operation::Free(
                IndexRange {
                    kind: Kind::MsiX,
                    first: 0,
                    count: 2,
                }
                .into(),
            ),
        ),
        req(
            0,
            Operation::Retarget(Retarget::run(
                IndexRange {
                    kind: Kind::MsiX,
                    first: 0,
                    count: 2,
                },
                &t[..2],
            )),
        ),
        req(0, Operation::Reset),
    ]
}

struct Rig {
    host: ModelHost,
    vm: Vm,
    plan: FaultPlan,
}

fn rig() -> Rig {
    let plan = FaultPlan::new();
    let host = small_host(128, 2);
    let vm = host
        .create_vm_wrapped(
            VmConfig {
                quota: 64,
                num_vcpus: 4,
                max_batch: 64,
                devices: vec![dev(0x100, 4, 16, 16)],
                ..VmConfig::default()
            },
            |b| Box::new(Faulty::new(b, plan.clone())),
            Box::new(Faulty::new(MemoryRoutes::kvm_like(), plan.clone())),
        )
        .unwrap();
    // Some state to roll back to: two MSI-X grants.
    grants(&alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 2, 2));
    Rig { host, vm, plan }
}

#[test]
fn rollback_at_every_layer_boundary_leaves_every_pool_as_before() {
    let t = targets(4);
    for (r, request) in sweep_requests(&t).iter().enumerate() {
        // Reference: how many reserving calls the request makes, and its reply.
        let reference = rig();
        reference.plan.disarm();
        let expected = reference.vm.call(request);
        assert!(
            refusal(&expected).is_none(),
            "{request}: {:?}",
            refusal(&expected)
        );
        let calls = reference.plan.calls();
        assert!(calls > 0 || r == 5);
        for kind in [FaultKind::Exhausted, FaultKind::Failed] {
            for n in 1..=calls {
                let rig = rig();
                let before = snapshot(&rig.host, &[&rig.vm]);
                rig.plan.fail_nth(n, kind);
                let reply = rig.vm.call(request);
                assert_eq!(rig.plan.injected(), 1, "{request} n={n}");
                let refused =
                    refusal(&reply).unwrap_or_else(|| panic!("{request} n={n}: not refused"));
                assert!(
                    matches!(refused.status(), Status::NoSpace | Status::DeviceError),
                    "{request} n={n}: {refused}"
                );
                if kind == FaultKind::Failed {
                    assert_eq!(refused.status(), Status::DeviceError);
                }
                assert_eq!(
                    snapshot(&rig.host, &[&rig.vm]),
                    before,
                    "{request} n={n} {kind:?}"
                );
                // And the pools really are as before: the same request now gets the
                // reference's exact reply.
                rig.plan.disarm();
                assert_eq!(rig.vm.call(request), expected, "{request} n={n}");
                rig.host.check_invariants().unwrap();
            }
        }
    }
}

#[test]
fn a_failed_commit_after_the_write_is_rolled_back_and_reported() {
    let t = targets(4);
    for request in sweep_requests(&t) {
        let rig = rig();
        let before = snapshot(&rig.host, &[&rig.vm]);
        rig.plan.fail_nth_commit(1);
        let reply = rig.vm.call(&request);
        assert_eq!(
            refusal(&reply),
            Some(Refusal::DeviceError {
                resource: Resource::GuestRoute
            }),
            "{request}"
        );
        assert_eq!(snapshot(&rig.host, &[&rig.vm]), before, "{request}");
    }
}

/// Counts route commits.
struct CountingRoutes(MemoryRoutes, std::sync::Arc<std::sync::atomic::AtomicU64>);

impl GuestRoutes for CountingRoutes {
    fn available(&self) -> u32 {
        self.0.available()
    }
    fn stage_add(&mut self, d: Option<GuestDest>) -> Result<StagedRoute, RouteError> {
        self.0.stage_add(d)
    }
    fn stage_update(&mut self, id: RouteId, d: Option<GuestDest>) -> Result<(), RouteError> {
        self.0.stage_update(id, d)
    }
    fn stage_remove(&mut self, id: RouteId) -> Result<(), RouteError> {
        self.0.stage_remove(id)
    }
    fn commit(&mut self) -> Result<(), RouteError> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.commit()
    }
    fn abort(&mut self) {
        self.0.abort()
    }
    fn route(&self, id: RouteId) -> Option<RouteState> {
        self.0.route(id)
    }
    fn live(&self) -> u32 {
        self.0.live()
    }
    fn clear(&mut self) {
        self.0.clear()
    }
}

#[test]
fn routes_are_committed_once_per_request() {
    let commits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let host = small_host(256, 2);
    let vm = host
        .create_vm(
            VmConfig {
                quota: 64,
                num_vcpus: 4,
                max_batch: 64,
                devices: vec![dev(0x100, 32, 64, 0)],
                ..VmConfig::default()
            },
            Box::new(CountingRoutes(MemoryRoutes::kvm_like(), commits.clone())),
        )
        .unwrap();
    let n = || commits.load(std::sync::atomic::Ordering::SeqCst);
    grants(&alloc(&vm, 0, Kind::MsiX, IndexSpec::Any, 32, 32));
    assert_eq!(n(), 1);
    grants(&alloc(&vm, 0, Kind::Msi, IndexSpec::Any, 32, 32));
    assert_eq!(n(), 2);
    counted(&retarget_req(&vm, 0, Kind::MsiX, 0, &targets(16)));
    assert_eq!(n(), 3);
    counted(&free_req(&vm, 0, Kind::MsiX, 0, 32));
    assert_eq!(n(), 4);
    // Refused requests and empty resets commit nothing.
    refusal(&free_req(&vm, 0, Kind::MsiX, 0, 1)).unwrap();
    counted(&vm.call(&req(0, Operation::Reset)));
    assert_eq!(n(), 5);
    counted(&vm.call(&req(0, Operation::Reset)));
    assert_eq!(n(), 5);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Alloc {
            vm: usize,
            dev: u32,
            kind: u8,
            at: Option<u32>,
            min: u16,
            max: u16,
        },
        Free {
            vm: usize,
            dev: u32,
            kind: u8,
            first: u32,
            count: u16,
        },
        Retarget {
            vm: usize,
            dev: u32,
            first: u32,
            count: u16,
            vcpu: u32,
        },
        Reset {
            vm: usize,
            dev: u32,
        },
        Fire {
            vm: usize,
            dev: u32,
            index: u32,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0..2usize,
                0..3u32,
                1..4u8,
                proptest::option::of(0..20u32),
                1..6u16,
                0..6u16
            )
                .prop_map(|(vm, dev, kind, at, min, extra)| Op::Alloc {
                    vm,
                    dev,
                    kind,
                    at,
                    min,
                    max: min + extra
                }),
            (0..2usize, 0..3u32, 1..4u8, 0..20u32, 1..6u16).prop_map(
                |(vm, dev, kind, first, count)| Op::Free {
                    vm,
                    dev,
                    kind,
                    first,
                    count
                }
            ),
            (0..2usize, 0..3u32, 0..20u32, 1..4u16, 0..5u32).prop_map(
                |(vm, dev, first, count, vcpu)| Op::Retarget {
                    vm,
                    dev,
                    first,
                    count,
                    vcpu
                }
            ),
            (0..2usize, 0..3u32).prop_map(|(vm, dev)| Op::Reset { vm, dev }),
            (0..2usize, 0..3u32, 0..20u32).prop_map(|(vm, dev, index)| Op::Fire { vm, dev, index }),
        ]
    }

    fn kind(k: u8) -> Kind {
        Kind::from_wire(k).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any sequence of requests from two VMs sharing small pools: invariants hold after
        /// each, no VM exceeds its quota, every OK's quota_remaining is exact, and a
        /// request of one VM never changes the other VM's state.
        #[test]
        fn invariants_quotas_and_isolation_hold(ops in prop::collection::vec(op(), 1..60)) {
            let host = small_host(48, 1);
            let devices = |base: u16| vec![dev(base, 8, 16, 12), dev(base + 1, 2, 4, 0), dev(base + 2, 0, 0, 20)];
            let vms = [vm_on(&host, 20, devices(0x100)), vm_on(&host, 12, devices(0x200))];
            let mut msgs: Vec<std::collections::HashMap<(u32, u32), pvirq_proto::MsiMessage>> = vec![Default::default(), Default::default()];
            for op in ops {
                let before = [snapshot(&host, &[&vms[0]]).vms, snapshot(&host, &[&vms[1]]).vms];
                let (v, reply) = match op {
                    Op::Alloc { vm, dev, kind: k, at, min, max } => {
                        let (min, max) = if kind(k) == Kind::Msi {
                            (1 << (min % 3), 1 << (min % 3 + max % 3))
                        } else { (min, max) };
                        let index = at.map_or(IndexSpec::Any, |a| if kind(k) == Kind::Msi { IndexSpec::At(0) } else { IndexSpec::At(a) });
                        let t = targets(max);
                        let reply = vms[vm].call(&req(dev, Operation::Alloc(Alloc { kind: kind(k), index, min, max, pasid: None, targets: &t, targeting: Targeting::PerVector })));
                        if let Outcome::Allocated { grants, .. } = Response::decode(&reply, feature::V1).unwrap().outcome {
                            prop_assert!(grants.len() >= usize::from(min) && grants.len() <= usize::from(max));
                            if k == 2 {
                                for g in grants { msgs[vm].insert((dev, g.index()), g.message()); }
                            }
                        }
                        (vm, reply)
                    }
                    Op::Free { vm, dev, kind: k, first, count } => (vm, free_req(&vms[vm], dev, kind(k), first, count)),
                    Op::Retarget { vm, dev, first, count, vcpu } => {
                        let t: Vec<Target> = (0..count).map(|i| Target::new(vcpu, 0x50 + i as u8)).collect();
                        (vm, retarget_req(&vms[vm], dev, Kind::MsiX, first, &t))
                    }
                    Op::Reset { vm, dev } => (vm, vms[vm].call(&req(dev, Operation::Reset))),
                    Op::Fire { vm, dev, index } => {
                        if let Some(m) = msgs[vm].get(&(dev, index)) {
                            // Live iff some grant of this device now holds that IRTE (a
                            // freed IRTE may have been granted again, to any kind).
                            let irte = RemappableMsi::decode(*m).unwrap().irte_index();
                            let granted = vms[vm].grants(dev).iter().any(|g| RemappableMsi::decode(g.2.message).unwrap().irte_index() == irte);
                            let source = [0x100u16, 0x200][vm] + dev as u16;
                            match host.fire(source, *m) {
                                Ok(d) => { prop_assert!(granted); prop_assert_eq!(Some(d.vm), host.vm_id(&vms[vm])); }
                                Err(_) => prop_assert!(!granted),
                            }
                            // The other VM's device with the same message never lands in this VM.
                            let other = [0x200u16, 0x100][vm] + dev as u16;
                            if let Ok(d) = host.fire(other, *m) { prop_assert_ne!(Some(d.vm), host.vm_id(&vms[vm])); }
                        }
                        continue;
                    }
                };
                prop_assert!(!reply.is_empty());
                let resp = Response::decode(&reply, feature::V1).unwrap();
                let occ = vms[v].occupancy();
                prop_assert!(occ.held <= occ.quota);
                match resp.outcome {
                    Outcome::Refused(_) => {}
                    Outcome::Allocated { quota_remaining, .. }
                    | Outcome::Freed { quota_remaining, .. }
                    | Outcome::Retargeted { quota_remaining, .. }
                    | Outcome::Reset { quota_remaining, .. }
                    | Outcome::Queried { quota_remaining, .. } => prop_assert_eq!(quota_remaining, occ.quota - occ.held),
                }
                host.check_invariants().map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                prop_assert_eq!(&snapshot(&host, &[&vms[1 - v]]).vms, &before[1 - v]);
            }
        }
    }
}

#[test]
fn dropping_a_vm_releases_by_the_reset_path_even_when_the_commit_is_refused() {
    // The VM's end and a virtio reset share one release path: the routes go in one
    // commit, and if the route layer refuses it they are cleared; the host side goes
    // either way.
    for refuse in [false, true] {
        let rig = rig();
        grants(&alloc(&rig.vm, 0, Kind::Msi, IndexSpec::Any, 4, 4));
        if refuse {
            rig.plan.fail_nth_commit(1);
        } else {
            rig.plan.disarm();
        }
        drop(rig.vm);
        let removals = vec![LayerCall::RouteRemove; 6];
        assert_eq!(
            rig.plan.log(),
            [removals, vec![LayerCall::RouteCommit]].concat(),
            "refused: {refuse}"
        );
        assert_eq!(rig.plan.injected(), u64::from(refuse));
        let host = rig.host.occupancy();
        assert_eq!(
            (host.units[0].used, host.vectors_used, host.vms),
            (0, 0, 0),
            "refused: {refuse}"
        );
        rig.host.check_invariants().unwrap();
    }
}

#[test]
fn a_device_reset_frees_everything_even_when_the_route_commit_is_refused() {
    // [DEV-1]: the virtio reset releases every grant whatever the route layer says.
    let rig = rig();
    grants(&alloc(&rig.vm, 0, Kind::Msi, IndexSpec::Any, 4, 4));
    assert_eq!(rig.vm.occupancy().held, 6);
    rig.plan.fail_nth_commit(1);
    assert_eq!(rig.vm.reset_all(), 6);
    assert_eq!(rig.plan.injected(), 1);
    let occ = rig.vm.occupancy();
    assert_eq!((occ.held, occ.routes), (0, 0));
    let host = rig.host.occupancy();
    assert_eq!((host.units[0].used, host.vectors_used), (0, 0));
    rig.host.check_invariants().unwrap();
    // And the VM can start again from nothing.
    rig.plan.disarm();
    assert_eq!(
        counted(&alloc(&rig.vm, 0, Kind::MsiX, IndexSpec::Any, 16, 16)).0,
        16
    );
}
