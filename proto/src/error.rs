//! The one error type of this crate: why bytes could not be decoded or a value encoded.

use crate::refusal::Refusal;
use crate::types::Field;

/// Why a message could not be decoded or encoded.
///
/// Request-decoding errors map to the [`Refusal`] a device must answer with
/// ([`Error::refusal`]); response-decoding errors mean the device misbehaved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The message is shorter than its fixed part.
    #[error("message is {got} bytes, shorter than the {needed} bytes its fixed part needs")]
    TooShort {
        /// Bytes the fixed part needs.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The message length disagrees with what its fields say it holds.
    #[error("message is {got} bytes but its fields describe exactly {expected}")]
    LengthMismatch {
        /// Length implied by the fields.
        expected: usize,
        /// Length present.
        got: usize,
    },
    /// The opcode is not one this version defines.
    #[error("opcode {0} is not defined")]
    UnknownOpcode(u8),
    /// The kind is not one this version defines.
    #[error("interrupt kind {0} is not defined")]
    UnknownKind(u8),
    /// A reserved field is not zero.
    #[error("reserved field `{0}` is not zero")]
    ReservedNotZero(Field),
    /// `flags` has a bit that is undefined, or belongs to a feature that was not negotiated
    /// (an un-negotiated flag is undefined, spec §2.2).
    #[error("flags {0:#04x} has undefined or un-negotiated bits")]
    UndefinedFlags(u8),
    /// `flags` combines bits that are not allowed together (`PARKED` with `SPREAD`,
    /// `ANY_CONTIGUOUS` without `ANY_INDEX`).
    #[error("flags {0:#04x} combine bits that are not allowed together")]
    FlagConflict(u8),
    /// ALLOC `num_targets` is not 1..=`max_batch` with `SPREAD`, or not 0 without it.
    #[error("num_targets {0} does not fit the flags and max_batch")]
    InvalidNumTargets(u16),
    /// An index-list entry is not greater than the one before it.
    #[error("index-list entry {entry} ({index}) is not greater than the one before it")]
    IndexListOrder {
        /// The entry's position in the list.
        entry: u32,
        /// The entry's value.
        index: u32,
    },
    /// A count is zero, or `min_count` exceeds `max_count`.
    #[error("count {min}..{max} is empty or inverted")]
    InvalidCount {
        /// `min_count` (or `count`).
        min: u16,
        /// `max_count` (or `count`).
        max: u16,
    },
    /// MSI counts must be powers of two, at most 32.
    #[error("MSI count {min}..{max} is not a power-of-two range within 1..32")]
    MsiCount {
        /// `min_count`.
        min: u16,
        /// `max_count`.
        max: u16,
    },
    /// The count exceeds the device's `max_batch`.
    #[error("count {count} exceeds max_batch {max_batch}")]
    BatchTooLarge {
        /// The count asked for.
        count: u16,
        /// The device's `max_batch`.
        max_batch: u16,
    },
    /// `first_index` is not zero although ANY_INDEX was set, or an MSI request names an index.
    #[error("first_index {0} must be 0 here")]
    IndexNotZero(u32),
    /// `first_index + count` does not fit 32 bits.
    #[error("index range starting at {first} with {count} entries overflows")]
    IndexOverflow {
        /// `first_index`.
        first: u32,
        /// `count`.
        count: u16,
    },
    /// A PASID wider than 20 bits, or a PASID on a kind other than IMS.
    #[error("PASID {0:#x} is not a 20-bit PASID on an IMS request")]
    InvalidPasid(u32),
    /// A target's vector is below 0x20 (x86 reserves 0–31 for exceptions).
    #[error("target {entry}: vector {vector:#04x} is below 0x20")]
    VectorOutOfRange {
        /// The target's position.
        entry: u32,
        /// The vector given.
        vector: u8,
    },
    /// A target's reserved bytes are not zero.
    #[error("target {entry}: reserved bytes are not zero")]
    TargetReserved {
        /// The target's position.
        entry: u32,
    },
    /// A response's status is not one this version defines, or its `detail`/`info` do not
    /// fit the status.
    #[error("status {status} with detail {detail} and info {info} is not a valid answer")]
    InvalidStatus {
        /// `status`.
        status: u8,
        /// `detail`.
        detail: u8,
        /// `info`.
        info: u32,
    },
    /// A response's `count` disagrees with its opcode or body.
    #[error("response count {0} does not fit its opcode")]
    InvalidResponseCount(u32),
    /// A value belongs to a feature that was not negotiated: a posted or parked grant, or an
    /// extended layout, in a response to a driver without the feature bit (the bit given).
    #[error("the value needs feature bit {0:#x}, which was not negotiated")]
    NotNegotiated(u64),
    /// A QUERY reply's message format is not one the protocol defines.
    #[error("message format {0} is not defined")]
    UnknownMessageFormat(u8),
    /// A grant's or event's delivery mode is not one the protocol defines.
    #[error("delivery mode {0} is not defined")]
    UnknownGrantMode(u8),
    /// An event's type is not one the protocol defines.
    #[error("event type {0} is not defined")]
    UnknownEventType(u8),
    /// A REVOKE event's reason is not a resource code.
    #[error("resource code {0} is not defined")]
    UnknownResource(u8),
    /// An event field that its type does not use, or the reserved byte, is not zero.
    #[error("event field at offset {offset} must be 0 for this event type")]
    EventFieldNotZero {
        /// Offset of the field in the 32-byte record.
        offset: u8,
    },
    /// An event names device handle 0xFFFF_FFFF, which is never assigned (spec §2.4): a
    /// LIMITS event uses it for the whole VM, no other event may.
    #[error("device handle {0:#x} is never assigned: only a LIMITS event names it, for the VM")]
    AmbiguousDevice(u32),
    /// A response's outcome does not belong to its opcode.
    #[error("outcome does not belong to opcode {0}")]
    OutcomeMismatch(u8),
    /// A QUERY reply's `kinds` bitmap has undefined bits.
    #[error("kinds bitmap {0:#x} has undefined bits")]
    UndefinedKinds(u32),
    /// A QUERY reply's `msi_max` is not 0 or a power of two up to 32.
    #[error("msi_max {0} is not 0 or a power of two up to 32")]
    InvalidMsiMax(u16),
    /// The output buffer is too small for the encoded message.
    #[error("buffer of {got} bytes cannot hold the {needed}-byte message")]
    BufferTooSmall {
        /// Bytes the message needs.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// The number of targets or grants disagrees with the count it must match.
    #[error("{got} entries given where the count says {expected}")]
    EntryCountMismatch {
        /// Entries the count implies.
        expected: usize,
        /// Entries given.
        got: usize,
    },
    /// An address outside the MSI window 0xFEEx_xxxx.
    #[error("address {0:#x} is not an MSI address")]
    NotMsiAddress(u64),
    /// A remappable message where a compatibility one was expected, or the reverse.
    #[error("message format is {}, expected the other", if *.remappable { "remappable" } else { "compatibility" })]
    WrongMsiFormat {
        /// Whether the message found was remappable.
        remappable: bool,
    },
    /// Bits that must be zero in an MSI address or data are set.
    #[error("MSI message has reserved bits set")]
    MsiReservedBits,
    /// A delivery mode the architecture reserves.
    #[error("delivery mode {0} is reserved")]
    ReservedDeliveryMode(u8),
}

impl Error {
    /// The refusal a device answers when a request fails to decode with this error.
    ///
    /// Errors that only arise when decoding responses or MSI messages, or when encoding,
    /// map to a generic BAD_REQUEST on `length`.
    pub fn refusal(&self) -> Refusal {
        let bad = |field| Refusal::BadRequest { field, entry: 0 };
        match *self {
            Error::TooShort { .. } | Error::LengthMismatch { .. } => bad(Field::Length),
            Error::UnknownOpcode(_) => Refusal::Unsupported {
                field: Field::Opcode,
            },
            Error::UnknownKind(_) => Refusal::Unsupported { field: Field::Kind },
            Error::ReservedNotZero(field) => bad(field),
            Error::UndefinedFlags(_) | Error::FlagConflict(_) => bad(Field::Flags),
            Error::InvalidNumTargets(_) => bad(Field::NumTargets),
            Error::IndexListOrder { entry, .. } => Refusal::BadRequest {
                field: Field::IndexList,
                entry,
            },
            Error::InvalidCount { .. } | Error::MsiCount { .. } => bad(Field::Count),
            Error::BatchTooLarge { max_batch, .. } => Refusal::BatchTooLarge {
                max_batch: max_batch as u32,
            },
            Error::IndexNotZero(_) => bad(Field::FirstIndex),
            Error::IndexOverflow { first, .. } => Refusal::IndexOutOfRange { index: first },
            Error::InvalidPasid(_) => bad(Field::Pasid),
            Error::VectorOutOfRange { entry, .. } => Refusal::InvalidTarget {
                field: Field::TargetVector,
                entry,
            },
            Error::TargetReserved { entry } => Refusal::BadRequest {
                field: Field::TargetReserved,
                entry,
            },
            _ => bad(Field::Length),
        }
    }
}
