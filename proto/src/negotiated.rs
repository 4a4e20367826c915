//! What a decoder needs to know about the channel: the device's `max_batch` and the feature
//! bits the driver and device agreed on.

use crate::device::MAX_BATCH_LIMIT;
use crate::feature;

/// The negotiated parameters a request is decoded against (spec §5.3: steps 2–4 depend only
/// on the request bytes, `max_batch` and the negotiated features).
///
/// `features` should be a set a device can accept ([`feature::missing_dependency`] is
/// `None`); the decoder honours each bit as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Negotiated {
    /// The device's advertised `max_batch`; a value above [`MAX_BATCH_LIMIT`] counts as that
    /// limit, which no device may exceed.
    pub max_batch: u16,
    /// The negotiated feature bits ([`feature`]).
    pub features: u64,
}

impl Negotiated {
    /// A channel with `max_batch` and `features`.
    pub const fn new(max_batch: u16, features: u64) -> Self {
        Negotiated {
            max_batch,
            features,
        }
    }

    /// A version-1 channel: every version-1 bit ([`feature::V1`]), no extension.
    pub const fn v1(max_batch: u16) -> Self {
        Self::new(max_batch, feature::V1)
    }

    /// Every feature this crate knows ([`feature::ALL`]) and the largest `max_batch`: the
    /// most permissive channel, against which [`crate::Request::encode`] checks.
    pub const fn most_permissive() -> Self {
        Self::new(MAX_BATCH_LIMIT, feature::ALL)
    }

    /// Whether every bit of `bits` was negotiated.
    pub const fn has(self, bits: u64) -> bool {
        self.features & bits == bits
    }

    /// `max_batch` capped at [`MAX_BATCH_LIMIT`] (spec §5.3).
    pub const fn batch_limit(self) -> u16 {
        if self.max_batch > MAX_BATCH_LIMIT {
            MAX_BATCH_LIMIT
        } else {
            self.max_batch
        }
    }
}
