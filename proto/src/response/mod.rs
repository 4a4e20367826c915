//! Responses: typed, validated values decoded from and encoded to wire bytes (spec §4, §5).
//!
//! The types live here; [`decode`] turns bytes into them under the negotiated features,
//! [`encode`] writes them back, and [`text`] prints their canonical text (spec §7).

mod decode;
mod encode;
mod grant;
mod query;
mod text;

pub use grant::{Grant, GrantInfo, GrantIter, GrantSlice};
pub use query::{DeviceInfo, DeviceInfoExt, PciIdentity};

use crate::refusal::Refusal;

/// What the device answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// QUERY succeeded.
    Queried {
        /// The device's limits and state.
        info: DeviceInfo,
        /// The VM's remaining quota.
        quota_remaining: u32,
    },
    /// ALLOC granted `grants.len()` vectors (between the request's min and max).
    Allocated {
        /// The granted vectors, in grant order; 24-byte records with
        /// [`crate::feature::INFO`], else 16-byte ones.
        grants: GrantSlice<'a>,
        /// The VM's remaining quota.
        quota_remaining: u32,
    },
    /// FREE released `count` vectors.
    Freed {
        /// Vectors released.
        count: u32,
        /// The VM's remaining quota.
        quota_remaining: u32,
    },
    /// RETARGET moved (or parked) `count` vectors.
    Retargeted {
        /// Vectors moved.
        count: u32,
        /// The VM's remaining quota.
        quota_remaining: u32,
    },
    /// RESET released `count` vectors (possibly 0).
    Reset {
        /// Vectors released.
        count: u32,
        /// The VM's remaining quota.
        quota_remaining: u32,
    },
    /// The request was refused and nothing changed.
    Refused(Refusal),
}

/// A validated response. Grants borrow from the decoded buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// The request's opcode, echoed as received (a refusal of an unknown opcode echoes it).
    pub opcode: u8,
    /// The request's device handle.
    pub device: u32,
    /// The request's tag.
    pub tag: u64,
    /// The answer.
    pub outcome: Outcome<'a>,
}
