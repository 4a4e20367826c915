//! What a step's request came to: a typed refusal or a failure, and an ALLOC's grants.

use crate::SimError;
use pvirq_proto::{MsiMessage, Refusal};

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

/// What an ALLOC step ended with.
#[derive(Debug, Default)]
pub struct AllocOutcome {
    /// Granted (index, message), in target order.
    pub grants: Vec<(u32, MsiMessage)>,
    /// Requests sent.
    pub attempts: u32,
    /// The refusal that made the guest fall back, if it did.
    pub first_refusal: Option<Refusal>,
    /// The refusal the step ended with (no grants then).
    pub refused: Option<Refusal>,
}
