//! What must hold on the modelled host between requests, on top of each VM's own
//! invariants ([`Vm::check_invariants`](crate::Vm::check_invariants)):
//!
//! - every grant of every live VM is a vector the kernel backs, with the same message,
//!   mode, destination and PASID, on its own IRTE (on the device's unit, with the device's
//!   source-id, programmed for that vector) and, unless posted, its own host vector;
//! - nothing is held without a grant: IRTEs in use and host vectors allocated number
//!   exactly the backed vectors, and the kernel backs no vector a VM does not hold;
//! - an MSI block sits on a naturally aligned IRTE block;
//! - the requester IDs the kernel knows are exactly the live VMs' devices.
//!
//! Call it when no request is in flight (it takes the locks VM by VM, then the kernel).

use super::ModelHost;
use super::kernel::DeviceRemap;
use super::remap::IrteDest;
use super::vectors::HostVector;
use crate::check_set::{CheckSet, check_set};
use crate::sync::lock;
use crate::vm::Vm;
use pvirq_proto::Kind;
use std::sync::Weak;

impl ModelHost {
    /// Checks every invariant; the list of violations if any.
    pub fn check_invariants(&self) -> Result<(), Vec<String>> {
        let vms: Vec<_> = lock(&self.vms)
            .iter()
            .filter_map(|(id, w)| Weak::upgrade(w).map(|shared| (*id, Vm { shared })))
            .collect();
        let mut errors = Vec::new();
        let mut backed_vtd: u64 = 0;
        let held: usize = vms
            .iter()
            .map(|(_, vm)| lock(&vm.shared.state).held as usize)
            .sum();
        let mut vectors_seen: CheckSet<HostVector> = check_set(held);
        let mut irtes_seen: CheckSet<(u16, u16)> = check_set(held);
        let mut devices_seen = 0usize;
        for (id, vm) in &vms {
            let st = lock(&vm.shared.state);
            errors.extend(
                vm.violations(&st)
                    .into_iter()
                    .map(|e| format!("vm {id}: {e}")),
            );
            let kernel = lock(&self.kernel);
            for (handle, dev) in st.devices.iter().enumerate() {
                let rid = dev.spec.requester_id;
                let Some(kdev) = kernel.devices.get(&rid) else {
                    errors.push(format!(
                        "vm {id} dev {handle}: {rid:#06x} unknown to the kernel"
                    ));
                    continue;
                };
                devices_seen += 1;
                if kdev.vm != *id {
                    errors.push(format!("{rid:#06x} belongs to vm {} not {id}", kdev.vm));
                }
                let mut granted = 0usize;
                for kind in Kind::ALL.iter().copied() {
                    let table = dev.grants.table(kind);
                    let mut irtes = Vec::new();
                    for (index, record) in table.records.iter() {
                        granted += 1;
                        let Some(v) = kdev.vectors.get((kind, index)) else {
                            errors.push(format!("vm {id} dev {handle} {kind} {index}: not backed"));
                            continue;
                        };
                        if (v.message, v.mode, v.dest, v.pasid)
                            != (record.message, record.mode, record.dest, record.pasid)
                        {
                            errors.push(format!(
                                "vm {id} dev {handle} {kind} {index}: kernel {:?} vs grant {record:?}",
                                (v.message, v.mode, v.dest, v.pasid)
                            ));
                        }
                        irtes.push(v.irte);
                        let unit = kdev.unit();
                        if let DeviceRemap::Vtd { .. } = kdev.remap
                            && !irtes_seen.insert((unit, v.irte))
                        {
                            errors.push(format!("IRTE {unit}:{} backs two vectors", v.irte));
                        }
                        let table = match &kdev.remap {
                            DeviceRemap::Vtd { .. } => &kernel.remap,
                            DeviceRemap::Amd { table } => table,
                        };
                        match table.entry(unit, v.irte) {
                            Some(e) if e.source_id == rid && e.owner == Some((kind, index)) => {
                                let expected = match v.host_vector {
                                    Some(hv) => Some(IrteDest::Remapped(hv)),
                                    None => v.dest.map(IrteDest::Posted),
                                };
                                if e.dest != expected {
                                    errors.push(format!(
                                        "IRTE {}:{} goes to {:?}, expected {expected:?}",
                                        unit, v.irte, e.dest
                                    ));
                                }
                            }
                            e => errors.push(format!(
                                "vm {id} dev {handle} {kind} {index}: IRTE {} is {e:?}",
                                v.irte
                            )),
                        }
                        if let Some(hv) = v.host_vector {
                            if !kernel.vectors.is_allocated(hv) {
                                errors.push(format!("host vector {hv:?} not allocated"));
                            }
                            if !vectors_seen.insert(hv) {
                                errors.push(format!("host vector {hv:?} backs two vectors"));
                            }
                        }
                    }
                    if kind == Kind::Msi && !irtes.is_empty() {
                        let n = irtes.len() as u32;
                        let base = irtes.iter().copied().min().map_or(0, u32::from);
                        let contiguous = irtes
                            .iter()
                            .all(|i| (base..base + n).contains(&u32::from(*i)));
                        if !(n.is_power_of_two() && base % n == 0 && contiguous) {
                            errors.push(format!(
                                "vm {id} dev {handle}: MSI block of {n} not on an aligned IRTE block at {base}"
                            ));
                        }
                    }
                }
                if let DeviceRemap::Amd { table } = &kdev.remap {
                    let used = table.capacity(0) - table.free_entries(0);
                    if used as usize != kdev.vectors.len() {
                        errors.push(format!(
                            "vm {id} dev {handle}: AMD table has {used} entries in use for {} vectors",
                            kdev.vectors.len()
                        ));
                    }
                } else {
                    backed_vtd += kdev.vectors.len() as u64;
                }
                if kdev.vectors.len() != granted {
                    errors.push(format!(
                        "vm {id} dev {handle}: kernel backs {} vectors, {granted} granted",
                        kdev.vectors.len()
                    ));
                }
            }
        }
        let kernel = lock(&self.kernel);
        if kernel.devices.len() != devices_seen {
            errors.push(format!(
                "kernel knows {} devices, live VMs have {devices_seen}",
                kernel.devices.len()
            ));
        }
        let irtes_used: u64 = (0..kernel.remap.units())
            .map(|u| u64::from(kernel.remap.capacity(u) - kernel.remap.free_entries(u)))
            .sum();
        if irtes_used != irtes_seen.len() as u64 || irtes_used != backed_vtd {
            errors.push(format!(
                "{irtes_used} VT-d IRTEs in use, {} seen, {backed_vtd} vectors backed on VT-d",
                irtes_seen.len()
            ));
        }
        if u64::from(kernel.vectors.allocated()) != vectors_seen.len() as u64 {
            errors.push(format!(
                "{} host vectors allocated, {} held by grants",
                kernel.vectors.allocated(),
                vectors_seen.len()
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}
