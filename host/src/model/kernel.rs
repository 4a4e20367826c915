//! The modelled host kernel's state: what a real kernel's interrupt-remapping driver and
//! vector matrix hold for every assigned device on the host, whichever VM it belongs to.

use super::remap::{IrteDest, RemapUnits};
use super::vectors::{HostVector, VectorMatrix};
use super::{Fault, FaultReason};
use crate::backend::{BackendError, EnableRequest, Enabled, GuestDest, Trigger};
use crate::bitmap::floor_pow2;
use pvirq_proto::{GrantMode, Kind, MsiMessage, RemappableMsi, Resource};
use std::collections::{HashMap, VecDeque};

/// A VM's identity on the modelled host (never 0).
pub type VmId = u32;

/// How many recent faults are kept.
const FAULT_LOG: usize = 16;

/// One vector the kernel backs: what its IRTE and host IRQ handler hold.
#[derive(Clone, Debug)]
pub(crate) struct EnabledVector {
    pub(crate) irte: u16,
    /// `None` when posted.
    pub(crate) host_vector: Option<HostVector>,
    pub(crate) trigger: Trigger,
    pub(crate) dest: Option<GuestDest>,
    pub(crate) pasid: Option<u32>,
    pub(crate) mode: GrantMode,
    pub(crate) message: MsiMessage,
}

/// An assigned device the kernel knows: its VM, its remapping unit and its vectors.
#[derive(Debug, Default)]
pub(crate) struct ModelDevice {
    pub(crate) vm: VmId,
    pub(crate) unit: u16,
    pub(crate) vectors: HashMap<(Kind, u32), EnabledVector>,
}

pub(crate) struct Kernel {
    pub(crate) remap: RemapUnits,
    pub(crate) vectors: VectorMatrix,
    /// Whether the remapping hardware can post interrupts.
    pub(crate) can_post: bool,
    /// Devices by requester ID.
    pub(crate) devices: HashMap<u16, ModelDevice>,
    /// The remapping unit serving each requester ID (a DRHD's device scope); unit 0
    /// otherwise.
    pub(crate) placements: HashMap<u16, u16>,
    pub(crate) fault_count: u64,
    pub(crate) faults: VecDeque<Fault>,
    /// Interrupts resolved and signalled to their route.
    pub(crate) delivered: u64,
}

impl Kernel {
    pub(crate) fn record(&mut self, fault: Fault) {
        self.fault_count += 1;
        if self.faults.len() == FAULT_LOG {
            self.faults.pop_front();
        }
        self.faults.push_back(fault);
    }

    /// Backs a prefix of `request.vectors` of device `rid`, at least `request.min` long:
    /// counts what is free and reserves it in one go (the caller holds the kernel lock, so
    /// no other VM takes what was counted).
    pub(crate) fn enable(
        &mut self,
        rid: u16,
        request: &EnableRequest<'_>,
        out: &mut Vec<Enabled>,
    ) -> Result<(), BackendError> {
        let unit = self.devices.get(&rid).map_or(0, |d| d.unit);
        let msi = request.kind == Kind::Msi;
        let wanted = u32::try_from(request.vectors.len()).unwrap_or(u32::MAX);
        let min = u32::try_from(request.min).unwrap_or(u32::MAX);
        let posted = request.allow_posted
            && self.can_post
            && request.vectors.iter().all(|v| v.dest.is_some());
        let free_irtes = self.remap.free_entries(unit);
        let irtes = if msi {
            self.remap.largest_block(unit, 32)
        } else {
            free_irtes
        };
        let vectors = if posted {
            u32::MAX
        } else {
            self.vectors.available()
        };
        let mut n = wanted.min(irtes).min(vectors);
        if msi {
            n = floor_pow2(n);
        }
        if n < min || n == 0 {
            return Err(if msi && irtes < min && free_irtes >= min {
                BackendError::Fragmented { largest: irtes }
            } else if irtes < min {
                BackendError::Exhausted {
                    resource: Resource::Irte,
                    supplied: n,
                }
            } else {
                BackendError::Exhausted {
                    resource: Resource::HostVector,
                    supplied: n,
                }
            });
        }
        let setups = request.vectors.get(..n as usize).unwrap_or_default();
        let irte_list = self.reserve_irtes(unit, rid, n, msi)?;
        let mut host_vectors = Vec::with_capacity(setups.len());
        if !posted {
            for _ in setups {
                match self.vectors.alloc() {
                    Some(hv) => host_vectors.push(hv),
                    None => {
                        // Not reachable: the count was checked under the same lock.
                        self.unreserve(unit, &irte_list, &host_vectors);
                        return Err(BackendError::Exhausted {
                            resource: Resource::HostVector,
                            supplied: host_vectors.len() as u32,
                        });
                    }
                }
            }
        }
        let base = irte_list.first().copied().unwrap_or(0);
        let mut enabled = Vec::with_capacity(setups.len());
        for (i, (setup, irte)) in setups.iter().zip(&irte_list).enumerate() {
            let host_vector = host_vectors.get(i).copied();
            let dest = match (host_vector, setup.dest) {
                (Some(hv), _) => IrteDest::Remapped(hv),
                (None, Some(dest)) => IrteDest::Posted(dest),
                // Not reachable: posting needs every destination.
                (None, None) => IrteDest::Remapped(HostVector { cpu: 0, vector: 0 }),
            };
            self.remap
                .program(unit, *irte, dest, (request.kind, setup.index));
            let message = if msi {
                RemappableMsi {
                    handle: base,
                    subhandle: Some(i as u16),
                }
            } else {
                RemappableMsi {
                    handle: *irte,
                    subhandle: Some(0),
                }
            }
            .message();
            let mode = if host_vector.is_some() {
                GrantMode::Remapped
            } else {
                GrantMode::Posted
            };
            enabled.push((
                setup.index,
                EnabledVector {
                    irte: *irte,
                    host_vector,
                    trigger: setup.trigger.clone(),
                    dest: setup.dest,
                    pasid: request.pasid,
                    mode,
                    message,
                },
            ));
            out.push(Enabled { message, mode });
        }
        let device = self.devices.entry(rid).or_default();
        for (index, vector) in enabled {
            device.vectors.insert((request.kind, index), vector);
        }
        Ok(())
    }

    fn reserve_irtes(
        &mut self,
        unit: u16,
        rid: u16,
        n: u32,
        msi: bool,
    ) -> Result<Vec<u16>, BackendError> {
        let short = |supplied| BackendError::Exhausted {
            resource: Resource::Irte,
            supplied,
        };
        if msi {
            let base = self.remap.alloc_block(unit, n, rid).ok_or(short(0))?;
            return Ok((0..n).map(|i| base.wrapping_add(i as u16)).collect());
        }
        let mut list = Vec::with_capacity(n as usize);
        for i in 0..n {
            match self.remap.alloc(unit, rid) {
                Some(irte) => list.push(irte),
                None => {
                    self.unreserve(unit, &list, &[]);
                    return Err(short(i));
                }
            }
        }
        Ok(list)
    }

    fn unreserve(&mut self, unit: u16, irtes: &[u16], vectors: &[HostVector]) {
        for irte in irtes {
            self.remap.free(unit, *irte);
        }
        for hv in vectors {
            self.vectors.free(*hv);
        }
    }

    /// Stops backing the vectors at `indices` of `kind` of device `rid`.
    pub(crate) fn disable(&mut self, rid: u16, kind: Kind, indices: &[u32]) {
        let Some(device) = self.devices.get_mut(&rid) else {
            return;
        };
        let unit = device.unit;
        let mut released = Vec::with_capacity(indices.len());
        for index in indices {
            if let Some(vector) = device.vectors.remove(&(kind, *index)) {
                released.push(vector);
            }
        }
        for vector in released {
            self.remap.free(unit, vector.irte);
            if let Some(hv) = vector.host_vector {
                self.vectors.free(hv);
            }
        }
    }

    /// A vector's guest destination changed: a posted IRTE points at the new vCPU.
    pub(crate) fn retarget(&mut self, rid: u16, kind: Kind, index: u32, dest: Option<GuestDest>) {
        let Some(device) = self.devices.get_mut(&rid) else {
            return;
        };
        let unit = device.unit;
        let Some(vector) = device.vectors.get_mut(&(kind, index)) else {
            return;
        };
        vector.dest = dest;
        if let (GrantMode::Posted, Some(dest)) = (vector.mode, dest) {
            let irte = vector.irte;
            self.remap
                .program(unit, irte, IrteDest::Posted(dest), (kind, index));
        }
    }

    /// Resolves an interrupt write from `source_id` as the hardware does: the trigger to
    /// signal and where it should arrive, or the fault.
    pub(crate) fn resolve(
        &self,
        source_id: u16,
        message: MsiMessage,
        pasid: Option<u32>,
    ) -> Result<(Trigger, VmId, Option<GuestDest>, GrantMode), FaultReason> {
        let device = self
            .devices
            .get(&source_id)
            .ok_or(FaultReason::Remap(super::RemapFault::UnknownSource))?;
        let entry = self
            .remap
            .deliver(device.unit, source_id, message)
            .map_err(FaultReason::Remap)?;
        let owner = entry.owner.ok_or(FaultReason::NotGranted)?;
        let vector = device.vectors.get(&owner).ok_or(FaultReason::NotGranted)?;
        if let Some(pasid) = pasid
            && vector.pasid != Some(pasid)
        {
            return Err(FaultReason::PasidMismatch {
                expected: vector.pasid,
                got: pasid,
            });
        }
        Ok((vector.trigger.clone(), device.vm, vector.dest, vector.mode))
    }
}
