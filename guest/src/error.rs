//! The one error type of this crate.

use pvirq_proto::{Opcode, Refusal, Resource};

/// Which echoed response field disagreed with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EchoField {
    /// The opcode.
    Opcode,
    /// The device handle.
    Device,
    /// The tag.
    Tag,
}

/// Everything that can go wrong talking to a pvirq device.
///
/// Three families:
/// - [`Error::Refused`]: the device answered and said no; nothing changed. The
///   [`Refusal`] names the reason, and for NO_SPACE the resource and how many vectors are
///   still available ([`Error::fallback_count`]).
/// - Initialisation and usage errors: the device cannot be driven by this driver, or the
///   caller asked for something the driver cannot carry.
/// - Device faults: the device broke the protocol (a lying or broken device). The request
///   concerned, if any, is over and its slot is free again; nothing is known about what
///   the device did with it, so a careful caller resets the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The device refused the request; nothing changed.
    #[error("{opcode} refused: {refusal}")]
    Refused {
        /// The refused operation.
        opcode: Opcode,
        /// Why, with its details.
        refusal: Refusal,
    },

    // --- initialisation ---
    /// The virtio-mmio magic value is wrong: no virtio device at these registers.
    #[error("no virtio-mmio device: magic value {0:#010x}")]
    BadMagic(u32),
    /// The virtio-mmio register layout version is not 2 (legacy layouts are not supported).
    #[error("virtio-mmio version {0} is not supported (need 2)")]
    UnsupportedMmioVersion(u32),
    /// The transport holds no device (virtio device ID 0).
    #[error("the transport holds no device")]
    NoDevice,
    /// The device does not offer `VIRTIO_F_VERSION_1`.
    #[error("the device does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NotModern(u64),
    /// The device did not accept the negotiated features (FEATURES_OK did not stick).
    #[error("the device rejected features {0:#x}")]
    FeaturesRejected(u64),
    /// The device speaks a protocol version this driver does not know.
    #[error("protocol version {0} is not supported (need {need})", need = pvirq_proto::PROTOCOL_VERSION)]
    UnsupportedVersion(u16),
    /// The device configuration is unusable (for example `max_batch` 0 or above 4096).
    #[error("device configuration is invalid: max_batch {max_batch}")]
    BadConfig {
        /// The `max_batch` read.
        max_batch: u16,
    },
    /// The request queue is unavailable or too small (fewer than 2 entries).
    #[error("request queue unusable: maximum size {0}")]
    QueueUnavailable(u16),
    /// The request queue was already live before the driver set it up.
    #[error("request queue is already in use")]
    QueueInUse,
    /// The device did not complete a reset.
    #[error("device reset did not complete")]
    ResetTimeout,
    /// The HAL could not provide DMA memory.
    #[error("DMA allocation of {pages} pages failed")]
    DmaAlloc {
        /// Pages asked for.
        pages: usize,
    },

    // --- usage ---
    /// Every in-flight slot is busy: poll for completions, then submit again.
    #[error("all request slots are in flight")]
    QueueFull,
    /// The request could not be encoded (invalid counts, target count, PASID, ...).
    #[error("request cannot be encoded: {0}")]
    Encode(pvirq_proto::Error),
    /// The request asks for more vectors than the device's (or driver's) `max_batch`.
    #[error("count {count} exceeds max_batch {max_batch}")]
    BatchTooLarge {
        /// The count asked for.
        count: u16,
        /// The effective `max_batch`.
        max_batch: u16,
    },
    /// The caller's grant buffer is shorter than the request's `max`.
    #[error("grant buffer holds {got} entries, the request may be granted {needed}")]
    GrantBufferTooSmall {
        /// Entries needed (`max`).
        needed: usize,
        /// Entries provided.
        got: usize,
    },
    /// The buffer given to [`crate::Driver::take`] (or `wait`, `call`) cannot hold the
    /// largest reply the request may get; the completion stays, to be taken with a larger
    /// one ([`crate::Driver::max_reply_len`] fits every request).
    #[error("reply buffer holds {got} bytes, the request's reply may take {needed}")]
    ReplyBufferTooSmall {
        /// Bytes the request's largest reply takes.
        needed: usize,
        /// Bytes provided.
        got: usize,
    },
    /// The token names no request in flight or completed (already taken, or forged).
    #[error("token does not name a request of this driver")]
    StaleToken,
    /// The request has not completed yet.
    #[error("request has not completed")]
    Pending,
    /// A blocking wait ran out of spins; the request is still in flight and can be waited on.
    #[error("request did not complete within the spin limit")]
    Timeout,

    // --- device faults ---
    /// The device returned a chain with used length 0: it could not reply and nothing
    /// changed (spec §4.1). Not a fault: the request may simply be submitted again.
    #[error("the device could not reply (used length 0)")]
    NoReply,
    /// The used length exceeds the writable buffer the request offered.
    #[error("used length {len} exceeds the {capacity}-byte response buffer")]
    UsedLenTooLarge {
        /// The used length reported.
        len: u32,
        /// The writable bytes offered.
        capacity: u32,
    },
    /// The used ring names a descriptor that is not the head of a request in flight.
    #[error("used ring names descriptor {0}, which heads no request in flight")]
    UnknownId(u32),
    /// The device's used index ran ahead of the requests made available.
    #[error("used index ran {ahead} entries ahead of the {outstanding} requests outstanding")]
    UsedIndexAhead {
        /// Entries the used index claims.
        ahead: u16,
        /// Requests outstanding.
        outstanding: u16,
    },
    /// The response bytes do not decode.
    #[error("malformed response: {0}")]
    Malformed(pvirq_proto::Error),
    /// The response echoes another request's opcode, device or tag.
    #[error("response {field:?} is {got:#x}, the request's is {expected:#x}")]
    EchoMismatch {
        /// The field that disagrees.
        field: EchoField,
        /// The request's value.
        expected: u64,
        /// The response's value.
        got: u64,
    },
    /// An ALLOC reply grants a count outside the request's `min..=max` (or not a power of
    /// two for MSI).
    #[error("granted {count} vectors, request allowed {min}..={max}")]
    GrantCount {
        /// Vectors granted.
        count: usize,
        /// The request's `min`.
        min: u16,
        /// The request's `max`.
        max: u16,
    },
    /// An ALLOC reply grants an index the request did not ask for.
    #[error("grant {position} is at index {index}, which the request did not ask for")]
    GrantIndex {
        /// Position of the grant in the reply.
        position: usize,
        /// The index granted.
        index: u32,
    },
    /// A FREE or RETARGET reply reports another count than the run's length.
    #[error("reply count {got} differs from the run length {expected}")]
    CountMismatch {
        /// The run length.
        expected: u32,
        /// The count reported.
        got: u32,
    },
}

impl Error {
    /// The device's refusal, if this error is one.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Error::Refused { refusal, .. } => Some(*refusal),
            _ => None,
        }
    }

    /// The resource that ran out, for a NO_SPACE refusal.
    pub fn exhausted(&self) -> Option<Resource> {
        match self.refusal()? {
            Refusal::NoSpace { resource, .. } => Some(resource),
            _ => None,
        }
    }

    /// The Linux-style fallback: after a NO_SPACE refusal, the largest count the device
    /// said it could grant now, if at least one. Retrying with `min` lowered to this count
    /// (and `max` at least as large) is likely to succeed; with `None` the caller falls
    /// back to sharing vectors it already holds.
    ///
    /// The count is advisory: another VM may take host resources in between.
    pub fn fallback_count(&self) -> Option<u16> {
        match self.refusal()? {
            Refusal::NoSpace { available, .. } if available > 0 => {
                Some(u16::try_from(available).unwrap_or(u16::MAX))
            }
            _ => None,
        }
    }

    /// Whether the device broke the protocol (as opposed to refusing, or the caller
    /// misusing the driver). After a device fault a careful caller resets the device.
    pub fn is_device_fault(&self) -> bool {
        matches!(
            self,
            Error::UsedLenTooLarge { .. }
                | Error::UnknownId(_)
                | Error::UsedIndexAhead { .. }
                | Error::Malformed(_)
                | Error::EchoMismatch { .. }
                | Error::GrantCount { .. }
                | Error::GrantIndex { .. }
                | Error::CountMismatch { .. }
        )
    }
}
