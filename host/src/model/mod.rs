//! The modelled host kernel: what a real host's interrupt-remapping driver, vector matrix
//! and interrupt handlers do, for the simulator, tests, fuzzing and benchmarks.
//!
//! A real VMM never sees this: the host kernel owns IRTEs and host vectors and the VMM asks
//! it through VFIO ([`crate::vfio`]). The model is one [`ModelHost`] shared by every VM of a
//! process, standing for the one kernel every VMM process on a host shares:
//!
//! - [`remap`]: VT-d-style remapping units (IRTEs with source-id checks, aligned blocks for
//!   multi-MSI, remapped and posted entries);
//! - [`vectors`]: the per-CPU host vector matrix;
//! - [`ModelBackend`]: one assigned device's [`crate::backend::InterruptBackend`] on it;
//! - [`ModelHost::fire`]: a device's interrupt write, checked and resolved as the hardware
//!   does, signalling the route's trigger, or a recorded [`Fault`].

pub mod amd;
mod backend;
#[cfg(any(test, feature = "test-utils"))]
mod invariants;
mod kernel;
pub mod remap;
pub mod vectors;
#[cfg(any(test, feature = "test-utils"))]
mod violation;

pub use backend::ModelBackend;
pub use kernel::{Placement, VmId};
pub use remap::{Irte, IrteDest, IrteOwner, RemapConfig, RemapFault, RemapUnits};
pub use vectors::{HostVector, VectorConfig, VectorMatrix};
#[cfg(any(test, feature = "test-utils"))]
pub use violation::{KernelBacking, ModelViolation};

use crate::backend::{GuestDest, InterruptBackend};
use crate::config::VmConfig;
use crate::error::{ConfigError, HostError};
use crate::routes::GuestRoutes;
use crate::sync::lock;
use crate::vm::{Vm, VmShared};
use kernel::Kernel;
use pvirq_proto::{GrantMode, MsiMessage};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Shape of the modelled host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelConfig {
    /// Remapping units.
    pub remap: RemapConfig,
    /// Host CPU vectors.
    pub vectors: VectorConfig,
    /// Whether the remapping hardware can post interrupts (VT-d PI, AMD AVIC).
    pub posted: bool,
    /// The largest multi-MSI block the VT-d units support (ECAP.MHMV: `2^MHMV`); 0 means
    /// 32, the protocol's largest.
    pub vtd_max_msi_block: u32,
    /// Where a device sits unless [`ModelHost::place_as`] says otherwise: behind VT-d unit
    /// 0 (the default), or behind an AMD IOMMU with a table of its own, so that a whole
    /// host can be modelled as AMD (message format `amd-remapped`).
    pub placement: Placement,
}

/// Why an interrupt a device sent was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReason {
    /// The remapping unit refused it.
    Remap(RemapFault),
    /// The entry it selects backs no enabled vector (reserved by a request in flight, or
    /// being released).
    NotGranted,
    /// The write carried a PASID the grant was not made for.
    PasidMismatch {
        /// The grant's PASID.
        expected: Option<u32>,
        /// The write's.
        got: u32,
    },
    /// The route's trigger could not be signalled.
    Signal,
}

/// A recorded fault: who sent what, and why it went nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The sender's requester ID.
    pub source_id: u16,
    /// The message it sent.
    pub message: MsiMessage,
    /// Why it was dropped.
    pub reason: FaultReason,
}

/// Where a fired interrupt was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The VM of the device that sent it.
    pub vm: VmId,
    /// Where the kernel believes it goes; `None` for a parked grant (its route drops it).
    pub dest: Option<GuestDest>,
    /// How it went.
    pub mode: GrantMode,
}

impl Delivery {
    /// The (APIC ID, guest vector) it went to, if it had a destination.
    pub fn to(&self) -> Option<(u32, u8)> {
        self.dest.map(|d| (d.apic_id, d.vector))
    }
}

/// Fault count and the most recent faults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultReport {
    /// Faults since the host was created.
    pub count: u64,
    /// The last few faults, oldest first.
    pub recent: Vec<Fault>,
}

/// Occupancy of one remapping unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitOccupancy {
    /// Table size.
    pub capacity: u32,
    /// Entries in use (granted or reserved).
    pub used: u32,
}

/// Occupancy of the modelled host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostOccupancy {
    /// Per remapping unit.
    pub units: Vec<UnitOccupancy>,
    /// Host vectors in use.
    pub vectors_used: u32,
    /// Host vectors still free.
    pub vectors_free: u32,
    /// Live VMs created through [`ModelHost::create_vm`].
    pub vms: u32,
}

/// The VMs created through [`ModelHost::create_vm`], by model id.
type VmList = Arc<Mutex<Vec<(VmId, Weak<VmShared>)>>>;

/// The modelled host kernel, shared by the VMs drawing on it. Cloning shares it.
#[derive(Clone)]
pub struct ModelHost {
    kernel: Arc<Mutex<Kernel>>,
    vms: VmList,
    next_vm: Arc<AtomicU32>,
}

impl std::fmt::Debug for ModelHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHost").finish_non_exhaustive()
    }
}

impl ModelHost {
    /// A host shaped by `config`.
    pub fn new(config: &ModelConfig) -> Result<ModelHost, HostError> {
        let remap = RemapUnits::new(config.remap)?;
        check_placement(config.placement, remap.units())?;
        Ok(ModelHost {
            kernel: Arc::new(Mutex::new(Kernel {
                remap,
                vectors: VectorMatrix::new(&config.vectors)?,
                can_post: config.posted,
                vtd_max_block: match config.vtd_max_msi_block {
                    0 => 32,
                    n if n.is_power_of_two() && n <= 32 => n,
                    n => return Err(ConfigError::VtdMaxMsiBlock(n).into()),
                },
                devices: HashMap::new(),
                placements: HashMap::new(),
                default_placement: config.placement,
                fault_count: 0,
                faults: VecDeque::new(),
                delivered: 0,
            })),
            vms: Arc::default(),
            next_vm: Arc::new(AtomicU32::new(1)),
        })
    }

    /// Puts the device with `requester_id` behind VT-d remapping unit `unit` (a DRHD's
    /// device scope, on real hardware). Devices not placed sit where
    /// [`ModelConfig::placement`] says (VT-d unit 0 by default).
    pub fn place(&self, requester_id: u16, unit: u16) -> Result<(), HostError> {
        self.place_as(requester_id, Placement::Vtd { unit })
    }

    /// Puts the device with `requester_id` where `placement` says, before it is attached.
    pub fn place_as(&self, requester_id: u16, placement: Placement) -> Result<(), HostError> {
        let mut kernel = lock(&self.kernel);
        check_placement(placement, kernel.remap.units())?;
        if kernel.devices.contains_key(&requester_id) {
            return Err(HostError::SourceIdInUse(requester_id));
        }
        kernel.placements.insert(requester_id, placement);
        Ok(())
    }

    /// A new VM id, for [`ModelHost::attach`].
    pub fn new_vm_id(&self) -> VmId {
        self.next_vm.fetch_add(1, Ordering::Relaxed)
    }

    /// Assigns the device with `requester_id` to VM `vm`: its backend. A requester ID is
    /// assigned once at a time.
    pub fn attach(&self, vm: VmId, requester_id: u16) -> Result<ModelBackend, HostError> {
        let mut kernel = lock(&self.kernel);
        if kernel.devices.contains_key(&requester_id) {
            return Err(HostError::SourceIdInUse(requester_id));
        }
        let placement = kernel
            .placements
            .get(&requester_id)
            .copied()
            .unwrap_or(kernel.default_placement);
        let remap = placement.attach()?;
        kernel.devices.insert(
            requester_id,
            kernel::ModelDevice {
                vm,
                remap,
                vectors: kernel::DeviceVectors::default(),
            },
        );
        Ok(ModelBackend {
            kernel: Arc::clone(&self.kernel),
            requester_id,
        })
    }

    /// Creates a VM whose devices are all on this host, with its guest routes.
    pub fn create_vm(
        &self,
        config: VmConfig,
        routes: Box<dyn GuestRoutes>,
    ) -> Result<Vm, HostError> {
        self.create_vm_wrapped(config, |b| Box::new(b), routes)
    }

    /// As [`ModelHost::create_vm`], with each device's backend passed through `wrap` first
    /// (a fault-injecting wrapper, a counter, a VMM's own layer on top).
    pub fn create_vm_wrapped(
        &self,
        config: VmConfig,
        mut wrap: impl FnMut(ModelBackend) -> Box<dyn InterruptBackend>,
        routes: Box<dyn GuestRoutes>,
    ) -> Result<Vm, HostError> {
        let id = self.new_vm_id();
        let mut backends: Vec<Box<dyn InterruptBackend>> = Vec::with_capacity(config.devices.len());
        for device in &config.devices {
            // On error the backends made so far drop, and release their requester IDs.
            backends.push(wrap(self.attach(id, device.requester_id)?));
        }
        let vm = Vm::new(config, backends, routes)?;
        let mut vms = lock(&self.vms);
        vms.retain(|(_, w)| w.strong_count() > 0);
        vms.push((id, Arc::downgrade(&vm.shared)));
        Ok(vm)
    }

    /// The model id of a VM created by [`ModelHost::create_vm`].
    pub fn vm_id(&self, vm: &Vm) -> Option<VmId> {
        lock(&self.vms)
            .iter()
            .find(|(_, w)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&vm.shared)))
            .map(|(id, _)| *id)
    }

    /// An interrupt write a device sends: `source_id` is its requester ID, `message` what it
    /// wrote. The path is the hardware's: the device's remapping unit checks and resolves
    /// the IRTE, the host handler signals the route's trigger. Anything else is a recorded
    /// [`Fault`].
    pub fn fire(&self, source_id: u16, message: MsiMessage) -> Result<Delivery, Fault> {
        self.fire_tagged(source_id, None, message)
    }

    /// As [`ModelHost::fire`], for a write tagged with `pasid` (a PASID-aware remapping
    /// unit checks it against the grant's).
    pub fn fire_tagged(
        &self,
        source_id: u16,
        pasid: Option<u32>,
        message: MsiMessage,
    ) -> Result<Delivery, Fault> {
        let fault = |reason| Fault {
            source_id,
            message,
            reason,
        };
        let resolved = {
            let mut kernel = lock(&self.kernel);
            match kernel.resolve(source_id, message, pasid) {
                Ok(resolved) => resolved,
                Err(reason) => {
                    kernel.record(fault(reason));
                    return Err(fault(reason));
                }
            }
        };
        let (trigger, vm, dest, mode) = resolved;
        // Signalled outside the kernel lock: a route's signal takes its own.
        let raised = trigger.raise();
        let mut kernel = lock(&self.kernel);
        if raised.is_err() {
            kernel.record(fault(FaultReason::Signal));
            return Err(fault(FaultReason::Signal));
        }
        kernel.delivered += 1;
        Ok(Delivery { vm, dest, mode })
    }

    /// Interrupts resolved and signalled to their routes so far.
    pub fn delivered(&self) -> u64 {
        lock(&self.kernel).delivered
    }

    /// Faults recorded so far.
    pub fn faults(&self) -> FaultReport {
        let kernel = lock(&self.kernel);
        FaultReport {
            count: kernel.fault_count,
            recent: kernel.faults.iter().copied().collect(),
        }
    }

    /// What the host holds now.
    pub fn occupancy(&self) -> HostOccupancy {
        let vms = lock(&self.vms)
            .iter()
            .filter(|(_, w)| w.strong_count() > 0)
            .count() as u32;
        let kernel = lock(&self.kernel);
        HostOccupancy {
            units: (0..kernel.remap.units())
                .map(|u| {
                    let capacity = kernel.remap.capacity(u);
                    UnitOccupancy {
                        capacity,
                        used: capacity - kernel.remap.free_entries(u).min(capacity),
                    }
                })
                .collect(),
            vectors_used: kernel.vectors.allocated(),
            vectors_free: kernel.vectors.available(),
            vms,
        }
    }
}

/// Whether a device can sit where `placement` says on a host with `units` VT-d units.
fn check_placement(placement: Placement, units: u16) -> Result<(), HostError> {
    match placement {
        Placement::Vtd { unit } if unit >= units => Err(HostError::NoSuchUnit { unit, units }),
        Placement::Amd { entries } if !amd::AMD_TABLE_SIZES.contains(&entries) => {
            Err(ConfigError::AmdTableSize(entries).into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
