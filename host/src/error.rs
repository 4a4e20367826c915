//! The errors of setting the host side up and of writing replies. Errors of the two seams
//! live with them: [`crate::backend::BackendError`], [`crate::routes::RouteError`].

/// Why a host, a VM or a device could not be set up. Never caused by guest input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// A configuration value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// A device's IOMMU unit does not exist on the modelled host.
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
    /// The VM has a different number of devices and backends.
    #[error("{devices} devices but {backends} interrupt backends")]
    BackendCount {
        /// Devices in the configuration.
        devices: usize,
        /// Backends given.
        backends: usize,
    },
    /// The virtio device cannot be activated in its current state.
    #[error("device activation failed: {0}")]
    Activation(&'static str),
    /// An eventfd could not be created or used.
    #[error("eventfd: errno {0}")]
    EventFd(i32),
}

impl HostError {
    /// The error for a failed eventfd call.
    pub fn eventfd(err: &std::io::Error) -> Self {
        HostError::EventFd(err.raw_os_error().unwrap_or(0))
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
    /// The encoder refused the reply (a bug: every reply the core builds encodes).
    #[error("the reply could not be encoded")]
    Encode,
    /// A test sink was told to fail.
    #[error("injected write failure")]
    Injected,
}
