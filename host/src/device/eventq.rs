//! The event queue (spec §12): the driver makes device-writable buffers available on
//! queue 1, and the device writes one 32-byte event record into each, in sequence order,
//! returning it with used length 32. A buffer that cannot take a record (a readable
//! descriptor, fewer than 32 writable bytes, memory outside the guest) goes back with used
//! length 0 and the event waits for the next one. A malformed ring sets NEEDS_RESET, as on
//! the request queue (spec §8).
//!
//! Events come from the VM core's log ([`crate::Vm`]); the device writes them whenever
//! one may have been queued or a buffer made available: after each round of requests, on
//! a notification of the event queue, after each change the VMM makes, on resume. A buffer
//! is taken only for an event that waits, so none is lost while the device is live
//! ([DEV-26]), and the work per call is bounded by its budget of buffers, each read by
//! following at most the queue's size of descriptors ([DEV-19]).

use super::device::{Processed, PvirqDevice};
use super::request::{ChainBuffers, ChainSink, DescriptorTable, walk_chain};
use crate::transaction::ReplySink;
use pvirq_proto::{EVENT_LEN, EVENT_QUEUE, Event};
use std::sync::atomic::Ordering;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemory};

/// Writes `event`'s record into the chain `chain` (just walked), if it can take one.
fn write_record<G: GuestMemory>(mem: &G, chain: &ChainBuffers, event: &Event) -> bool {
    if !chain.readable.is_empty() {
        return false;
    }
    let mut record = [0u8; EVENT_LEN];
    if event.encode(&mut record).is_err() {
        return false;
    }
    let mut sink = ChainSink::new(mem, &chain.writable);
    sink.capacity() >= EVENT_LEN && sink.write(&record).is_ok()
}

impl<M: GuestAddressSpace> PvirqDevice<M> {
    /// Writes the events that wait into the event queue's buffers, at most one queue's
    /// worth; if the round stopped with both left, the queue's eventfd is written so that
    /// an event loop comes back to it ([DEV-14]).
    pub(super) fn deliver_events(&mut self) {
        if !self.events_negotiated() || self.vm.pending_events() == 0 {
            return;
        }
        let index = usize::from(EVENT_QUEUE);
        let budget = self.queue(index).map_or(0, |q| usize::from(q.size()));
        let done = self.process_queue(index, budget);
        if done.more && self.queue_evt(index).is_some_and(|e| e.write(1).is_err()) {
            self.metrics.event_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Fills up to `budget` event buffers, one event each, then signals the used ring once
    /// if any buffer was returned (unless the driver asked not to be interrupted).
    pub(super) fn write_events<G: GuestMemory>(&mut self, mem: &G, budget: usize) -> Processed {
        let mut done = Processed::default();
        let q = usize::from(EVENT_QUEUE);
        while self.vm.pending_events() > 0 {
            if done.chains >= budget {
                done.more = self.has_pending(mem, q);
                if done.more {
                    self.metrics.budget_yields.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            let Some(queue) = self.active.as_mut().and_then(|a| a.queues.get_mut(q)) else {
                break;
            };
            // A fresh iterator per buffer, as on the request queue: `iter` checks the avail
            // index, and `add_used` needs the queue back.
            let next = queue
                .iter(mem)
                .map(|mut chains| chains.next().map(|chain| chain.head_index()));
            let table = DescriptorTable {
                addr: GuestAddress(queue.desc_table()),
                size: queue.size(),
            };
            let head = match next {
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(_) => {
                    self.enter_needs_reset(None);
                    break;
                }
            };
            let mut visited = 0;
            let walked = walk_chain(mem, table, head, &mut self.chain, &mut visited);
            self.metrics
                .descriptors
                .fetch_add(visited, Ordering::Relaxed);
            if walked.is_err() {
                self.enter_needs_reset(None);
                break;
            }
            // Written and taken off the log under the VM's lock, so that no change the
            // VMM makes meanwhile supersedes an event between its writing and its removal.
            let chain = &self.chain;
            let written = self
                .vm
                .write_front_event(|event| write_record(mem, chain, event))
                .unwrap_or(false);
            let used_len = if written {
                self.metrics.events.fetch_add(1, Ordering::Relaxed);
                EVENT_LEN as u32
            } else {
                self.metrics
                    .unusable_event_buffers
                    .fetch_add(1, Ordering::Relaxed);
                0
            };
            let used = self
                .active
                .as_mut()
                .and_then(|a| a.queues.get_mut(q))
                .map(|queue| queue.add_used(mem, head, used_len));
            if !matches!(used, Some(Ok(()))) {
                self.enter_needs_reset(None);
                break;
            }
            done.chains += 1;
        }
        if done.chains > 0 {
            self.signal_used(mem, EVENT_QUEUE);
        }
        done
    }
}
