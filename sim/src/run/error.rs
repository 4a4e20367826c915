//! Why a scenario could not be run to its end (as opposed to an expectation not met,
//! which is part of the report).

use crate::SimError;

/// A run that could not set up or continue.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The host refused the scenario's sizes.
    #[error("host configuration refused: {0}")]
    Host(#[from] pvirq_host::HostError),
    /// A VM's channel could not be set up.
    #[error("VM {vm:?}: channel setup failed: {source}")]
    Setup {
        /// The VM.
        vm: String,
        /// Why.
        source: SimError,
    },
    /// The guest driver failed in a way that is not a device answer (a protocol fault).
    #[error("step {step} (line {line}): guest driver failed: {source}")]
    Driver {
        /// 1-based step.
        step: usize,
        /// Line of the step.
        line: usize,
        /// Why.
        source: SimError,
    },
    /// A destination host could not be set up with its tenants.
    #[error("destination {name:?}: {source}")]
    Destination {
        /// Its name.
        name: String,
        /// Why.
        source: SimError,
    },
    /// A VM's channel is gone (a virtio reset failed half-way).
    #[error("VM {0}: its channel was lost")]
    NoChannel(usize),
    /// `--kvm` on a machine without usable KVM.
    #[error("KVM delivery needs /dev/kvm, which is not usable here: {0}")]
    KvmAbsent(String),
    /// The delivery backend failed.
    #[error("delivery backend: {0}")]
    Backend(String),
}
