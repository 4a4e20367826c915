//! Why the device cannot take a feature set or go live.

/// Why [`super::PvirqDevice::activate`] (or [`super::PvirqDevice::check_features`]) refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// The driver did not negotiate `VIRTIO_F_VERSION_1`.
    #[error("VERSION_1 not negotiated")]
    Version1,
    /// The driver accepted bits the device did not offer.
    #[error("features {0:#x} were not offered")]
    NotOffered(u64),
    /// The driver accepted a bit without the bit it needs (spec §2.2, [DEV-23]).
    #[error("feature {0:#x} without the feature it needs")]
    Dependency(u64),
    /// The device is already live (a transport must reset it first).
    #[error("the device is already active")]
    AlreadyActive,
    /// Not one queue per queue the device has.
    #[error("{got} queues given, the device has {expected}")]
    QueueCount {
        /// Queues the device has with the negotiated features.
        expected: usize,
        /// Queues given.
        got: usize,
    },
    /// A queue's size is 0, not a power of two, or above its maximum.
    #[error("queue {0}: a size the device cannot use")]
    QueueSize(usize),
    /// A queue is not ready, or its rings do not lie in guest memory.
    #[error("queue {0} is not valid")]
    QueueInvalid(usize),
}
