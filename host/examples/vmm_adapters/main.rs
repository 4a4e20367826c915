//! The adapters a Firecracker maintainer and a cloud-hypervisor maintainer would write to
//! plug `PvirqDevice` into their VMM, against local traits of the same shape as theirs
//! (`docs/vmm-integration.md` says which versions and which files).
//!
//! - [`firecracker_vmm`] / [`firecracker_pvirq`]: Firecracker's `VirtioDevice` (the device
//!   owns its queues and queue eventfds, `activate(mem, interrupt)`, `reset` hands the
//!   interrupt and eventfds back), its `Persist` trait, and the adapter, run by a
//!   single-threaded `event-manager` loop as Firecracker runs its devices.
//! - [`cloud_hypervisor_vmm`] / [`cloud_hypervisor_pvirq`]: cloud-hypervisor's
//!   `VirtioDevice` (the transport hands queues and eventfds over in an `ActivationContext`),
//!   `Pausable`, `Snapshottable`, `Migratable`, a device restored at construction, and the
//!   adapter, run by a worker thread as cloud-hypervisor runs its devices.
//! - [`cloud_hypervisor_routes`]: pvirq's `RouteOwner` over cloud-hypervisor's shared
//!   `gsi_msi_routes` map, so pvirq's routes and the VMM's other MSI routes reach KVM in one
//!   table.
//!
//! `cargo test --release -p pvirq-host --example vmm_adapters` runs the tests (`cargo test
//! --workspace` does too); `cargo run --release -p pvirq-host --example vmm_adapters` runs
//! both lifecycles once and prints what happened.

// The demo runs one lifecycle each; the tests use the rest of the VMMs' interfaces.
#![cfg_attr(not(test), allow(dead_code))]

mod cloud_hypervisor_pvirq;
mod cloud_hypervisor_routes;
mod cloud_hypervisor_run;
mod cloud_hypervisor_vmm;
mod firecracker_pvirq;
mod firecracker_run;
mod firecracker_vmm;
mod guest;

use pvirq_host::model::{ModelConfig, ModelHost};
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::{DeviceSpec, HostError, Vm, VmConfig};

/// The assigned device of the VMs here: requester ID 0x0100, 32 MSI-X entries.
const REQUESTER_ID: u16 = 0x0100;

/// A VM with one assigned device on `host` (a modelled host kernel: the adapters are the same
/// over `VfioBackend` and `KvmRoutes`).
fn vm(host: &ModelHost) -> Result<Vm, HostError> {
    let config = VmConfig {
        quota: 16,
        num_vcpus: 2,
        max_batch: 16,
        devices: vec![DeviceSpec {
            requester_id: REQUESTER_ID,
            msi_max: 0,
            msix_table_size: 32,
            ims_slots: 0,
            ..DeviceSpec::default()
        }],
        ..VmConfig::default()
    };
    host.create_vm(config, Box::new(MemoryRoutes::kvm_like()))
}

fn host() -> Result<ModelHost, HostError> {
    ModelHost::new(&ModelConfig::default())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fc = firecracker_run::demo()?;
    println!("Firecracker: {fc}");
    let ch = cloud_hypervisor_run::demo()?;
    println!("cloud-hypervisor: {ch}");
    Ok(())
}
