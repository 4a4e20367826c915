//! The modelled host kernel's state: what a real kernel's interrupt-remapping driver and
//! vector matrix hold for every assigned device on the host, whichever VM it belongs to.

use super::amd::{amd_index, amd_message};
use super::remap::{IrteDest, RemapConfig, RemapUnits};
use super::vectors::{HostVector, VectorMatrix};
use super::{Fault, FaultReason};
use crate::backend::{BackendError, EnableRequest, Enabled, GuestDest, Trigger, VectorSetup};
use crate::bitmap::floor_pow2;
use crate::error::HostError;
use crate::paged::PagedMap;
use pvirq_proto::{GrantMode, Kind, MessageFormat, MsiMessage, RemappableMsi, Resource};
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
    /// The message given, which only the invariant check reads back.
    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) message: MsiMessage,
}

/// Which remapping table serves a device.
pub(crate) enum DeviceRemap {
    /// A VT-d unit, shared with every device in its scope.
    Vtd { unit: u16 },
    /// The device's own AMD IOMMU table (one unit of 512 or 2,048 entries).
    Amd { table: RemapUnits },
}

/// A device's backed vectors, by kind and index (no hashing: an IMS index is chosen by
/// the guest).
#[derive(Default)]
pub(crate) struct DeviceVectors([PagedMap<EnabledVector>; 3]);

fn kind_slot(kind: Kind) -> usize {
    match kind {
        Kind::Msi => 0,
        Kind::MsiX => 1,
        Kind::Ims => 2,
    }
}

impl DeviceVectors {
    pub(crate) fn get(&self, (kind, index): (Kind, u32)) -> Option<&EnabledVector> {
        self.0.get(kind_slot(kind))?.get(&index)
    }

    fn get_mut(&mut self, (kind, index): (Kind, u32)) -> Option<&mut EnabledVector> {
        self.0.get_mut(kind_slot(kind))?.get_mut(&index)
    }

    fn insert(&mut self, (kind, index): (Kind, u32), vector: EnabledVector) {
        if let Some(map) = self.0.get_mut(kind_slot(kind)) {
            map.insert(index, vector);
        }
    }

    fn remove(&mut self, (kind, index): (Kind, u32)) -> Option<EnabledVector> {
        self.0.get_mut(kind_slot(kind))?.remove(&index)
    }

    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) fn len(&self) -> usize {
        self.0.iter().map(PagedMap::len).sum()
    }

    /// Every (kind, index) backed.
    pub(crate) fn keys(&self) -> Vec<(Kind, u32)> {
        Kind::ALL
            .iter()
            .zip(&self.0)
            .flat_map(|(kind, map)| map.keys().map(move |i| (*kind, i)))
            .collect()
    }
}

/// An assigned device the kernel knows: its VM, its remapping table and its vectors.
pub(crate) struct ModelDevice {
    pub(crate) vm: VmId,
    pub(crate) remap: DeviceRemap,
    pub(crate) vectors: DeviceVectors,
}

impl ModelDevice {
    pub(crate) fn format(&self) -> MessageFormat {
        match self.remap {
            DeviceRemap::Vtd { .. } => MessageFormat::VtdRemappable,
            DeviceRemap::Amd { .. } => MessageFormat::AmdRemapped,
        }
    }

    /// The unit a VT-d device is on (0 for an AMD table's one unit).
    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) fn unit(&self) -> u16 {
        match self.remap {
            DeviceRemap::Vtd { unit } => unit,
            DeviceRemap::Amd { .. } => 0,
        }
    }
}

/// Where a device sits on the modelled host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Behind VT-d remapping unit `unit` (its DRHD's device scope).
    Vtd {
        /// The unit.
        unit: u16,
    },
    /// Behind an AMD IOMMU, with its own table of `entries` (512 or 2,048).
    Amd {
        /// Table size.
        entries: u32,
    },
}

impl Default for Placement {
    /// VT-d unit 0.
    fn default() -> Self {
        Placement::Vtd { unit: 0 }
    }
}

impl Placement {
    /// The device's remapping state when it is attached.
    pub(crate) fn attach(self) -> Result<DeviceRemap, HostError> {
        match self {
            Placement::Vtd { unit } => Ok(DeviceRemap::Vtd { unit }),
            Placement::Amd { entries } => RemapUnits::new(RemapConfig {
                units: 1,
                entries_per_unit: entries,
            })
            .map(|table| DeviceRemap::Amd { table }),
        }
    }
}

pub(crate) struct Kernel {
    pub(crate) remap: RemapUnits,
    pub(crate) vectors: VectorMatrix,
    /// Whether the remapping hardware can post interrupts.
    pub(crate) can_post: bool,
    /// Devices by requester ID.
    pub(crate) devices: HashMap<u16, ModelDevice>,
    /// Where each requester ID sits, if placed.
    pub(crate) placements: HashMap<u16, Placement>,
    /// Where a requester ID not placed sits.
    pub(crate) default_placement: Placement,
    /// The largest multi-MSI block VT-d supports (ECAP.MHMV).
    pub(crate) vtd_max_block: u32,
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

    /// The free entries (all, and the largest aligned block ≤ 32) of `rid`'s table.
    pub(crate) fn free_entries(&self, rid: u16) -> (u32, u32) {
        let Some(device) = self.devices.get(&rid) else {
            return (0, 0);
        };
        let (table, unit) = match &device.remap {
            DeviceRemap::Vtd { unit } => (&self.remap, *unit),
            DeviceRemap::Amd { table } => (table, 0),
        };
        (table.free_entries(unit), table.largest_block(unit, 32))
    }

    /// The largest multi-MSI block `rid`'s remapping hardware allows.
    pub(crate) fn max_msi_block(&self, rid: u16) -> u32 {
        match self.devices.get(&rid).map(|d| &d.remap) {
            Some(DeviceRemap::Vtd { .. }) => self.vtd_max_block,
            _ => 32,
        }
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
        let max_block = self.max_msi_block(rid);
        let posted_ok = self.can_post;
        let Kernel {
            remap,
            vectors: matrix,
            devices,
            ..
        } = self;
        let Some(device) = devices.get_mut(&rid) else {
            return Err(BackendError::Unsupported(request.kind));
        };
        let format = device.format();
        let (table, unit) = match &mut device.remap {
            DeviceRemap::Vtd { unit } => (remap, *unit),
            DeviceRemap::Amd { table } => (table, 0),
        };
        let msi = request.kind == Kind::Msi;
        let wanted = u32::try_from(request.vectors.len()).unwrap_or(u32::MAX);
        let min = u32::try_from(request.min).unwrap_or(u32::MAX);
        // Posted where the driver allows it, parked grants too: their entries point at no
        // vCPU until activated, so activation needs nothing new (spec §3.4, §3.5).
        let posted = request.allow_posted && posted_ok;
        let free_irtes = table.free_entries(unit);
        let irtes = if msi {
            table.largest_block(unit, max_block.min(32))
        } else {
            free_irtes
        };
        let free_vectors = if posted { u32::MAX } else { matrix.available() };
        let mut n = wanted.min(irtes).min(free_vectors);
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
        // The same entries as before where they are free (a restore, a migration), so the
        // guest keeps its messages; else the lowest free ones.
        let irte_list = match reserve_previous(table, unit, rid, format, setups, msi) {
            Some(list) => list,
            None => reserve_irtes(table, unit, rid, n, msi)?,
        };
        let mut host_vectors = Vec::with_capacity(setups.len());
        if !posted {
            for _ in setups {
                match matrix.alloc() {
                    Some(hv) => host_vectors.push(hv),
                    None => {
                        // Not reachable: the count was checked under the same lock.
                        unreserve(table, matrix, unit, &irte_list, &host_vectors);
                        return Err(BackendError::Exhausted {
                            resource: Resource::HostVector,
                            supplied: host_vectors.len() as u32,
                        });
                    }
                }
            }
        }
        let base = irte_list.first().copied().unwrap_or(0);
        for (i, (setup, irte)) in setups.iter().zip(&irte_list).enumerate() {
            let host_vector = host_vectors.get(i).copied();
            let dest = match (host_vector, setup.dest) {
                (Some(hv), _) => IrteDest::Remapped(hv),
                (None, Some(dest)) => IrteDest::Posted(dest),
                (None, None) => IrteDest::PostedParked,
            };
            table.program(unit, *irte, dest, (request.kind, setup.index));
            let message = message(format, msi, base, *irte, i as u16);
            let mode = if host_vector.is_some() {
                GrantMode::Remapped
            } else {
                GrantMode::Posted
            };
            device.vectors.insert(
                (request.kind, setup.index),
                EnabledVector {
                    irte: *irte,
                    host_vector,
                    trigger: setup.trigger.clone(),
                    dest: setup.dest,
                    pasid: request.pasid,
                    mode,
                    #[cfg(any(test, feature = "test-utils"))]
                    message,
                },
            );
            out.push(Enabled { message, mode });
        }
        Ok(())
    }

    /// Stops backing the vectors at `indices` of `kind` of device `rid`.
    pub(crate) fn disable(&mut self, rid: u16, kind: Kind, indices: &[u32]) {
        let Kernel {
            remap,
            vectors: matrix,
            devices,
            ..
        } = self;
        let Some(device) = devices.get_mut(&rid) else {
            return;
        };
        let (table, unit) = match &mut device.remap {
            DeviceRemap::Vtd { unit } => (remap, *unit),
            DeviceRemap::Amd { table } => (table, 0),
        };
        let mut irtes = Vec::with_capacity(indices.len());
        for index in indices {
            if let Some(vector) = device.vectors.remove((kind, *index)) {
                irtes.push(vector.irte);
                if let Some(hv) = vector.host_vector {
                    matrix.free(hv);
                }
            }
        }
        table.free_all(unit, &irtes);
    }

    /// A vector's guest destination changed: a posted IRTE points at the new vCPU, or at
    /// none when parked.
    pub(crate) fn retarget(&mut self, rid: u16, kind: Kind, index: u32, dest: Option<GuestDest>) {
        let Kernel { remap, devices, .. } = self;
        let Some(device) = devices.get_mut(&rid) else {
            return;
        };
        let (table, unit) = match &mut device.remap {
            DeviceRemap::Vtd { unit } => (remap, *unit),
            DeviceRemap::Amd { table } => (table, 0),
        };
        let Some(vector) = device.vectors.get_mut((kind, index)) else {
            return;
        };
        vector.dest = dest;
        if vector.mode == GrantMode::Posted {
            let entry = dest.map_or(IrteDest::PostedParked, IrteDest::Posted);
            table.program(unit, vector.irte, entry, (kind, index));
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
        let entry = match &device.remap {
            DeviceRemap::Vtd { unit } => self.remap.deliver(*unit, source_id, message),
            DeviceRemap::Amd { table } => {
                amd_index(message).and_then(|index| table.lookup(0, source_id, index))
            }
        }
        .map_err(FaultReason::Remap)?;
        let owner = entry.owner.ok_or(FaultReason::NotGranted)?;
        let vector = device.vectors.get(owner).ok_or(FaultReason::NotGranted)?;
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

/// The message of grant `i` of a request whose entries start at `base` (an MSI block) or
/// whose own entry is `irte`.
fn message(format: MessageFormat, msi: bool, base: u16, irte: u16, i: u16) -> MsiMessage {
    match (format, msi) {
        (MessageFormat::AmdRemapped, true) => amd_message(u32::from(base) + u32::from(i)),
        (MessageFormat::AmdRemapped, false) => amd_message(u32::from(irte)),
        (_, true) => RemappableMsi {
            handle: base,
            subhandle: Some(i),
        }
        .message(),
        (_, false) => RemappableMsi {
            handle: irte,
            subhandle: Some(0),
        }
        .message(),
    }
}

/// The entry a message selected, in `format`.
fn entry_of(format: MessageFormat, message: MsiMessage) -> Option<u32> {
    match format {
        MessageFormat::AmdRemapped => amd_index(message).ok(),
        _ => RemappableMsi::decode(message).ok().map(|m| m.irte_index()),
    }
}

/// Reserves the entries the vectors' previous messages selected, all or none.
fn reserve_previous(
    table: &mut RemapUnits,
    unit: u16,
    rid: u16,
    format: MessageFormat,
    setups: &[VectorSetup],
    msi: bool,
) -> Option<Vec<u16>> {
    let wanted: Vec<u32> = setups
        .iter()
        .map(|s| s.previous.and_then(|m| entry_of(format, m)))
        .collect::<Option<_>>()?;
    let first = *wanted.first()?;
    if msi {
        let n = wanted.len() as u32;
        let contiguous = wanted.iter().zip(first..).all(|(w, i)| *w == i);
        if !contiguous {
            return None;
        }
        let base = table.alloc_at(unit, first, n, rid)?;
        return Some((0..n).map(|i| base.wrapping_add(i as u16)).collect());
    }
    let mut taken = Vec::with_capacity(wanted.len());
    for entry in wanted {
        match table.alloc_at(unit, entry, 1, rid) {
            Some(irte) => taken.push(irte),
            None => {
                for irte in &taken {
                    table.free(unit, *irte);
                }
                return None;
            }
        }
    }
    Some(taken)
}

/// Reserves `n` entries of `table`'s `unit` for `rid` (an aligned block for MSI).
fn reserve_irtes(
    table: &mut RemapUnits,
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
        let base = table.alloc_block(unit, n, rid).ok_or(short(0))?;
        return Ok((0..n).map(|i| base.wrapping_add(i as u16)).collect());
    }
    let mut list = Vec::with_capacity(n as usize);
    if !table.alloc_lowest(unit, n, rid, &mut list) {
        return Err(short(table.free_entries(unit).min(n)));
    }
    Ok(list)
}

fn unreserve(
    table: &mut RemapUnits,
    matrix: &mut VectorMatrix,
    unit: u16,
    irtes: &[u16],
    vectors: &[HostVector],
) {
    for irte in irtes {
        table.free(unit, *irte);
    }
    for hv in vectors {
        matrix.free(*hv);
    }
}
