//! The one error type of the KVM routing layer, and how it reaches the core: as the
//! hypervisor-neutral [`RouteError::Hypervisor`], so that the route seam knows nothing of
//! KVM.

use super::msi::Gsi;
use crate::routes::RouteError;
use std::io;

/// What went wrong while staging, committing or releasing KVM GSI routes.
#[derive(Debug, thiserror::Error)]
pub enum KvmRouteError {
    /// The configured GSI range is empty, reaches into the irqchip's GSIs 0–23, or ends past
    /// KVM's last GSI (4095).
    #[error("invalid GSI range {start}..{end}: it must be non-empty and inside 24..4096")]
    InvalidGsiRange {
        /// First GSI of the rejected range.
        start: u32,
        /// One past the last GSI of the rejected range.
        end: u32,
    },
    /// Fewer routes are left than the request needs; nothing was staged for it.
    #[error("KVM routes exhausted: {requested} requested, {available} available")]
    Exhausted {
        /// How many routes the request asked for.
        requested: usize,
        /// How many routes could still be added (free GSIs, capped by KVM's entry limit).
        available: usize,
    },
    /// The GSI is not one of this table's.
    #[error("{0} is not one of this table's GSIs")]
    UnknownGsi(Gsi),
    /// An eventfd for an irqfd could not be created.
    #[error("eventfd: errno {errno}")]
    EventFd {
        /// The errno.
        errno: i32,
    },
    /// `KVM_IRQFD` refused to attach the eventfd to the GSI.
    #[error("KVM_IRQFD assign for {gsi} failed: {source}")]
    IrqfdRegister {
        /// GSI the eventfd was meant for.
        gsi: Gsi,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// The routing list is larger than `KVM_SET_GSI_ROUTING` accepts; the batch was rolled back.
    #[error("{entries} routing entries exceed KVM's limit; batch rolled back")]
    TooManyEntries {
        /// Number of entries that would have been committed.
        entries: usize,
    },
    /// `KVM_SET_GSI_ROUTING` failed; the batch was rolled back and KVM kept its previous table.
    #[error("KVM_SET_GSI_ROUTING with {entries} entries failed; batch rolled back: {source}")]
    SetGsiRouting {
        /// Number of entries in the rejected table.
        entries: usize,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
}

impl KvmRouteError {
    /// The errno KVM (or the eventfd call) answered, if the error came from a syscall.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KvmRouteError::IrqfdRegister { source, .. }
            | KvmRouteError::SetGsiRouting { source, .. } => Some(source.errno()),
            KvmRouteError::EventFd { errno } => Some(*errno),
            KvmRouteError::InvalidGsiRange { .. }
            | KvmRouteError::Exhausted { .. }
            | KvmRouteError::UnknownGsi(_)
            | KvmRouteError::TooManyEntries { .. } => None,
        }
    }
}

impl From<KvmRouteError> for RouteError {
    /// The route seam's view: the errno's kind where KVM gave one, with the KVM error
    /// kept inside for whoever wants the detail.
    fn from(e: KvmRouteError) -> Self {
        let kind = e.errno().map_or(io::ErrorKind::Other, |errno| {
            io::Error::from_raw_os_error(errno).kind()
        });
        RouteError::Hypervisor(io::Error::new(kind, e))
    }
}
