//! The guest side of one scenario VM: either the driver in this process over an in-process
//! channel ([`Side::Channel`]), or the guest image in a real KVM VM doing every step itself
//! ([`Side::Guest`], `--kvm`). The runner asks the same questions of both.

use super::guest_side::GuestSide;
use super::outcome::{AllocOutcome, GrantView, StepError};
use super::view::DeviceView;
use crate::report::FireCounts;
use crate::scenario::{AllocStep, Dest, Fallback};
use crate::{Channel, SimError};
use pvirq_host::Vm;
use pvirq_host::model::ModelHost;
use pvirq_proto::{Alloc, Grant, GrantMode, IndexRange, MsiMessage, Refusal, Target, Targeting};

/// How many requests one ALLOC step may send under a fallback policy.
pub(super) const MAX_ATTEMPTS: u32 = 4;

/// One VM's guest side.
pub enum Side {
    /// The driver in this process.
    Channel(Box<Channel>),
    /// The guest image in a KVM VM.
    Guest(Box<GuestSide>),
}

impl Side {
    /// The host's view of the VM.
    pub fn vm(&self) -> &Vm {
        match self {
            Side::Channel(c) => c.vm(),
            Side::Guest(g) => g.vm(),
        }
    }

    /// ALLOC, with the step's fallback policy (Linux's: on NO_SPACE ask again for what
    /// the host said it has).
    pub fn alloc(&mut self, a: &AllocStep) -> Result<AllocOutcome, SimError> {
        let channel = match self {
            Side::Guest(g) => return g.alloc(a),
            Side::Channel(c) => c,
        };
        let (mut min, mut max) = (a.min, a.max);
        let mut out = AllocOutcome {
            attempts: 1,
            ..AllocOutcome::default()
        };
        loop {
            let targets: Vec<Target> = a
                .targets
                .iter()
                .take(usize::from(max))
                .map(|d| d.target())
                .collect();
            let mut grants = vec![Grant::new(0, MsiMessage::default()); usize::from(max)];
            let alloc = Alloc {
                kind: a.kind,
                index: a.index,
                min,
                max,
                pasid: a.pasid,
                targets: &targets,
                targeting: Targeting::PerVector,
            };
            match channel.driver().alloc(a.device as u32, alloc, &mut grants) {
                Ok(allocation) => {
                    out.grants = allocation
                        .grants
                        .iter()
                        .map(|g| GrantView {
                            index: g.index(),
                            message: g.message(),
                            mode: GrantMode::Remapped,
                            parked: false,
                            pasid: None,
                        })
                        .collect();
                    return Ok(out);
                }
                Err(e) => {
                    let refusal = match StepError::from(e) {
                        StepError::Refused(r) => r,
                        StepError::Failed(e) => return Err(e),
                    };
                    let retry = match refusal {
                        Refusal::NoSpace { available, .. }
                            if a.fallback == Fallback::Linux
                                && available >= 1
                                && available < u32::from(max)
                                && out.attempts < MAX_ATTEMPTS =>
                        {
                            u16::try_from(available).ok()
                        }
                        _ => None,
                    };
                    match retry {
                        Some(n) => {
                            out.first_refusal.get_or_insert(refusal);
                            out.attempts += 1;
                            (min, max) = (n, n);
                        }
                        None => {
                            out.refused = Some(refusal);
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    /// FREE; the count freed.
    pub fn free(&mut self, device: usize, range: IndexRange) -> Result<u32, StepError> {
        match self {
            Side::Channel(c) => Ok(c.driver().free(device as u32, range)?.count),
            Side::Guest(g) => g.free(device, range),
        }
    }

    /// RETARGET; the count moved.
    pub fn retarget(
        &mut self,
        device: usize,
        range: IndexRange,
        targets: &[Target],
    ) -> Result<u32, StepError> {
        match self {
            Side::Channel(c) => Ok(c.driver().retarget(device as u32, range, targets)?.count),
            Side::Guest(g) => g.retarget(device, range, targets),
        }
    }

    /// QUERY: (granted, available).
    pub fn query(&mut self, device: usize) -> Result<(u32, u32), StepError> {
        match self {
            Side::Channel(c) => {
                let q = c.driver().query(device as u32)?;
                Ok((q.info.granted, q.info.available))
            }
            Side::Guest(g) => g.query(device),
        }
    }

    /// Device RESET; the count freed.
    pub fn reset_device(&mut self, device: usize) -> Result<u32, StepError> {
        match self {
            Side::Channel(c) => Ok(c.driver().reset_device(device as u32)?.count),
            Side::Guest(g) => g.reset_device(device),
        }
    }

    /// virtio reset: the driver goes away and comes back.
    pub fn reset_virtio(self) -> Result<Side, SimError> {
        match self {
            Side::Channel(c) => Ok(Side::Channel(Box::new(c.reset_virtio()?))),
            Side::Guest(mut g) => {
                g.reset_virtio()?;
                Ok(Side::Guest(g))
            }
        }
    }

    /// Fires every vector `view` holds (and, with `include_freed`, the messages it gave
    /// back). In-process: the runner plays the device and calls the host's remapping check
    /// itself. In a KVM VM: the guest rings each doorbell and counts what its handler saw,
    /// and that is what is reported.
    pub(super) fn fire(
        &mut self,
        host: &ModelHost,
        device: usize,
        requester_id: u16,
        view: &DeviceView,
        include_freed: bool,
    ) -> Result<FireCounts, StepError> {
        if let Side::Guest(g) = self {
            return g.fire(device, include_freed);
        }
        let mut counts = FireCounts::default();
        let live = view.live.values().map(|h| (h.message, Some(h.dest)));
        let stale = view
            .retired
            .iter()
            .filter(|_| include_freed)
            .map(|m| (*m, None));
        for (message, dest) in live.chain(stale) {
            counts.fired += 1;
            match host.fire(requester_id, message).ok().and_then(|d| d.to()) {
                // The scenario's VMs number their vCPUs by APIC ID.
                Some((vcpu, vector)) => {
                    counts.delivered += 1;
                    if dest != Some(Dest { vcpu, vector }) {
                        counts.misrouted += 1;
                    }
                }
                None => counts.blocked += 1,
            }
        }
        Ok(counts)
    }
}
