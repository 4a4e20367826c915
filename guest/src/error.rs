//! The one error type of this crate.

use pvirq_proto::{Kind, Opcode, Refusal, Resource};

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

/// Which field of a grant record disagreed with the request (spec §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrantField {
    /// The `PARKED` flag: set on a grant the request did not park, or clear on one it did.
    Parked,
    /// The PASID: another one than the request's, or one the request did not carry.
    Pasid,
}

/// Which QUERY field disagreed with the rest of the reply or with the negotiation
/// (spec §4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueryField {
    /// `kinds` names a kind the driver did not negotiate.
    Kinds,
    /// `msi_max` is not 0 although `kinds` lacks MSI.
    MsiMax,
    /// `msix_table_size` is not 0 although `kinds` lacks MSI-X.
    MsixTableSize,
    /// `ims_slots` is not 0 although `kinds` lacks IMS.
    ImsSlots,
    /// `available` exceeds `max_batch`.
    Available,
    /// `msix_free_run` exceeds `msix_table_size`.
    MsixFreeRun,
    /// `ims_free_run` exceeds `ims_slots`.
    ImsFreeRun,
}

/// Which configuration field changed in a way the device may not change it (spec §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfigField {
    /// The configuration changed although `PVIRQ_F_EVENTS` was not negotiated.
    Generation,
    /// `version`.
    Version,
    /// `max_batch`.
    MaxBatch,
    /// `num_devices` shrank (handles are never reused, so it only grows).
    NumDevices,
    /// `num_vcpus`.
    NumVcpus,
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
    /// `PVIRQ_F_EVENTS` was negotiated but the event queue is unavailable (maximum size 0).
    #[error("event queue unusable: maximum size {0}")]
    EventQueueUnavailable(u16),
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
    /// The request uses a shape whose feature bits were not negotiated (an extension a
    /// version-1 driver may not send, spec §2.2); nothing was sent.
    #[error("the request needs feature bits {needed:#x}, which were not negotiated")]
    NotNegotiated {
        /// The missing bits ([`pvirq_proto::feature`]).
        needed: u64,
    },
    /// The request asks for more vectors than the device's (or driver's) `max_batch`.
    #[error("count {count} exceeds max_batch {max_batch}")]
    BatchTooLarge {
        /// The count asked for.
        count: u16,
        /// The effective `max_batch`.
        max_batch: u16,
    },
    /// The caller's grant buffer cannot hold the request's `max` records in the layout the
    /// channel uses ([`crate::Driver::grant_entries`]).
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
    /// An ALLOC reply grants an index the request did not ask for: not the next of the run
    /// asked for, outside the table QUERY reported (or outside the MSI block), or outside
    /// the one run an `ANY_CONTIGUOUS` grant must form.
    #[error("grant {position} is at index {index}, which the request did not ask for")]
    GrantIndex {
        /// Position of the grant in the reply.
        position: usize,
        /// The index granted.
        index: u32,
    },
    /// An ALLOC reply grants one index twice.
    #[error("grant {position} repeats index {index}")]
    DuplicateGrant {
        /// Position of the second grant of the index.
        position: usize,
        /// The index granted twice.
        index: u32,
    },
    /// An ALLOC reply's grant record disagrees with the request (parked or not, PASID).
    #[error("grant {position}: {field:?} disagrees with the request")]
    GrantMismatch {
        /// Position of the grant in the reply.
        position: usize,
        /// The field that disagrees.
        field: GrantField,
    },
    /// A refusal that cannot answer the request it came back for (spec §5.1, §5.4): a
    /// status the operation never gets, or an index, entry or count the request did not
    /// name.
    #[error("{opcode} cannot be refused with {refusal}")]
    ImplausibleRefusal {
        /// The request's operation.
        opcode: Opcode,
        /// The refusal received.
        refusal: Refusal,
    },
    /// A QUERY reply contradicts itself or the negotiation.
    #[error("QUERY reply: {0:?} is inconsistent")]
    QueryMismatch(QueryField),
    /// The device set DEVICE_NEEDS_RESET: it stopped using its queues (spec §8).
    #[error("the device needs a reset")]
    DeviceNeedsReset,
    /// The configuration changed in a way spec §2.4 does not allow.
    #[error("the device configuration changed: {0:?}")]
    ConfigChanged(ConfigField),
    /// An event buffer came back with a used length other than 0 or one record.
    #[error("event buffer returned with used length {0}, not one 32-byte record")]
    EventLength(u32),
    /// The event queue's used ring names a buffer the device does not hold.
    #[error("event queue returned buffer {0}, which the device does not hold")]
    UnknownEventBuffer(u32),
    /// An event's sequence number is not one above the last (an event lost, repeated or
    /// reordered, spec §12).
    #[error("event sequence {got}, expected {expected}")]
    EventSequence {
        /// One above the last sequence handled.
        expected: u32,
        /// The sequence received.
        got: u32,
    },
    /// An event names a device handle at or above `num_devices`, even after the
    /// configuration was re-read.
    #[error("event names device {device}, but num_devices is {num_devices}")]
    EventDevice {
        /// The handle named.
        device: u32,
        /// `num_devices` from the configuration.
        num_devices: u32,
    },
    /// An event names a kind, or a delivery mode, the driver did not negotiate (the
    /// feature bits given).
    #[error("event needs feature bits {0:#x}, which were not negotiated")]
    EventNotNegotiated(u64),
    /// A REPROGRAM or REVOKE names an index outside the table QUERY reported.
    #[error("event names {kind} index {index} of device {device}, outside its table")]
    EventIndex {
        /// The device handle.
        device: u32,
        /// The grant's kind.
        kind: Kind,
        /// The index named.
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
                | Error::DuplicateGrant { .. }
                | Error::GrantMismatch { .. }
                | Error::ImplausibleRefusal { .. }
                | Error::QueryMismatch(_)
                | Error::DeviceNeedsReset
                | Error::ConfigChanged(_)
                | Error::EventLength(_)
                | Error::UnknownEventBuffer(_)
                | Error::EventSequence { .. }
                | Error::EventDevice { .. }
                | Error::EventNotNegotiated(_)
                | Error::EventIndex { .. }
        )
    }
}
