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
use crate::scenario::{Action, IndexSel, Scenario, VmDecl};
use pvirq_host::model::ModelHost;
use pvirq_proto::{IndexSpec, Targeting, feature};

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

/// What the guest image (`--kvm`) cannot do yet of issue 13: a VM negotiating extension
/// bits or with sparse APIC IDs, and the steps only those bits allow or the small VMM does
/// not wire yet. The error names the VM, or the step and its kind.
pub fn guest_image_lacks(scenario: &Scenario) -> Option<RunError> {
    for vm in &scenario.vms {
        let lacks = if !feature::is_v1(vm.features) {
            "the guest image cannot negotiate extension feature bits yet"
        } else if vm.apic_ids.is_some() {
            "the small VMM cannot give vCPUs sparse APIC IDs yet"
        } else {
            continue;
        };
        return Some(RunError::Setup {
            vm: vm.name.clone(),
            source: SimError::GuestReport(lacks),
        });
    }
    scenario.steps.iter().enumerate().find_map(|(i, step)| {
        let what = match &step.action {
            Action::Alloc(a) if a.index == IndexSpec::AnyContiguous => "an any-contiguous ALLOC",
            Action::Alloc(a) if a.targeting != Targeting::PerVector => "a spread or parked ALLOC",
            Action::Free {
                indices: IndexSel::List(_),
                ..
            } => "a FREE by index list",
            Action::Retarget {
                indices: IndexSel::List(_),
                ..
            } => "a RETARGET by index list",
            Action::Park { .. } => "park steps",
            Action::Events => "events steps",
            Action::SetQuota { .. } => "set_quota steps",
            Action::SetShare { .. } => "set_share steps",
            Action::AddDevice { .. } => "add_device steps",
            Action::RemoveDevice { .. } => "remove_device steps",
            Action::ResourcesChanged => "resources_changed steps",
            Action::Migrate { .. } => "migrate steps",
            _ => return None,
        };
        Some(RunError::Unsupported {
            step: i + 1,
            line: step.line,
            what,
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
        assert!(guest_image_lacks(&parse(V1, "v1.toml").unwrap()).is_none());
        let default = parse(DEFAULT, "default.toml").unwrap();
        match guest_image_lacks(&default) {
            Some(RunError::Setup { vm, .. }) => assert_eq!(vm, "hpc"),
            other => panic!("{other:?}"),
        }
        // A version-1 driver's VM, a VMM step: refused, naming the step and its kind.
        let quota = format!("{V1}\n[[step]]\nop = \"set_quota\"\nvm = \"db\"\nquota = 4\n");
        let scenario = parse(&quota, "q.toml").unwrap();
        match guest_image_lacks(&scenario) {
            Some(e @ RunError::Unsupported { step, what, .. }) => {
                assert_eq!((step, what), (scenario.steps.len(), "set_quota steps"));
                assert!(
                    e.to_string().contains("cannot do set_quota steps yet"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        let sparse = V1.replacen("vcpus = 4\n", "vcpus = 4\napic_ids = [0, 2, 4, 6]\n", 1);
        assert!(matches!(
            guest_image_lacks(&parse(&sparse, "s.toml").unwrap()),
            Some(RunError::Setup { .. })
        ));
        // The in-process guest does everything.
        assert!(MemoryBackend.lacks(&default).is_none());
    }
}
