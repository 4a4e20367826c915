//! The protocol's extensions (issue 13, request side) at the VM API: each feature bit's
//! behaviour, the refusals it adds, what a driver without the bit is told instead, and
//! rollback where an extension adds a step. Requests are encoded with `pvirq-proto` and
//! handled by [`Vm::call`], so every reply is checked as bytes a driver with the VM's
//! features decodes.

mod alloc;
mod churn;
mod lists;
mod parked;
mod posted;
mod query;

use crate::config::{DeviceSpec, VmConfig};
use crate::model::{ModelConfig, ModelHost, RemapConfig, VectorConfig};
use crate::routes::MemoryRoutes;
use crate::vm::Vm;
use pvirq_proto::{
    Alloc, DeviceInfo, GrantInfo, IndexList, IndexRange, IndexSpec, Indices, Kind, Le32, Operation,
    Outcome, Refusal, Request, Response, Retarget, RetargetTo, Target, Targeting, feature,
};

/// Every feature the request side implements (and the event queue, which changes
/// nothing here).
pub(super) const ALL: u64 = feature::ALL;

/// A driver that negotiated `INFO` and the bits in `more` (version 1's bits too).
pub(super) fn info(more: u64) -> u64 {
    feature::V1 | feature::INFO | more
}

/// A device with requester ID `rid` and these tables.
pub(super) fn dev(rid: u16, msi: u16, msix: u16, ims: u32) -> DeviceSpec {
    DeviceSpec {
        requester_id: rid,
        msi_max: msi,
        msix_table_size: msix,
        ims_slots: ims,
        ..DeviceSpec::default()
    }
}

/// A host with one remapping unit of `irtes` entries, `vectors` host vectors on one CPU
/// (from 0x20), posting or not.
pub(super) fn host(irtes: u32, vectors: u8, posted: bool) -> ModelHost {
    ModelHost::new(&ModelConfig {
        remap: RemapConfig {
            units: 1,
            entries_per_unit: irtes,
        },
        vectors: VectorConfig {
            cpus: 1,
            first: 0x20,
            end: 0x20 + vectors,
            reserved: Vec::new(),
        },
        posted,
        ..ModelConfig::default()
    })
    .unwrap()
}

/// A VM config: `quota`, 4 vCPUs, `max_batch` 64.
pub(super) fn config(quota: u32, devices: Vec<DeviceSpec>) -> VmConfig {
    VmConfig {
        quota,
        num_vcpus: 4,
        max_batch: 64,
        devices,
        ..VmConfig::default()
    }
}

/// A VM on `host` whose driver negotiated `features`.
pub(super) fn vm(host: &ModelHost, config: VmConfig, features: u64) -> Vm {
    let vm = host
        .create_vm(config, Box::new(MemoryRoutes::kvm_like()))
        .unwrap();
    vm.set_features(features);
    vm
}

/// `n` targets on vCPUs (or APIC IDs) 0..4 in turn, vectors from 0x40.
pub(super) fn targets(n: usize) -> Vec<Target> {
    (0..n)
        .map(|i| Target::new((i % 4) as u32, 0x40 + i as u8))
        .collect()
}

/// An ALLOC body.
pub(super) fn alloc<'a>(
    kind: Kind,
    index: IndexSpec,
    (min, max): (u16, u16),
    targeting: Targeting,
    targets: &'a [Target],
) -> Operation<'a> {
    Operation::Alloc(Alloc {
        kind,
        index,
        min,
        max,
        pasid: None,
        targeting,
        targets,
    })
}

/// The wire form of an index list.
pub(super) fn le(indices: &[u32]) -> Vec<Le32> {
    indices.iter().map(|i| Le32::new(*i)).collect()
}

/// FREE (or, with `to`, RETARGET) of the listed indices.
pub(super) fn listed<'a>(
    kind: Kind,
    list: &'a [Le32],
    to: Option<RetargetTo<'a>>,
) -> Operation<'a> {
    let indices = Indices::List {
        kind,
        indices: IndexList::new(list).unwrap(),
    };
    match to {
        None => Operation::Free(indices),
        Some(to) => Operation::Retarget(Retarget { indices, to }),
    }
}

/// A run of indices.
pub(super) fn run(kind: Kind, first: u32, count: u16) -> Indices<'static> {
    Indices::Run(IndexRange { kind, first, count })
}

/// The reply bytes to `op` on `device`.
pub(super) fn call(vm: &Vm, device: u32, op: Operation<'_>) -> Vec<u8> {
    vm.call(&Request {
        device,
        tag: 0x13,
        op,
    })
}

/// What a driver with the VM's features reads in `reply`, handed to `f`.
pub(super) fn read<R>(vm: &Vm, reply: &[u8], f: impl FnOnce(Outcome<'_>) -> R) -> R {
    match Response::decode(reply, vm.features()) {
        Ok(response) => f(response.outcome),
        Err(e) => panic!("{e:?}: {reply:02x?}"),
    }
}

/// The grants of an OK ALLOC (24-byte records read as such, 16-byte ones as remapped and
/// active), or the refusal.
pub(super) fn grants(vm: &Vm, device: u32, op: Operation<'_>) -> Result<Vec<GrantInfo>, Refusal> {
    read(vm, &call(vm, device, op), |o| match o {
        Outcome::Allocated { grants, .. } => Ok(grants.iter().collect()),
        Outcome::Refused(r) => Err(r),
        other => panic!("{other:?}"),
    })
}

/// The count of an OK FREE, RETARGET or RESET, or the refusal.
pub(super) fn counted(vm: &Vm, device: u32, op: Operation<'_>) -> Result<u32, Refusal> {
    read(vm, &call(vm, device, op), |o| match o {
        Outcome::Freed { count, .. }
        | Outcome::Retargeted { count, .. }
        | Outcome::Reset { count, .. } => Ok(count),
        Outcome::Refused(r) => Err(r),
        other => panic!("{other:?}"),
    })
}

/// QUERY's body.
pub(super) fn query(vm: &Vm, device: u32) -> DeviceInfo {
    read(vm, &call(vm, device, Operation::Query), |o| match o {
        Outcome::Queried { info, .. } => info,
        other => panic!("{other:?}"),
    })
}

/// The APIC IDs (None: parked) device `device`'s grants of `kind` deliver to, by index.
pub(super) fn dests(vm: &Vm, device: u32, kind: Kind) -> Vec<(u32, Option<u32>)> {
    vm.grants(device)
        .into_iter()
        .filter(|(k, _, _)| *k == kind)
        .map(|(_, i, r)| (i, r.dest.map(|d| d.apic_id)))
        .collect()
}

/// NO_SPACE naming `resource` with `available`.
pub(super) fn no_space(resource: pvirq_proto::Resource, available: u32) -> Refusal {
    Refusal::NoSpace {
        resource,
        available,
    }
}
