//! The delivery seam: where a VM's guest routes live and how fired interrupts are seen.
//!
//! The runner asks its [`Backend`] for each VM's [`RouteLayer`] when it creates the VM,
//! and after every `fire` step asks it what the guest observed. [`MemoryBackend`] gives
//! every VM `MemoryRoutes::kvm_like()` (KVM's GSI limits, deliveries recorded in memory);
//! [`super::KvmBackend`] gives every VM a real KVM VM and counts what its vCPUs receive.

use super::RunError;
use crate::scenario::{Dest, VmDecl};
use pvirq_host::routes::{GuestRoutes, MemoryRoutes};

/// Where guest delivery happens.
pub trait Backend {
    /// Short name for reports (`memory`, `kvm`).
    fn name(&self) -> &'static str;
    /// The route layer of VM `index` (VMs are created in scenario order).
    fn routes(&mut self, index: usize, vm: &VmDecl) -> Result<Box<dyn GuestRoutes>, RunError>;
    /// After a fire step: how many of the interrupts the host reported `delivered` to VM
    /// `index` the guest actually received; `None` if this backend cannot observe guests.
    fn observe(&mut self, index: usize, delivered: &[Dest]) -> Result<Option<u64>, RunError>;
}

/// In-memory delivery: routes are recorded, not injected.
#[derive(Debug, Default)]
pub struct MemoryBackend;

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn routes(&mut self, _index: usize, _vm: &VmDecl) -> Result<Box<dyn GuestRoutes>, RunError> {
        Ok(Box::new(MemoryRoutes::kvm_like()))
    }

    fn observe(&mut self, _index: usize, _delivered: &[Dest]) -> Result<Option<u64>, RunError> {
        Ok(None)
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

/// The backend of `--kvm`: real KVM delivery ([`super::KvmBackend`]), or why it cannot
/// run here ([`RunError::KvmAbsent`]).
pub fn kvm_backend() -> Result<Box<dyn Backend>, RunError> {
    if let Some(why) = kvm_unusable() {
        return Err(RunError::KvmAbsent(why));
    }
    Ok(Box::new(super::KvmBackend::new()))
}
