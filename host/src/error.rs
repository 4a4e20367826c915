//! The crate's error types: one for building hosts and VMs, one for the resource-layer
//! traits (what a VMM's own layer reports back).

use pvirq_proto::Resource;

/// Why a host, a VM or a device could not be set up. Never caused by guest input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// A configuration value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// A device's IOMMU unit does not exist on this host.
    #[error("IOMMU unit {unit} does not exist (the host has {units})")]
    NoSuchUnit {
        /// The unit asked for.
        unit: u16,
        /// Units the host has.
        units: u16,
    },
    /// Two devices (possibly of different VMs) claim the same requester ID.
    #[error("requester ID {0:#06x} is already assigned to a device")]
    SourceIdInUse(u16),
    /// The virtio device cannot be activated in its current state.
    #[error("device activation failed: {0}")]
    Activation(&'static str),
    /// An eventfd could not be created or used.
    #[error("eventfd: {0}")]
    EventFd(String),
}

/// Why a resource layer refused an operation. The transaction turns it into the guest's
/// `NO_SPACE` (for [`LayerError::Exhausted`]) or `DEVICE_ERROR` (for
/// [`LayerError::Failed`]) naming the layer's [`Resource`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LayerError {
    /// The layer has no room left for this reservation.
    #[error("{0} exhausted")]
    Exhausted(Resource),
    /// The layer failed internally (an ioctl error, an injected fault, ...).
    #[error("{resource} failed: {reason}")]
    Failed {
        /// The layer that failed.
        resource: Resource,
        /// What went wrong, for logs.
        reason: String,
    },
    /// The operation named an entry the layer does not hold (a bug in the caller).
    #[error("{0}: no such entry")]
    NoEntry(Resource),
}

impl LayerError {
    /// The layer's resource.
    pub fn resource(&self) -> Resource {
        match self {
            LayerError::Exhausted(r) | LayerError::NoEntry(r) => *r,
            LayerError::Failed { resource, .. } => *resource,
        }
    }
}

/// Why a reply could not be written into the guest's buffers.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// A writable descriptor does not lie in guest memory.
    #[error("guest memory at {0:#x} is not writable")]
    GuestMemory(u64),
    /// The reply is longer than the writable buffers.
    #[error("reply of {needed} bytes does not fit {capacity} writable bytes")]
    TooLong {
        /// Reply length.
        needed: usize,
        /// Writable bytes.
        capacity: usize,
    },
    /// A test sink was told to fail.
    #[error("injected write failure")]
    Injected,
}
