//! The interrupt-backend seam: how the core reserves an assigned device's interrupts from
//! the host that really owns them.
//!
//! In a real VMM the host kernel owns IRTEs and host CPU vectors; the VMM asks it through
//! VFIO (`VFIO_DEVICE_SET_IRQS`) and gets success or an errno. [`InterruptBackend`] is that
//! conversation, per assigned device: *enable these indices of this kind, each signalling
//! its trigger*, and *disable them*. The core stages the guest routes first (each route
//! gives the [`Trigger`] its host interrupt must signal: for KVM, the route's irqfd),
//! reserves through the backend, writes the reply, then commits the routes.
//!
//! Backends shipped: [`crate::vfio::VfioBackend`] (the real host, through VFIO) and the
//! modelled host kernel ([`crate::model`]), for the simulator, tests, fuzzing and
//! benchmarks. [`crate::fault::Faulty`] (feature `test-utils`) wraps either and fails on
//! command.

mod unplugged;

pub use unplugged::Unplugged;

use pvirq_proto::{GrantMode, Kind, MessageFormat, MsiMessage, Resource};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// Where a route delivers in the guest: an x2APIC ID and a guest vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GuestDest {
    /// The destination vCPU's APIC ID (32-bit x2APIC ID).
    pub apic_id: u32,
    /// The guest vector (0x20..=0xFF).
    pub vector: u8,
}

/// What a host interrupt signals to reach its guest route.
///
/// For KVM this is the route's irqfd eventfd: the host kernel's handler writes it and KVM
/// injects the route's message. In-memory routes use a recorder instead, so tests and the
/// fuzzer need no file descriptor per grant.
pub trait Signal: Send + Sync + fmt::Debug {
    /// Raises the interrupt once.
    fn raise(&self) -> io::Result<()>;
    /// The eventfd behind the signal, if it is one: what VFIO must be given. It stays
    /// open as long as the signal does.
    fn eventfd(&self) -> Option<RawFd>;
}

impl Signal for EventFd {
    fn raise(&self) -> io::Result<()> {
        self.write(1)
    }

    fn eventfd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
}

/// A shared handle on a route's [`Signal`]: cloning it is an `Arc` clone, no syscall.
pub type Trigger = Arc<dyn Signal>;

/// One vector an [`EnableRequest`] asks the host to back.
#[derive(Clone, Debug)]
pub struct VectorSetup {
    /// Its index in the device's table (MSI: the message number within the block).
    pub index: u32,
    /// What its host interrupt signals.
    pub trigger: Trigger,
    /// Where the guest route delivers it; `None` for a parked grant (no destination yet).
    /// A backend that posts interrupts points the vector's entry at this vCPU (at none
    /// while parked, until [`InterruptBackend::retarget`]); others may ignore it.
    pub dest: Option<GuestDest>,
    /// The message the vector had before (a restored snapshot, a migrated VM): a backend
    /// gives the same one where it can, so that the guest need not reprogram it.
    pub previous: Option<MsiMessage>,
}

/// A request to back vectors of one kind of one assigned device.
#[derive(Clone, Copy, Debug)]
pub struct EnableRequest<'a> {
    /// The interrupt kind.
    pub kind: Kind,
    /// The vectors, in grant order. For MSI they are the block `0..n`.
    pub vectors: &'a [VectorSetup],
    /// The fewest the caller accepts: the backend backs a prefix of `vectors` at least this
    /// long (for MSI, a power of two), or nothing.
    pub min: usize,
    /// The PASID the IMS slots will carry, if any.
    pub pasid: Option<u32>,
    /// Whether the driver negotiated posted grants: only then may the backend post. The
    /// core sizes a request as posted (no host vector, [DEV-25]) when this is set and
    /// [`InterruptBackend::can_post`] says so, parked vectors included; a backend that
    /// would remap some of them after all may refuse for host vectors.
    pub allow_posted: bool,
}

/// One vector the host backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enabled {
    /// The message the guest programs for it.
    pub message: MsiMessage,
    /// How the host delivers it.
    pub mode: GrantMode,
}

/// What the host can tell about its supply for one device and kind right now. Advisory:
/// another VM may take resources before the next [`InterruptBackend::enable`]; `None` where
/// the host cannot tell (VFIO never says how many vectors are left).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostSupply {
    /// Free interrupt-remapping entries the device could use.
    pub irte: Option<u32>,
    /// Largest naturally aligned block of free entries (≤ 32), for MSI blocks.
    pub irte_block: Option<u32>,
    /// Free host CPU vectors.
    pub host_vectors: Option<u32>,
}

/// Why the host did not back a request. Nothing is held after any of them.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// The host ran out of `resource` and could back only `supplied` of the vectors.
    #[error("{resource} exhausted after {supplied} vectors")]
    Exhausted {
        /// The resource that ran out.
        resource: Resource,
        /// How many of the vectors the host could have backed.
        supplied: u32,
    },
    /// Enough remapping entries are free but no naturally aligned block of the size an MSI
    /// block needs: fragmentation, not a shortage.
    #[error("no aligned block of remapping entries (largest {largest})")]
    Fragmented {
        /// The largest aligned block that is free.
        largest: u32,
    },
    /// The host refused with an errno that names no resource.
    #[error("host refused: errno {errno}")]
    Errno {
        /// The errno the host returned.
        errno: i32,
        /// Which resource layer the failure belongs to, for the guest's DEVICE_ERROR.
        resource: Resource,
    },
    /// The device cannot grow its table while vectors are enabled
    /// (`VFIO_IRQ_INFO_NORESIZE`), and growing it would lose interrupts in flight.
    #[error("the {kind} table cannot grow while enabled")]
    NoResize {
        /// The kind.
        kind: Kind,
    },
    /// The backend does not offer this kind at all.
    #[error("{0} is not offered by this backend")]
    Unsupported(Kind),
    /// A route's trigger is not an eventfd, and this backend can signal only eventfds.
    #[error("the trigger of index {index} is not an eventfd")]
    NotAnEventFd {
        /// The vector's index.
        index: u32,
    },
}

/// The host side of one assigned device's interrupts.
///
/// Calls for one device are serialised by the core (it holds the VM's lock), and every
/// enable is all or nothing: on `Err` the backend holds nothing of the request, on `Ok`
/// it backs exactly the prefix it reported.
pub trait InterruptBackend: Send {
    /// The format of the messages this device's grants carry.
    fn format(&self) -> MessageFormat;

    /// Whether this backend can post interrupts (VT-d PI, AMD AVIC).
    fn can_post(&self) -> bool {
        false
    }

    /// The largest multi-MSI block the host's remapping hardware allows (a power of two
    /// ≤ 32; VT-d's ECAP.MHMV bounds it). The device reports `msi_max` no larger.
    fn max_msi_block(&self) -> u32 {
        32
    }

    /// What the host can tell about its supply for `kind` now.
    fn supply(&self, kind: Kind) -> HostSupply;

    /// Backs a prefix of `request.vectors`, at least `request.min` long, pushing one
    /// [`Enabled`] per backed vector onto `out` (which the caller passes empty).
    fn enable(
        &mut self,
        request: &EnableRequest<'_>,
        out: &mut Vec<Enabled>,
    ) -> Result<(), BackendError>;

    /// Stops backing the vectors at `indices` of `kind` and releases everything they held.
    /// Cannot fail from the caller's view: a host that refuses to disable is the backend's
    /// to count and retry, as a kernel's teardown is.
    fn disable(&mut self, kind: Kind, indices: &[u32]);

    /// A backed vector's guest destination changed (or it was parked, `None`). A backend
    /// that posted it points its IRTE at the new vCPU; others have nothing to do.
    fn retarget(&mut self, _kind: Kind, _index: u32, _dest: Option<GuestDest>) {}
}

/// A backend the VMM shares with its own code: the core calls it through the lock, and
/// the VMM keeps a clone to ask it things the trait does not (for VFIO, its MSI-X table
/// emulation calls `VfioBackend::recognise` on each trapped write). Do not call into the
/// VM while holding this lock: the core takes the VM's lock, then this one.
impl<B: InterruptBackend> InterruptBackend for Arc<Mutex<B>> {
    fn format(&self) -> MessageFormat {
        crate::sync::lock(self).format()
    }
    fn can_post(&self) -> bool {
        crate::sync::lock(self).can_post()
    }
    fn max_msi_block(&self) -> u32 {
        crate::sync::lock(self).max_msi_block()
    }
    fn supply(&self, kind: Kind) -> HostSupply {
        crate::sync::lock(self).supply(kind)
    }
    fn enable(
        &mut self,
        request: &EnableRequest<'_>,
        out: &mut Vec<Enabled>,
    ) -> Result<(), BackendError> {
        crate::sync::lock(self).enable(request, out)
    }
    fn disable(&mut self, kind: Kind, indices: &[u32]) {
        crate::sync::lock(self).disable(kind, indices)
    }
    fn retarget(&mut self, kind: Kind, index: u32, dest: Option<GuestDest>) {
        crate::sync::lock(self).retarget(kind, index, dest)
    }
}
