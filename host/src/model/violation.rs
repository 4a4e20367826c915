//! The ways the modelled host can disagree with the VMs drawing on it
//! ([`super::ModelHost::check_invariants`]).

use super::VmId;
use super::remap::{Irte, IrteDest};
use super::vectors::HostVector;
use crate::backend::GuestDest;
use crate::grants::GrantRecord;
use crate::vm::VmViolation;
use pvirq_proto::{GrantMode, Kind, MsiMessage};

/// What the kernel backs for one vector: message, mode, destination, PASID.
pub type KernelBacking = (MsiMessage, GrantMode, Option<GuestDest>, Option<u32>);

/// One invariant of the modelled host that does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelViolation {
    /// One of a VM's own invariants.
    #[error("vm {vm}: {violation}")]
    Vm {
        /// The model's VM id.
        vm: VmId,
        /// What is wrong in it.
        violation: VmViolation,
    },
    /// A VM's device is unknown to the kernel.
    #[error("vm {vm} dev {handle}: {requester_id:#06x} unknown to the kernel")]
    UnknownDevice {
        /// The model's VM id.
        vm: VmId,
        /// The device handle.
        handle: usize,
        /// Its requester ID.
        requester_id: u16,
    },
    /// The kernel assigns a VM's device to another VM.
    #[error("{requester_id:#06x} belongs to vm {owner} not {vm}")]
    WrongVm {
        /// The requester ID.
        requester_id: u16,
        /// The VM the kernel says owns it.
        owner: VmId,
        /// The VM whose device it is.
        vm: VmId,
    },
    /// A grant the kernel does not back.
    #[error("vm {vm} dev {handle} {kind} {index}: not backed")]
    NotBacked {
        /// The model's VM id.
        vm: VmId,
        /// The device handle.
        handle: usize,
        /// The kind.
        kind: Kind,
        /// The index.
        index: u32,
    },
    /// The kernel backs a grant differently from its record.
    #[error("vm {vm} dev {handle} {kind} {index}: kernel {kernel:?} vs grant {grant:?}")]
    BackingDiffers {
        /// The model's VM id.
        vm: VmId,
        /// The device handle.
        handle: usize,
        /// The kind.
        kind: Kind,
        /// The index.
        index: u32,
        /// What the kernel backs.
        kernel: KernelBacking,
        /// What the VM recorded.
        grant: GrantRecord,
    },
    /// One VT-d IRTE backs two vectors.
    #[error("IRTE {unit}:{irte} backs two vectors")]
    SharedIrte {
        /// The remapping unit.
        unit: u16,
        /// The entry.
        irte: u16,
    },
    /// An IRTE owned by the vector points elsewhere than its host vector (or posted
    /// destination).
    #[error("IRTE {unit}:{irte} goes to {dest:?}, expected {expected:?}")]
    IrteDestination {
        /// The remapping unit.
        unit: u16,
        /// The entry.
        irte: u16,
        /// Where it points.
        dest: Option<IrteDest>,
        /// Where it should.
        expected: Option<IrteDest>,
    },
    /// A backed vector's IRTE is missing, or not programmed for it (source-id, owner).
    #[error("vm {vm} dev {handle} {kind} {index}: IRTE {irte} is {entry:?}")]
    IrteNotOwned {
        /// The model's VM id.
        vm: VmId,
        /// The device handle.
        handle: usize,
        /// The kind.
        kind: Kind,
        /// The index.
        index: u32,
        /// The entry the kernel recorded for the vector.
        irte: u16,
        /// What the table holds there.
        entry: Option<Irte>,
    },
    /// A backed vector's host vector is not allocated in the matrix.
    #[error("host vector {0:?} not allocated")]
    HostVectorNotAllocated(HostVector),
    /// One host vector backs two vectors.
    #[error("host vector {0:?} backs two vectors")]
    SharedHostVector(HostVector),
    /// An MSI block does not sit on a naturally aligned block of IRTEs.
    #[error("vm {vm} dev {handle}: MSI block of {count} not on an aligned IRTE block at {base}")]
    MsiBlockUnaligned {
        /// The model's VM id.
        vm: VmId,
        /// The device handle.
        handle: usize,
        /// Vectors in the block.
        count: u32,
        /// Its lowest IRTE.
        base: u32,
    },
    /// A device's AMD remapping table has a different number of entries in use than the
    /// device has backed vectors.
    #[error("vm {vm} dev {handle}: AMD table has {used} entries in use for {vectors} vectors")]
    AmdTableCount {
        /// The model's VM id.
        vm: VmId,
        /// The device handle.
        handle: usize,
        /// Entries in use.
        used: u32,
        /// Vectors backed.
        vectors: usize,
    },
    /// The kernel backs a different number of a device's vectors than the VM granted.
    #[error("vm {vm} dev {handle}: kernel backs {backed} vectors, {granted} granted")]
    BackedCount {
        /// The model's VM id.
        vm: VmId,
        /// The device handle.
        handle: usize,
        /// Vectors the kernel backs.
        backed: usize,
        /// Grants of the device.
        granted: usize,
    },
    /// The kernel knows devices no live VM has.
    #[error("kernel knows {kernel} devices, live VMs have {live}")]
    DeviceCount {
        /// Devices the kernel knows.
        kernel: usize,
        /// Devices of live VMs.
        live: usize,
    },
    /// VT-d IRTEs in use, IRTEs seen behind grants and vectors backed on VT-d differ.
    #[error("{used} VT-d IRTEs in use, {seen} seen, {backed} vectors backed on VT-d")]
    IrteCount {
        /// Entries in use over all units.
        used: u64,
        /// Entries behind grants.
        seen: u64,
        /// Vectors backed through VT-d.
        backed: u64,
    },
    /// Host vectors allocated are not the host vectors grants hold.
    #[error("{allocated} host vectors allocated, {held} held by grants")]
    HostVectorCount {
        /// Allocated in the matrix.
        allocated: u32,
        /// Behind grants.
        held: u64,
    },
}
