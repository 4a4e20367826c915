//! Building blocks the end-to-end tests share: hosts and VMs of a given shape, targets,
//! and full snapshots of what the host and its VMs hold.

use pvirq_guest::Options;
use pvirq_host::grants::GrantRecord;
use pvirq_host::model::{HostOccupancy, ModelConfig, ModelHost};
use pvirq_host::model::{RemapConfig, VectorConfig};
use pvirq_host::routes::{MemoryRoutes, RouteState};
use pvirq_host::{DeviceSpec, Vm, VmConfig, VmOccupancy};
use pvirq_proto::{Kind, Target};
use pvirq_sim::Channel;

/// An assigned device with requester ID `requester_id` on unit 0 and the given tables.
pub fn dev(requester_id: u16, msi_max: u16, msix_table_size: u16, ims_slots: u32) -> DeviceSpec {
    DeviceSpec {
        requester_id,
        msi_max,
        msix_table_size,
        ims_slots,
        ..DeviceSpec::default()
    }
}

/// A VM configuration: `quota`, 4 vCPUs, `max_batch` 64, `devices`.
pub fn vm_config(quota: u32, devices: Vec<DeviceSpec>) -> VmConfig {
    VmConfig {
        quota,
        num_vcpus: 4,
        max_batch: 64,
        devices,
        ..VmConfig::default()
    }
}

/// A host with one remapping unit of `irtes` entries and `cpus` host CPUs with the
/// default usable vector range (0x20..0xEC minus 0x80: 203 vectors per CPU).
pub fn host(irtes: u32, cpus: u32) -> ModelHost {
    host_with_vectors(
        irtes,
        VectorConfig {
            cpus,
            ..VectorConfig::default()
        },
    )
}

/// A host with one remapping unit of `irtes` entries and the given vector matrix.
pub fn host_with_vectors(irtes: u32, vectors: VectorConfig) -> ModelHost {
    ModelHost::new(&ModelConfig {
        remap: RemapConfig {
            units: 1,
            entries_per_unit: irtes,
        },
        vectors,
        ..ModelConfig::default()
    })
    .expect("host")
}

/// A channel (VM, device, driver) on `host` with KVM-like routes and default options.
pub fn channel(host: &ModelHost, config: VmConfig) -> Channel {
    Channel::new(
        host,
        config,
        Box::new(MemoryRoutes::kvm_like()),
        Options::default(),
    )
    .expect("channel")
}

/// `n` distinct targets spread over 4 vCPUs, vectors from `first_vector` on.
pub fn targets(n: usize, first_vector: u8) -> Vec<Target> {
    (0..n)
        .map(|i| Target::new((i % 4) as u32, first_vector.wrapping_add(i as u8).max(0x20)))
        .collect()
}

/// One grant as the host holds it: kind, index, record, live route destination.
pub type GrantView = (Kind, u32, GrantRecord, Option<RouteState>);

/// Everything observable about the host pool and some VMs: compared before and after a
/// request that must change nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The host pool.
    pub host: HostOccupancy,
    /// Per VM: its occupancy and, per device handle, every grant.
    pub vms: Vec<(VmOccupancy, Vec<Vec<GrantView>>)>,
}

/// Takes a [`Snapshot`], after checking the host's invariants (panics on a violation).
pub fn snapshot(host: &ModelHost, vms: &[&Vm]) -> Snapshot {
    if let Err(errors) = host.check_invariants() {
        panic!("host invariants violated: {errors:#?}");
    }
    Snapshot {
        host: host.occupancy(),
        vms: vms.iter().map(|vm| vm_view(vm)).collect(),
    }
}

fn vm_view(vm: &Vm) -> (VmOccupancy, Vec<Vec<GrantView>>) {
    let devices = (0..vm.config().devices.len() as u32)
        .map(|d| {
            vm.grants(d)
                .into_iter()
                .map(|(k, i, r)| (k, i, r, vm.route(r.route)))
                .collect()
        })
        .collect();
    (vm.occupancy(), devices)
}

/// IRTEs in use over all units of `host`.
pub fn irtes_used(host: &ModelHost) -> u32 {
    host.occupancy().units.iter().map(|u| u.used).sum()
}
