//! The delivery seam: where a VM's guest routes live and how fired interrupts are seen.
//!
//! The runner asks its [`Backend`] for each VM's [`RouteLayer`] when it creates the VM,
//! and after every `fire` step asks it what the guest observed. [`MemoryBackend`] gives
//! every VM `MemoryRoutes::kvm_like()` (KVM's GSI limits, deliveries recorded in memory).
//! A KVM backend plugs in the same way:
//! - `routes(i, vm)`: create a `sim::kvm::KvmGuest` with `vm.vcpus` vCPUs, keep it as
//!   VM `i`'s guest, and return a `RouteLayer` over its `KvmRouteTable` (GSI routes with
//!   irqfds; `fire` writes the irqfd);
//! - `observe(i, delivered)`: wait (with a hang guard) until guest `i`'s counters show
//!   every `(vcpu, vector)` in `delivered`, and return how many arrived.

use super::RunError;
use crate::scenario::{Dest, VmDecl};
use pvirq_host::layers::{MemoryRoutes, RouteLayer};

/// Where guest delivery happens.
pub trait Backend {
    /// Short name for reports (`memory`, `kvm`).
    fn name(&self) -> &'static str;
    /// The route layer of VM `index` (VMs are created in scenario order).
    fn routes(&mut self, index: usize, vm: &VmDecl) -> Result<Box<dyn RouteLayer>, RunError>;
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

    fn routes(&mut self, _index: usize, _vm: &VmDecl) -> Result<Box<dyn RouteLayer>, RunError> {
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

/// The backend of `--kvm`: real KVM delivery, or why it cannot run here — no usable
/// `/dev/kvm` ([`RunError::KvmAbsent`]), or no KVM `RouteLayer` in this build
/// ([`RunError::KvmNotBuilt`]). Wiring the KVM backend means returning it here.
pub fn kvm_backend() -> Result<Box<dyn Backend>, RunError> {
    if let Some(why) = kvm_unusable() {
        return Err(RunError::KvmAbsent(why));
    }
    Err(RunError::KvmNotBuilt(
        "pvirq-host has no RouteLayer over KVM GSI routes yet; run without --kvm for \
         in-memory delivery",
    ))
}
