//! `--kvm`: every scenario VM is a real KVM VM running the guest image, and every step —
//! channel bring-up, ALLOC with fallback, programming, doorbells, counting, FREE, RETARGET,
//! RESET, virtio reset — is done by guest code; the report shows what the guest saw.

use super::guest_side::GuestSide;
use super::side::Side;
use super::{Backend, RunError, guest_image_lacks};
use crate::scenario::{Scenario, VmDecl};
use pvirq_host::model::ModelHost;

/// One KVM VM per scenario VM.
#[derive(Debug, Default)]
pub struct KvmBackend;

impl KvmBackend {
    /// A backend; each scenario VM gets its KVM VM when it is created.
    pub fn new() -> Self {
        KvmBackend
    }
}

impl Backend for KvmBackend {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn side(&mut self, host: &ModelHost, _index: usize, vm: &VmDecl) -> Result<Side, RunError> {
        GuestSide::new(host, vm)
            .map(|g| Side::Guest(Box::new(g)))
            .map_err(|source| RunError::Setup {
                vm: vm.name.clone(),
                source,
            })
    }

    fn lacks(&self, scenario: &Scenario) -> Option<RunError> {
        guest_image_lacks(scenario)
    }
}
