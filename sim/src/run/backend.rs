//! Where a scenario VM's guest runs.
//!
//! [`MemoryBackend`] runs the guest driver in this process over an in-process channel, with
//! `MemoryRoutes::kvm_like()` (KVM's GSI limits, deliveries recorded in memory).
//! [`super::KvmBackend`] (`--kvm`) makes every scenario VM a real KVM VM in which the guest
//! image does every step itself.

use super::RunError;
use super::side::Side;
use crate::Channel;
use crate::scenario::VmDecl;
use pvirq_guest::Options;
use pvirq_host::model::ModelHost;
use pvirq_host::routes::MemoryRoutes;

/// Where guests run.
pub trait Backend {
    /// Short name for reports (`memory`, `kvm`).
    fn name(&self) -> &'static str;
    /// The guest side of VM `index` (VMs are created in scenario order) on `host`.
    fn side(&mut self, host: &ModelHost, index: usize, vm: &VmDecl) -> Result<Side, RunError>;
}

/// The guest driver in this process; routes recorded, not injected.
#[derive(Debug, Default)]
pub struct MemoryBackend;

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn side(&mut self, host: &ModelHost, _index: usize, vm: &VmDecl) -> Result<Side, RunError> {
        let routes = Box::new(MemoryRoutes::kvm_like());
        Channel::new(host, vm.config(), routes, Options::default())
            .map(|c| Side::Channel(Box::new(c)))
            .map_err(|source| RunError::Setup {
                vm: vm.name.clone(),
                source,
            })
    }
}

/// Why KVM cannot be used here: `/dev/kvm` does not open or does not answer
/// `KVM_GET_API_VERSION` with 12.
pub fn kvm_unusable() -> Option<String> {
    match kvm_ioctls::Kvm::new() {
        Err(e) => Some(format!("cannot open /dev/kvm: {e}")),
        Ok(kvm) => match kvm.get_api_version() {
            12 => None,
            v => Some(format!("KVM API version {v}, expected 12")),
        },
    }
}

/// The backend of `--kvm` ([`super::KvmBackend`]), or why it cannot run here
/// ([`RunError::KvmAbsent`]).
pub fn kvm_backend() -> Result<Box<dyn Backend>, RunError> {
    if let Some(why) = kvm_unusable() {
        return Err(RunError::KvmAbsent(why));
    }
    Ok(Box::new(super::KvmBackend::new()))
}
