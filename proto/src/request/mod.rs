//! Requests: typed, validated values decoded from and encoded to wire bytes (spec §4).
//!
//! The types live here; [`decode`] turns bytes into them under the negotiated features,
//! [`encode`] writes them back, and [`text`] prints their canonical text (spec §7).

mod alloc;
mod decode;
mod encode;
mod indices;
mod target;
mod text;

pub use alloc::{Alloc, IndexSpec, Targeting, spread_position};
pub use indices::{IndexList, IndexRange, Indices};
pub use target::{MIN_GUEST_VECTOR, Target};

use crate::types::Opcode;

/// Largest PASID (20 bits).
pub const MAX_PASID: u32 = (1 << 20) - 1;
/// Largest multi-message MSI block.
pub const MAX_MSI_VECTORS: u16 = 32;

/// Where a RETARGET moves its vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetargetTo<'a> {
    /// One new destination per named index, in order (activating parked grants).
    Targets(&'a [Target]),
    /// *(extension, bit 8; flag `PARK`)* No targets: the named grants are parked.
    Park,
}

/// A RETARGET request's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retarget<'a> {
    /// The granted vectors to move.
    pub indices: Indices<'a>,
    /// Where they go.
    pub to: RetargetTo<'a>,
}

impl<'a> Retarget<'a> {
    /// Version 1's RETARGET: the run `range`, one target per index in order.
    pub fn run(range: IndexRange, targets: &'a [Target]) -> Self {
        Retarget {
            indices: Indices::Run(range),
            to: RetargetTo::Targets(targets),
        }
    }

    /// The new destinations, in the order of the indices (empty when parking).
    pub fn targets(&self) -> &'a [Target] {
        match self.to {
            RetargetTo::Targets(targets) => targets,
            RetargetTo::Park => &[],
        }
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation<'a> {
    /// Report the device's limits and the VM's quota.
    Query,
    /// Reserve and grant vectors.
    Alloc(Alloc<'a>),
    /// Release granted vectors.
    Free(Indices<'a>),
    /// Move granted vectors to new destinations, or park them.
    Retarget(Retarget<'a>),
    /// Release every vector of the device.
    Reset,
}

impl Operation<'_> {
    /// The opcode that carries this operation.
    pub const fn opcode(&self) -> Opcode {
        match self {
            Operation::Query => Opcode::Query,
            Operation::Alloc(_) => Opcode::Alloc,
            Operation::Free(_) => Opcode::Free,
            Operation::Retarget(_) => Opcode::Retarget,
            Operation::Reset => Opcode::Reset,
        }
    }
}

/// A validated request. Targets and index lists borrow from the decoded buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Device handle.
    pub device: u32,
    /// The driver's tag, echoed in the response.
    pub tag: u64,
    /// What is asked.
    pub op: Operation<'a>,
}
