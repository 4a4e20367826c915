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
use super::violation::ModelViolation;
use crate::check_set::{CheckSet, check_set};
use crate::sync::lock;
use crate::vm::{Vm, violations};
use pvirq_proto::Kind;
use std::sync::Weak;

impl ModelHost {
    /// Checks every invariant, each VM's own included; every violation found, if any.
    /// For tests, the simulator and the fuzzer (feature `test-utils`).
    pub fn check_invariants(&self) -> Result<(), Vec<ModelViolation>> {
        let vms: Vec<_> = lock(&self.vms)
            .iter()
            .filter_map(|(id, w)| Weak::upgrade(w).map(|shared| (*id, Vm { shared })))
            .collect();
        let mut errors = Vec::new();
        let mut backed_vtd: u64 = 0;
        let held: usize = vms.iter().map(|(_, vm)| vm.state().held as usize).sum();
        let mut vectors_seen: CheckSet<HostVector> = check_set(held);
        let mut irtes_seen: CheckSet<(u16, u16)> = check_set(held);
        let mut devices_seen = 0usize;
        for (id, vm) in &vms {
            let st = vm.state();
            errors.extend(
                violations(&st.config, &st)
                    .into_iter()
                    .map(|violation| ModelViolation::Vm { vm: *id, violation }),
            );
            let kernel = lock(&self.kernel);
            for (handle, dev) in st.devices.iter().enumerate() {
                if dev.removed {
                    // Gone from the VM and from the kernel: it holds nothing.
                    continue;
                }
                let rid = dev.spec.requester_id;
                let Some(kdev) = kernel.devices.get(&rid) else {
                    errors.push(ModelViolation::UnknownDevice {
                        vm: *id,
                        handle,
                        requester_id: rid,
                    });
                    continue;
                };
                devices_seen += 1;
                if kdev.vm != *id {
                    errors.push(ModelViolation::WrongVm {
                        requester_id: rid,
                        owner: kdev.vm,
                        vm: *id,
                    });
                }
                let mut granted = 0usize;
                for kind in Kind::ALL.iter().copied() {
                    let table = dev.grants.table(kind);
                    let mut irtes = Vec::new();
                    for (index, record) in table.records.iter() {
                        granted += 1;
                        let Some(v) = kdev.vectors.get((kind, index)) else {
                            errors.push(ModelViolation::NotBacked {
                                vm: *id,
                                handle,
                                kind,
                                index,
                            });
                            continue;
                        };
                        if (v.message, v.mode, v.dest, v.pasid)
                            != (record.message, record.mode, record.dest, record.pasid)
                        {
                            errors.push(ModelViolation::BackingDiffers {
                                vm: *id,
                                handle,
                                kind,
                                index,
                                kernel: (v.message, v.mode, v.dest, v.pasid),
                                grant: *record,
                            });
                        }
                        irtes.push(v.irte);
                        let unit = kdev.unit();
                        if let DeviceRemap::Vtd { .. } = kdev.remap
                            && !irtes_seen.insert((unit, v.irte))
                        {
                            errors.push(ModelViolation::SharedIrte { unit, irte: v.irte });
                        }
                        let table = match &kdev.remap {
                            DeviceRemap::Vtd { .. } => &kernel.remap,
                            DeviceRemap::Amd { table } => table,
                        };
                        match table.entry(unit, v.irte) {
                            Some(e) if e.source_id == rid && e.owner == Some((kind, index)) => {
                                let expected = match v.host_vector {
                                    Some(hv) => Some(IrteDest::Remapped(hv)),
                                    None => Some(
                                        v.dest.map_or(IrteDest::PostedParked, IrteDest::Posted),
                                    ),
                                };
                                if e.dest != expected {
                                    errors.push(ModelViolation::IrteDestination {
                                        unit,
                                        irte: v.irte,
                                        dest: e.dest,
                                        expected,
                                    });
                                }
                            }
                            entry => errors.push(ModelViolation::IrteNotOwned {
                                vm: *id,
                                handle,
                                kind,
                                index,
                                irte: v.irte,
                                entry,
                            }),
                        }
                        if let Some(hv) = v.host_vector {
                            if !kernel.vectors.is_allocated(hv) {
                                errors.push(ModelViolation::HostVectorNotAllocated(hv));
                            }
                            if !vectors_seen.insert(hv) {
                                errors.push(ModelViolation::SharedHostVector(hv));
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
                            errors.push(ModelViolation::MsiBlockUnaligned {
                                vm: *id,
                                handle,
                                count: n,
                                base,
                            });
                        }
                    }
                }
                if let DeviceRemap::Amd { table } = &kdev.remap {
                    let used = table.capacity(0) - table.free_entries(0);
                    if used as usize != kdev.vectors.len() {
                        errors.push(ModelViolation::AmdTableCount {
                            vm: *id,
                            handle,
                            used,
                            vectors: kdev.vectors.len(),
                        });
                    }
                } else {
                    backed_vtd += kdev.vectors.len() as u64;
                }
                if kdev.vectors.len() != granted {
                    errors.push(ModelViolation::BackedCount {
                        vm: *id,
                        handle,
                        backed: kdev.vectors.len(),
                        granted,
                    });
                }
            }
        }
        let kernel = lock(&self.kernel);
        if kernel.devices.len() != devices_seen {
            errors.push(ModelViolation::DeviceCount {
                kernel: kernel.devices.len(),
                live: devices_seen,
            });
        }
        let irtes_used: u64 = (0..kernel.remap.units())
            .map(|u| u64::from(kernel.remap.capacity(u) - kernel.remap.free_entries(u)))
            .sum();
        if irtes_used != irtes_seen.len() as u64 || irtes_used != backed_vtd {
            errors.push(ModelViolation::IrteCount {
                used: irtes_used,
                seen: irtes_seen.len() as u64,
                backed: backed_vtd,
            });
        }
        if u64::from(kernel.vectors.allocated()) != vectors_seen.len() as u64 {
            errors.push(ModelViolation::HostVectorCount {
                allocated: kernel.vectors.allocated(),
                held: vectors_seen.len() as u64,
            });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}
