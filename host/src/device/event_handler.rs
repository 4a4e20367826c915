//! The device as an `event-manager` subscriber, Firecracker's way: it watches its
//! activation eventfd from the start and its queue eventfds once it is live.
//!
//! Each notification handles at most the device's budget of chains; if more are pending it
//! writes its own eventfd again, so it is called back on the next round of the event loop,
//! after every other ready subscriber had its turn: one VM's flood cannot starve the other
//! devices sharing the thread.

use super::device::PvirqDevice;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;

impl<M: GuestAddressSpace> PvirqDevice<M> {
    fn event_error(&self) {
        self.metrics().event_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The device went live: watch its queues.
    fn watch_queues(&mut self, ops: &mut EventOps) {
        let _ = self.activate_evt().read();
        let mut failed = false;
        for index in 0..self.queue_max_sizes().len() {
            if let Some(evt) = self.queue_evt(index) {
                failed |= ops.add(Events::new(evt, EventSet::IN)).is_err();
            }
        }
        if failed {
            self.event_error();
        }
    }
}

impl<M: GuestAddressSpace + Send> MutEventSubscriber for PvirqDevice<M> {
    fn init(&mut self, ops: &mut EventOps) {
        if ops
            .add(Events::new(self.activate_evt(), EventSet::IN))
            .is_err()
        {
            self.event_error();
        }
        // Live already (activated before it was added to the loop).
        if self.is_activated() {
            self.watch_queues(ops);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt().as_raw_fd() {
            self.watch_queues(ops);
            return;
        }
        let queue = (0..self.queue_max_sizes().len())
            .find(|i| self.queue_evt(*i).is_some_and(|e| e.as_raw_fd() == fd));
        let Some(queue) = queue else {
            // A queue eventfd handed back by a reset: stop watching it.
            let _ = ops.remove(events);
            return;
        };
        let evt_read = self.queue_evt(queue).map(|e| e.read().is_ok());
        if evt_read == Some(false) {
            self.event_error();
        }
        let done = self.process_queue(queue, self.budget());
        if done.more && self.queue_evt(queue).is_some_and(|e| e.write(1).is_err()) {
            self.event_error();
        }
    }
}
