//! Queue processing: take each available chain, handle its request, return it, and
//! interrupt the driver once per round unless it asked not to be. The event queue's side
//! is `eventq.rs`.

use super::device::{InterruptType, Processed, PvirqDevice};
use super::request::{ChainSink, DescriptorTable, parse_chain};
use pvirq_proto::{EVENT_QUEUE, REQUEST_QUEUE};
use std::num::Wrapping;
use std::sync::atomic::Ordering;
use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemory};

impl<M: GuestAddressSpace> PvirqDevice<M> {
    /// Handles a notification of queue `index`: up to `budget` request chains (queue 0),
    /// or up to `budget` event buffers filled (queue 1, when the driver negotiated the event
    /// queue); then signals the used ring once if anything was returned. While paused, the
    /// notification is remembered for [`PvirqDevice::resume`].
    pub fn process_queue(&mut self, index: usize, budget: usize) -> Processed {
        if self.paused {
            self.deferred = true;
            return Processed::default();
        }
        // A stopped queue's memory may already be the driver's again.
        if self.needs_reset || !self.queue_running(index) {
            return Processed::default();
        }
        let Some(mem) = self.active.as_ref().map(|a| a.mem.memory()) else {
            return Processed::default();
        };
        if index == usize::from(REQUEST_QUEUE) {
            let done = self.process_requests(&*mem, budget);
            // A request may have made an event (an AVAILABLE after a FREE).
            self.deliver_events();
            done
        } else if index == usize::from(EVENT_QUEUE) && self.events_negotiated() {
            self.write_events(&*mem, budget)
        } else {
            Processed::default()
        }
    }

    /// Handles every pending request (the inline path: the caller is the VM's own vCPU),
    /// up to one queue's worth: no more can be pending at once in a valid ring, and the cap
    /// keeps the work bounded (spec §8) when another vCPU adds chains meanwhile, whose own
    /// notification then handles them. Then writes the events that wait, if buffers are
    /// there for them.
    pub fn process_all(&mut self) -> Processed {
        let size = self
            .queue(usize::from(REQUEST_QUEUE))
            .map_or(0, |q| usize::from(q.size()));
        let done = self.process_queue(usize::from(REQUEST_QUEUE), size);
        self.deliver_events();
        done
    }

    fn process_requests<G: GuestMemory>(&mut self, mem: &G, budget: usize) -> Processed {
        let mut done = Processed::default();
        self.metrics.notifications.fetch_add(1, Ordering::Relaxed);
        let q = usize::from(REQUEST_QUEUE);
        loop {
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
            // A fresh iterator per chain: `iter` checks the avail index (a driver claiming
            // more chains than the queue holds is a corrupt ring), and `add_used` needs the
            // queue back.
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
            let parsed = parse_chain(mem, table, head, &mut self.chain, &mut visited);
            self.metrics
                .descriptors
                .fetch_add(visited, Ordering::Relaxed);
            if parsed.is_err() {
                self.enter_needs_reset(None);
                break;
            }
            let mut sink = ChainSink::new(mem, &self.chain.writable);
            let handled = self.vm.handle(&self.chain.request, &mut sink);
            self.metrics.record(&handled);
            let used = self
                .active
                .as_mut()
                .and_then(|a| a.queues.get_mut(q))
                .map(|queue| queue.add_used(mem, head, handled.used_len));
            if !matches!(used, Some(Ok(()))) {
                self.enter_needs_reset(None);
                break;
            }
            done.chains += 1;
        }
        if done.chains > 0 {
            self.signal_used(mem, REQUEST_QUEUE);
        }
        done
    }

    /// Raises queue `index`'s used-buffer interrupt, unless the driver asked not to be.
    pub(super) fn signal_used<G: GuestMemory>(&self, mem: &G, index: u16) {
        if !self.wants_interrupt(mem, index) {
            return;
        }
        let raised = self
            .active
            .as_ref()
            .map(|a| a.interrupt.trigger(InterruptType::Queue(index)));
        if matches!(raised, Some(Err(_))) {
            self.metrics
                .interrupt_errors
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the driver wants a used-buffer interrupt on queue `index`: without
    /// `VIRTIO_F_EVENT_IDX` (never offered) the driver says so with the avail ring's
    /// `VRING_AVAIL_F_NO_INTERRUPT` flag, which a polling driver sets (virtio 1.2 §2.7.7).
    /// virtio-queue's `needs_notification` ignores that flag, so the device reads it itself.
    fn wants_interrupt<G: GuestMemory>(&self, mem: &G, index: u16) -> bool {
        let Some(queue) = self.queue(usize::from(index)) else {
            return false;
        };
        match mem.read_obj::<u16>(GuestAddress(queue.avail_ring())) {
            Ok(flags) => u32::from(u16::from_le(flags)) & VRING_AVAIL_F_NO_INTERRUPT == 0,
            // An unreadable ring cannot tell us not to.
            Err(_) => true,
        }
    }

    /// Whether queue `index` has chains the device has not taken.
    pub(super) fn has_pending<G: GuestMemory>(&self, mem: &G, index: usize) -> bool {
        self.queue(index).is_some_and(|queue| {
            queue
                .avail_idx(mem, Ordering::Acquire)
                .is_ok_and(|idx| idx != Wrapping(queue.next_avail()))
        })
    }
}
