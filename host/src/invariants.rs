//! The invariant checker: what must hold between requests, for tests and hardening work.
//!
//! - every grant holds exactly one IRTE (on its device's unit, with the device's source-id,
//!   programmed to the grant's host vector), one host vector (owned by the grant's VM and
//!   route) and one live guest route;
//! - nothing is held without a grant: IRTEs in use, host vectors allocated, vector owners
//!   and live routes each number exactly the grants;
//! - a device's tables agree with its records; an MSI block is `0..n`, n a power of two,
//!   on a naturally aligned IRTE block;
//! - each VM's held count equals its grants and never exceeds its quota;
//! - every live route goes to one of the VM's vCPUs, at a vector ≥ 0x20;
//! - the requester IDs the host knows are exactly the live VMs' devices, each on its
//!   device's unit and VM.
//!
//! Call it when no request is in flight (it takes the locks VM by VM).

use crate::layers::{HostVector, IrteDest};
use crate::pool::{Host, Owner, lock};
use pvirq_proto::Kind;
use std::collections::HashSet;
use std::sync::Weak;

impl Host {
    /// Checks every invariant; the list of violations if any.
    pub fn check_invariants(&self) -> Result<(), Vec<String>> {
        let vms: Vec<_> = lock(&self.shared.state)
            .vms
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let mut errors = Vec::new();
        let mut total: u64 = 0;
        let mut vectors_seen: HashSet<HostVector> = HashSet::new();
        let mut irtes_seen: HashSet<(u16, u16)> = HashSet::new();
        let mut devices = 0usize;
        for vm in &vms {
            let st = lock(&vm.state);
            let hs = lock(&self.shared.state);
            let mut routes_seen = HashSet::new();
            let mut vm_total: u64 = 0;
            for (handle, dev) in st.devices.iter().enumerate() {
                let unit = dev.spec.unit;
                for kind in Kind::ALL.iter().copied() {
                    let table = dev.table(kind);
                    let granted = table.granted();
                    if table.size() - table.free.free_count() != granted {
                        errors.push(format!(
                            "vm {} dev {handle} {kind}: {granted} records but {} slots used",
                            vm.id,
                            table.size() - table.free.free_count()
                        ));
                    }
                    if kind == Kind::Msi && granted > 0 {
                        let base = table.records.get(&0).map(|r| u32::from(r.irte));
                        let aligned = granted.is_power_of_two()
                            && base.is_some_and(|b| b % granted == 0)
                            && (0..granted).all(|i| {
                                table
                                    .records
                                    .get(&i)
                                    .zip(base)
                                    .is_some_and(|(r, b)| u32::from(r.irte) == b + i)
                            });
                        if !aligned {
                            errors.push(format!(
                                "vm {} dev {handle}: MSI block of {granted} is not an aligned 0..n block",
                                vm.id
                            ));
                        }
                    }
                    for (index, r) in table.records.iter() {
                        vm_total += 1;
                        let hv = r.host_vector();
                        let what = format!("vm {} dev {handle} {kind}[{index}]", vm.id);
                        if table.free.is_free(index) {
                            errors.push(format!("{what}: slot marked free"));
                        }
                        match hs.remap.entry(unit, r.irte) {
                            Some(e) if e.source_id == dev.spec.requester_id
                                && e.dest == Some(IrteDest::Remapped(hv)) => {}
                            other => errors.push(format!(
                                "{what}: IRTE {unit}/{} is {other:?}, expected source {:#x} -> {hv:?}",
                                r.irte, dev.spec.requester_id
                            )),
                        }
                        if !hs.vectors.is_allocated(hv) {
                            errors.push(format!("{what}: host vector {hv:?} not allocated"));
                        }
                        let owner = Owner {
                            vm: vm.id,
                            route: r.route,
                        };
                        if hs.owners.get(&hv) != Some(&owner) {
                            errors.push(format!(
                                "{what}: host vector {hv:?} owned by {:?}",
                                hs.owners.get(&hv)
                            ));
                        }
                        match st.routes.route(r.route) {
                            None => errors.push(format!("{what}: route {} not live", r.route)),
                            Some(dest)
                                if dest.vcpu >= vm.config.num_vcpus
                                    || dest.vector < pvirq_proto::MIN_GUEST_VECTOR =>
                            {
                                errors.push(format!(
                                    "{what}: route {} goes to {dest:?}, not a valid target",
                                    r.route
                                ));
                            }
                            Some(_) => {}
                        }
                        if !vectors_seen.insert(hv) {
                            errors.push(format!("{what}: host vector {hv:?} granted twice"));
                        }
                        if !irtes_seen.insert((unit, r.irte)) {
                            errors.push(format!("{what}: IRTE {unit}/{} granted twice", r.irte));
                        }
                        if !routes_seen.insert(r.route) {
                            errors.push(format!("{what}: route {} granted twice", r.route));
                        }
                    }
                }
            }
            for (handle, dev) in st.devices.iter().enumerate() {
                let id = dev.spec.requester_id;
                if hs.sources.get(&id) != Some(&(dev.spec.unit, vm.id)) {
                    errors.push(format!(
                        "vm {} dev {handle}: source {id:#x} registered as {:?}",
                        vm.id,
                        hs.sources.get(&id)
                    ));
                }
            }
            devices += st.devices.len();
            if u64::from(st.held) != vm_total {
                errors.push(format!(
                    "vm {}: held {} but {vm_total} grants",
                    vm.id, st.held
                ));
            }
            if st.held > vm.config.quota {
                errors.push(format!(
                    "vm {}: held {} over quota {}",
                    vm.id, st.held, vm.config.quota
                ));
            }
            if u64::from(st.routes.live()) != vm_total {
                errors.push(format!(
                    "vm {}: {} live routes for {vm_total} grants",
                    vm.id,
                    st.routes.live()
                ));
            }
            total += vm_total;
        }
        let hs = lock(&self.shared.state);
        let irtes_used: u64 = (0..hs.remap.units())
            .map(|u| u64::from(hs.remap.capacity(u) - hs.remap.free_entries(u)))
            .sum();
        if irtes_used != total {
            errors.push(format!("{irtes_used} IRTEs in use for {total} grants"));
        }
        if u64::from(hs.vectors.allocated()) != total {
            errors.push(format!(
                "{} host vectors allocated for {total} grants",
                hs.vectors.allocated()
            ));
        }
        if hs.sources.len() != devices {
            errors.push(format!(
                "{} requester IDs registered for {devices} devices of live VMs",
                hs.sources.len()
            ));
        }
        if hs.owners.len() as u64 != total {
            errors.push(format!(
                "{} vector owners for {total} grants",
                hs.owners.len()
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::layers::{GuestDest, MemoryRoutes};
    use crate::pool::lock;
    use crate::transaction::tests::{dev, small_host};
    use crate::{Host, Vm, VmConfig};
    use pvirq_proto::{Alloc, Kind, Operation, Request, Target};

    fn vm_with_two_grants(host: &Host) -> Vm {
        let vm = host
            .create_vm(
                VmConfig {
                    quota: 8,
                    num_vcpus: 2,
                    max_batch: 8,
                    devices: vec![dev(0x100, 0, 8, 0)],
                },
                Box::new(MemoryRoutes::kvm_like()),
            )
            .unwrap();
        let targets = [Target::new(0, 0x40), Target::new(1, 0x41)];
        vm.call(&Request {
            device: 0,
            tag: 0,
            op: Operation::Alloc(Alloc::any(Kind::MsiX, 2, &targets)),
        });
        host.check_invariants().unwrap();
        vm
    }

    /// Breaks one thing, and the checker must name it.
    fn broken(break_it: impl FnOnce(&Host, &Vm), expected: &str) {
        let host = small_host(64, 1);
        let vm = vm_with_two_grants(&host);
        break_it(&host, &vm);
        let errors = host.check_invariants().unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "expected {expected:?} in {errors:?}"
        );
    }

    #[test]
    fn every_kind_of_leak_or_mismatch_is_reported() {
        broken(
            |h, _| {
                lock(&h.shared.state).remap.alloc(0, 0x100).unwrap();
            },
            "IRTEs in use for 2 grants",
        );
        broken(
            |h, _| {
                lock(&h.shared.state).vectors.alloc().unwrap();
            },
            "host vectors allocated for 2 grants",
        );
        broken(
            |_, vm| {
                let mut st = lock(&vm.shared.state);
                st.routes
                    .stage_add(GuestDest {
                        vcpu: 0,
                        vector: 0x50,
                    })
                    .unwrap();
                st.routes.commit().unwrap();
            },
            "live routes for 2 grants",
        );
        broken(
            |_, vm| lock(&vm.shared.state).held = 3,
            "held 3 but 2 grants",
        );
        broken(
            |_, vm| {
                let mut st = lock(&vm.shared.state);
                let route = st.devices[0].msix.records.get(&0).unwrap().route;
                st.routes
                    .stage_update(
                        route,
                        GuestDest {
                            vcpu: 7,
                            vector: 0x40,
                        },
                    )
                    .unwrap();
                st.routes.commit().unwrap();
            },
            "not a valid target",
        );
        broken(
            |h, _| {
                lock(&h.shared.state).sources.remove(&0x100);
            },
            "source 0x100 registered as None",
        );
        broken(
            |_, vm| {
                lock(&vm.shared.state).devices[0].msix.free.put(1);
            },
            "slot marked free",
        );
    }
}
