//! `--kvm`: every VM of the scenario is a real KVM VM, its guest routes are GSI routes with
//! irqfds, and a fired interrupt is counted by the vCPU it reached.

use super::{Backend, RunError};
use crate::kvm::{InterruptCounts, KvmGuest, MIN_MEM_SIZE};
use crate::scenario::{Dest, VmDecl};
use pvirq_host::kvm::{KvmRouteTable, KvmRoutes};
use pvirq_host::routes::GuestRoutes;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a fire step may take to show up in the guests before the run fails.
const DELIVERY_GUARD: Duration = Duration::from_secs(10);

/// One KVM VM per scenario VM.
pub struct KvmBackend {
    guests: BTreeMap<usize, (KvmGuest, InterruptCounts)>,
}

impl std::fmt::Debug for KvmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmBackend")
            .field("vms", &self.guests.len())
            .finish()
    }
}

impl KvmBackend {
    /// A backend with no VMs yet; each scenario VM gets its KVM VM when it is created.
    pub fn new() -> Self {
        KvmBackend {
            guests: BTreeMap::new(),
        }
    }
}

impl Default for KvmBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for KvmBackend {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn routes(&mut self, index: usize, vm: &VmDecl) -> Result<Box<dyn GuestRoutes>, RunError> {
        let vcpus = usize::try_from(vm.vcpus).unwrap_or(usize::MAX);
        let guest = KvmGuest::new(vcpus, MIN_MEM_SIZE)
            .map_err(|e| RunError::Backend(format!("VM {}: {e}", vm.name)))?;
        // This VMM has no other MSI devices: the layer's table is the VM's whole routing
        // table. Its irqfds are registered here, one per vector the quota allows, as a VMM
        // sets a device up; requests then only commit routes.
        let table = KvmRouteTable::new(guest.vm_fd());
        let routes = KvmRoutes::new(table, guest.vm_fd(), vm.quota.min(4072))
            .map_err(|e| RunError::Backend(format!("VM {}: routes: {e}", vm.name)))?;
        let baseline = guest.snapshot();
        self.guests.insert(index, (guest, baseline));
        Ok(Box::new(routes))
    }

    /// Waits until every destination in `delivered` has counted at least one new
    /// interrupt, then credits each destination with what it counted, up to the number
    /// sent to it. Interrupts sent to one (vCPU, vector) before the guest takes the first
    /// merge into one, as the local APIC's request register holds one bit per vector.
    fn observe(&mut self, index: usize, delivered: &[Dest]) -> Result<Option<u64>, RunError> {
        let Some((guest, baseline)) = self.guests.get_mut(&index) else {
            return Err(RunError::Backend(format!("no KVM VM for VM {index}")));
        };
        let mut sent: BTreeMap<(usize, u8), u64> = BTreeMap::new();
        for dest in delivered {
            let vcpu = usize::try_from(dest.vcpu).unwrap_or(usize::MAX);
            *sent.entry((vcpu, dest.vector)).or_default() += 1;
        }
        let arrived = |counts: &InterruptCounts, baseline: &InterruptCounts| {
            sent.keys()
                .all(|&(c, v)| counts.get(c, v) > baseline.get(c, v))
        };
        let counts = guest
            .wait_until(|counts| arrived(counts, baseline), DELIVERY_GUARD)
            .map_err(|e| {
                RunError::Backend(format!("interrupts did not arrive in VM {index}: {e}"))
            })?;
        let observed = sent
            .iter()
            .map(|(&(c, v), &n)| (counts.get(c, v) - baseline.get(c, v)).min(n))
            .sum();
        *baseline = counts;
        Ok(Some(observed))
    }
}
