//! Where a scenario VM's guest runs.
//!
//! [`MemoryBackend`] runs the guest driver in this process over an in-process channel, with
//! `MemoryRoutes::kvm_like()` (KVM's GSI limits, deliveries recorded in memory).
//! [`super::KvmBackend`] (`--kvm`) makes every scenario VM a real KVM VM in which the guest
//! image does every step itself.

use super::RunError;
use super::channel_side::ChannelSide;
use super::side::Side;
use crate::SimError;
use crate::scenario::{Scenario, VmDecl};
use pvirq_guest_image_abi::layout::{MAX_APIC_ID, MAX_DEVICES};
use pvirq_host::model::ModelHost;

/// Where guests run.
pub trait Backend {
    /// Short name for reports (`memory`, `kvm`).
    fn name(&self) -> &'static str;
    /// The guest side of VM `index` (VMs are created in scenario order) on `host`.
    fn side(&mut self, host: &ModelHost, index: usize, vm: &VmDecl) -> Result<Side, RunError>;
    /// The first part of `scenario` this backend's guests cannot do, refused before the
    /// run starts rather than skipped. `None` by default: its guests do every step.
    fn lacks(&self, scenario: &Scenario) -> Option<RunError> {
        let _ = scenario;
        None
    }
}

/// What the guest image (`--kvm`) cannot run, said before anything starts: its local APIC
/// runs in xAPIC mode, so APIC IDs above [`MAX_APIC_ID`] would need x2APIC; and its VMM has
/// a BAR window for at most [`MAX_DEVICES`] assigned devices per VM, hot-added ones
/// included. The error names the VM.
pub fn guest_image_lacks(scenario: &Scenario) -> Option<RunError> {
    scenario.vms.iter().find_map(|vm| {
        let lacks = if vm
            .apic_ids
            .as_ref()
            .is_some_and(|ids| ids.iter().any(|id| *id > MAX_APIC_ID))
        {
            "the guest image runs its APIC in xAPIC mode: APIC IDs above 0xFE need x2APIC"
        } else if vm.devices.len() > MAX_DEVICES {
            "the small VMM has BAR windows for 16 assigned devices per VM"
        } else {
            return None;
        };
        Some(RunError::Setup {
            vm: vm.name.clone(),
            source: SimError::GuestReport(lacks),
        })
    })
}

/// The guest driver in this process; routes recorded, not injected.
#[derive(Debug, Default)]
pub struct MemoryBackend;

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn side(&mut self, host: &ModelHost, _index: usize, vm: &VmDecl) -> Result<Side, RunError> {
        ChannelSide::new(host, vm)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{DEFAULT, parse};

    const V1: &str = include_str!("../../scenarios/v1.toml");

    #[test]
    fn the_guest_image_is_refused_what_it_cannot_do_and_nothing_else() {
        // Everything the scenarios use, extensions, VMM steps and migration included.
        assert!(guest_image_lacks(&parse(V1, "v1.toml").unwrap()).is_none());
        let default = parse(DEFAULT, "default.toml").unwrap();
        assert!(guest_image_lacks(&default).is_none());
        let sparse = V1.replacen("vcpus = 4\n", "vcpus = 4\napic_ids = [0, 2, 4, 6]\n", 1);
        assert!(guest_image_lacks(&parse(&sparse, "s.toml").unwrap()).is_none());
        // An APIC ID only x2APIC can address: refused before anything runs, naming the VM.
        let x2apic = V1.replacen("vcpus = 4\n", "vcpus = 4\napic_ids = [0, 2, 4, 0x100]\n", 1);
        match guest_image_lacks(&parse(&x2apic, "x.toml").unwrap()) {
            Some(e @ RunError::Setup { .. }) => {
                assert!(
                    e.to_string().contains("db") || format!("{e:?}").contains("db"),
                    "{e:?}"
                );
                assert!(format!("{e:?}").contains("x2APIC"), "{e:?}");
            }
            other => panic!("{other:?}"),
        }
        // The in-process guest does everything.
        assert!(MemoryBackend.lacks(&default).is_none());
    }
}
