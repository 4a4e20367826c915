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
    /// Guest memory could not be created.
    #[error("guest memory: {0}")]
    GuestMemory(String),
}
