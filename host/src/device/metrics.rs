//! Counters the VMM can read: requests per opcode, replies per status, and what went wrong
//! with chains and rings. Lock-free; shared with the VMM through an `Arc`.

use crate::transaction::Handled;
use pvirq_proto::{Opcode, Status};
use std::sync::atomic::{AtomicU64, Ordering};

/// The device's counters.
#[derive(Debug, Default)]
pub struct PvirqMetrics {
    /// Requests by opcode byte: index 1..=5 the defined opcodes, 0 anything else.
    requests: [AtomicU64; 6],
    /// Replies by status (index = wire value).
    statuses: [AtomicU64; 12],
    /// Chains returned with used length 0 (no room for a reply, or the write failed).
    pub silent: AtomicU64,
    /// Queue notifications handled (event or inline).
    pub notifications: AtomicU64,
    /// Times processing stopped at the budget with chains still pending.
    pub budget_yields: AtomicU64,
    /// Times the device entered NEEDS_RESET (corrupt ring).
    pub needs_reset: AtomicU64,
    /// Descriptors read from the descriptor table. The work of one notification is bounded
    /// by budget × queue size of them (spec §8).
    pub descriptors: AtomicU64,
    /// Used-buffer or config interrupts that failed to be raised.
    pub interrupt_errors: AtomicU64,
    /// Queue-eventfd read/write failures.
    pub event_errors: AtomicU64,
    /// Events written into the event queue's buffers.
    pub events: AtomicU64,
    /// Event buffers returned with used length 0 (too short, readable, outside guest
    /// memory): no event was consumed by them.
    pub unusable_event_buffers: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// `(opcode name or "unknown", requests)`.
    pub requests: Vec<(&'static str, u64)>,
    /// `(status name, replies)`.
    pub statuses: Vec<(&'static str, u64)>,
    /// See [`PvirqMetrics::silent`].
    pub silent: u64,
    /// See [`PvirqMetrics::notifications`].
    pub notifications: u64,
    /// See [`PvirqMetrics::budget_yields`].
    pub budget_yields: u64,
    /// See [`PvirqMetrics::needs_reset`].
    pub needs_reset: u64,
    /// See [`PvirqMetrics::descriptors`].
    pub descriptors: u64,
    /// See [`PvirqMetrics::events`].
    pub events: u64,
    /// See [`PvirqMetrics::unusable_event_buffers`].
    pub unusable_event_buffers: u64,
}

impl PvirqMetrics {
    /// Counts one handled request.
    pub fn record(&self, handled: &Handled) {
        let op = match Opcode::from_wire(handled.opcode) {
            Some(op) => usize::from(op.to_wire()),
            None => 0,
        };
        if let Some(c) = self.requests.get(op) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        match handled.status {
            Some(status) => {
                if let Some(c) = self.statuses.get(usize::from(status.to_wire())) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.silent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Requests with `opcode` so far.
    pub fn requests(&self, opcode: Opcode) -> u64 {
        self.requests
            .get(usize::from(opcode.to_wire()))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Replies with `status` so far.
    pub fn replies(&self, status: Status) -> u64 {
        self.statuses
            .get(usize::from(status.to_wire()))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut requests = vec![("unknown", self.requests.first().map_or(0, load))];
        requests.extend(Opcode::ALL.iter().map(|op| (op.name(), self.requests(*op))));
        MetricsSnapshot {
            requests,
            statuses: Status::ALL
                .iter()
                .map(|s| (s.name(), self.replies(*s)))
                .collect(),
            silent: load(&self.silent),
            notifications: load(&self.notifications),
            budget_yields: load(&self.budget_yields),
            needs_reset: load(&self.needs_reset),
            descriptors: load(&self.descriptors),
            events: load(&self.events),
            unusable_event_buffers: load(&self.unusable_event_buffers),
        }
    }
}
