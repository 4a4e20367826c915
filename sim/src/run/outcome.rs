//! What a guest side reports back: a typed refusal or a failure, an ALLOC's grants, a
//! QUERY's answer, the events the guest handled. Both guest sides ([`super::Side`]) answer
//! in these types.

use crate::SimError;
use pvirq_proto::{DeviceInfoExt, Event, GrantInfo, GrantMode, MsiMessage, Refusal};

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

impl From<SimError> for StepError {
    fn from(e: SimError) -> Self {
        StepError::Failed(e)
    }
}

/// One granted vector as the guest received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantView {
    /// Table index.
    pub index: u32,
    /// The message to program.
    pub message: MsiMessage,
    /// How the host delivers it.
    pub mode: GrantMode,
    /// Whether it has no target yet.
    pub parked: bool,
    /// The PASID it was made for (reported with `INFO`).
    pub pasid: Option<u32>,
}

impl From<GrantInfo> for GrantView {
    /// From the record the driver validated (a version-1 record reads as remapped, not
    /// parked, no PASID).
    fn from(g: GrantInfo) -> Self {
        GrantView {
            index: g.index(),
            message: g.message(),
            mode: g.mode(),
            parked: g.parked(),
            pasid: g.pasid(),
        }
    }
}

/// What an ALLOC step ended with.
#[derive(Debug, Default)]
pub struct AllocOutcome {
    /// The grants, in grant order.
    pub grants: Vec<GrantView>,
    /// Requests sent.
    pub attempts: u32,
    /// The refusal that made the guest fall back, if it did.
    pub first_refusal: Option<Refusal>,
    /// The refusal the step ended with (no grants then).
    pub refused: Option<Refusal>,
}

/// A QUERY's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryView {
    /// Vectors the device holds.
    pub granted: u32,
    /// Vectors an ALLOC could be granted now.
    pub available: u32,
    /// With `INFO`: identity, message format, share, free runs.
    pub ext: Option<DeviceInfoExt>,
}

/// One event the guest read from its event queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventView {
    /// The event.
    pub event: Event,
    /// The guest reprogrammed (REPROGRAM) or forgot (REVOKE) the vector in its table;
    /// `false` for a vector it did not hold, and for the other event types.
    pub applied: bool,
}
