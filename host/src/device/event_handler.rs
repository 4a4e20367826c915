//! The device as an `event-manager` subscriber: it owns the queue-notify eventfd.
//!
//! Each notification handles at most the device's budget of chains; if more are pending it
//! writes its own eventfd again, so it is called back on the next round of the event loop,
//! after every other ready subscriber had its turn: one VM's flood cannot starve the other
//! devices sharing the thread.

use super::device::PvirqDevice;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use vmm_sys_util::epoll::EventSet;

impl MutEventSubscriber for PvirqDevice {
    fn init(&mut self, ops: &mut EventOps) {
        if ops
            .add(Events::new(self.queue_evt(), EventSet::IN))
            .is_err()
        {
            self.metrics().event_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != self.queue_evt().as_raw_fd() {
            return;
        }
        if self.queue_evt().read().is_err() {
            self.metrics().event_errors.fetch_add(1, Ordering::Relaxed);
        }
        let done = self.process_queue(self.budget());
        if done.more && self.queue_evt().write(1).is_err() {
            self.metrics().event_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
