//! The simulator's error type.

/// Why the simulator could not set up or run something.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The host refused a configuration or operation.
    #[error("host: {0}")]
    Host(#[from] pvirq_host::HostError),
    /// The guest driver failed (including a typed refusal from the device).
    #[error("guest driver: {0}")]
    Guest(#[from] pvirq_guest::Error),
    /// The VMM running a guest in KVM failed.
    #[error("VMM: {0}")]
    Vmm(Box<crate::vmm::VmmError>),
    /// The guest image reported a driver error that is no refusal.
    #[error("guest image: driver error {0:?}")]
    GuestDriver(pvirq_guest_image_abi::mailbox::DriverError),
    /// The guest image's report made no sense.
    #[error("guest image: {0}")]
    GuestReport(&'static str),
    /// A device state could not be restored (nothing is held on the destination).
    #[error("restore: {0}")]
    Restore(#[from] pvirq_host::device::PersistError),
    /// Guest memory could not be created.
    #[error("guest memory: {0}")]
    GuestMemory(String),
    /// A pass-through device's table could not be read or written.
    #[error("pass-through device: {0}")]
    Passthrough(#[from] crate::passthrough::PassthroughError),
    /// The channel's guest is between two hosts (a migration under way): no device answers.
    #[error("the channel has no host device (its guest is detached)")]
    Detached,
}
