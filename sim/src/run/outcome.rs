//! What a step's request came to: a typed refusal or a failure, and an ALLOC's grants.

use crate::SimError;
use pvirq_proto::{DeviceInfoExt, Event, GrantMode, MsiMessage, Refusal};

/// Why a step's request did not succeed.
#[derive(Debug)]
pub enum StepError {
    /// The device refused, with a typed reason (part of the report).
    Refused(Refusal),
    /// The guest or its driver failed otherwise (ends the run).
    Failed(SimError),
}

impl From<pvirq_guest::Error> for StepError {
    fn from(e: pvirq_guest::Error) -> Self {
        match e.refusal() {
            Some(r) => StepError::Refused(r),
            None => StepError::Failed(e.into()),
        }
    }
}

/// One granted vector as the guest was told it (from its grant record; a version-1 record
/// reads as remapped, active, without a PASID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantView {
    /// The table index.
    pub index: u32,
    /// The message programmed.
    pub message: MsiMessage,
    /// How the host delivers it.
    pub mode: GrantMode,
    /// Granted without a target.
    pub parked: bool,
    /// The PASID it was made for.
    pub pasid: Option<u32>,
}

/// What a QUERY step saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryView {
    /// Vectors the device holds.
    pub granted: u32,
    /// Vectors an ALLOC could get now.
    pub available: u32,
    /// With `INFO`: identity, message format, share, free runs, parked drops.
    pub ext: Option<DeviceInfoExt>,
}

/// One event the guest handled, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventView {
    /// The event as the device wrote it.
    pub event: Event,
    /// The guest reprogrammed (REPROGRAM) or forgot (REVOKE) the vector in its table.
    pub applied: bool,
}

/// What an ALLOC step ended with.
#[derive(Debug, Default)]
pub struct AllocOutcome {
    /// Granted vectors, in grant order.
    pub grants: Vec<GrantView>,
    /// Requests sent.
    pub attempts: u32,
    /// The refusal that made the guest fall back, if it did.
    pub first_refusal: Option<Refusal>,
    /// The refusal the step ended with (no grants then).
    pub refused: Option<Refusal>,
}
