//! What one step produced, before the runner adds the columns every step has (quota,
//! host occupancy, expectations): the request and answer in short, the refusal, and what
//! the extensions add (grants, QUERY's identity, events, a migration's fates).

use super::RunError;
use super::outcome::StepError;
use crate::SimError;
use crate::report::{
    EventRecord, FireCounts, GrantRecord, MigrationRecord, QueryRecord, RefusalRecord,
};
use crate::scenario::Dest;
use pvirq_proto::{Refusal, Status};

/// What one step produced.
pub(super) struct Answer {
    pub request: String,
    pub status: Status,
    pub answer: String,
    pub refusal: Option<Refusal>,
    pub fallback: bool,
    pub attempts: u32,
    pub count: Option<u32>,
    pub available: Option<u32>,
    pub fire: Option<FireCounts>,
    pub grants: Vec<GrantRecord>,
    pub query: Option<QueryRecord>,
    pub events: Vec<EventRecord>,
    pub migration: Option<MigrationRecord>,
}

impl Answer {
    pub fn new(request: String) -> Self {
        Answer {
            request,
            status: Status::Ok,
            answer: String::new(),
            refusal: None,
            fallback: false,
            attempts: 1,
            count: None,
            available: None,
            fire: None,
            grants: Vec::new(),
            query: None,
            events: Vec::new(),
            migration: None,
        }
    }

    /// A VMM step's answer: done, with `answer` said.
    pub fn done(request: String, answer: String) -> Self {
        Answer {
            answer,
            ..Answer::new(request)
        }
    }

    pub fn refused(mut self, refusal: Refusal) -> Self {
        self.status = refusal.status();
        self.answer = format!("refused: {}", refusal.status());
        self.refusal = Some(refusal);
        self
    }
}

/// The step being run, for errors.
#[derive(Clone, Copy)]
pub(super) struct At {
    pub step: usize,
    pub line: usize,
}

impl At {
    pub fn fail(self, source: impl Into<SimError>) -> RunError {
        RunError::Driver {
            step: self.step,
            line: self.line,
            source: source.into(),
        }
    }

    /// A refusal becomes the step's answer; any other failure ends the run.
    pub fn refused_or(self, out: Answer, e: StepError) -> Result<Answer, RunError> {
        match e {
            StepError::Refused(r) => Ok(out.refused(r)),
            StepError::Failed(e) => Err(self.fail(e)),
        }
    }
}

pub(super) fn refusal_record(r: Refusal) -> RefusalRecord {
    let (resource, available) = match r {
        Refusal::NoSpace {
            resource,
            available,
        } => (Some(resource.name().to_string()), Some(available)),
        Refusal::DeviceError { resource } => (Some(resource.name().to_string()), None),
        _ => (None, None),
    };
    RefusalRecord {
        status: r.status().name().to_string(),
        resource,
        available,
        text: r.to_string(),
    }
}

/// Destinations in short: `vCPU3:0x50`, or `vCPU0:0x40 +3` (`label` is `vCPU`, or
/// `APIC` where targets name APIC IDs).
pub(super) fn dests(label: &str, targets: &[Dest]) -> String {
    match targets {
        [] => String::from("-"),
        [d] => format!("{label}{}:{:#x}", d.vcpu, d.vector),
        [d, rest @ ..] => format!("{label}{}:{:#x} +{}", d.vcpu, d.vector, rest.len()),
    }
}
