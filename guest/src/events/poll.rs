//! Handing events to the caller (spec §12, [DRV-10]): each used buffer is copied out of
//! shared memory once, decoded and validated, handed over, and made available again as
//! the acknowledgement. A record that fails a check is a device error.

use crate::Error;
use crate::driver::Driver;
use crate::events::check::check;
use crate::hal::Hal;
use crate::transport::Transport;
use pvirq_proto::{EVENT_LEN, EVENT_QUEUE, Event, EventBody};

impl<H: Hal, T: Transport, const SLOTS: usize> Driver<H, T, SLOTS> {
    /// Hands every event the device has returned to `handler`, in sequence order, each
    /// exactly once, and makes each buffer available again once `handler` returns (the
    /// acknowledgement, spec §12). Returns how many events were handled; 0 without
    /// [`pvirq_proto::feature::EVENTS`].
    ///
    /// Each record is copied out of shared memory once and validated before `handler` sees
    /// it ([`Driver::next_event`] lists the checks). A record that fails is an error (a
    /// device fault, [`Error::is_device_fault`]): it is not handed over, its buffer is made
    /// available again, and the events after it stay for the next call. The spec's answer
    /// to a device fault is to stop using the device (reset it).
    ///
    /// A REPROGRAM is applied to the caller's table with [`crate::apply_event`]; an
    /// AVAILABLE is what a driver that fell back waits for ([`crate::Shortfall`]).
    pub fn poll_events(&mut self, mut handler: impl FnMut(Event)) -> Result<usize, Error> {
        self.release_event_in_hand();
        let mut handled = 0;
        while let Some((id, event)) = self.pop_event()? {
            handler(event);
            self.repost_event(id);
            handled += 1;
        }
        Ok(handled)
    }

    /// The next event, validated, or `None` when the device has returned none; the
    /// iterator form of [`Driver::poll_events`], which lets the caller use the driver
    /// (allocate after an AVAILABLE, say) between events.
    ///
    /// The buffer of the event returned stays with the driver until the next call of
    /// `next_event` or `poll_events`, which makes it available again: calling again is the
    /// acknowledgement that the event was handled.
    ///
    /// Checks (spec §8 [DRV-9]): the used length is one record (0 means the device could
    /// not use the buffer: it is made available again and skipped); the record decodes
    /// (type, reserved bytes, fields its type does not use, kind, mode, reason); its
    /// sequence is one above the last (the first is 1); a REPROGRAM or REVOKE names a kind
    /// (and a delivery mode) the driver negotiated and an index inside the table QUERY
    /// reported; the device handle is below `num_devices`, re-read first if the
    /// configuration changed ([`Driver::refresh_config`]). The driver does not track which
    /// grants it holds, so whether a REPROGRAM or REVOKE names one of them is the caller's
    /// to check (see the crate documentation).
    pub fn next_event(&mut self) -> Result<Option<Event>, Error> {
        // Popped before the previous buffer goes back, so that a buffer the device returns
        // twice is one it does not hold; if nothing is there, the returned buffer may be
        // what the device was waiting for, so look once more.
        let mut next = self.pop_event();
        self.release_event_in_hand();
        if matches!(next, Ok(None)) {
            next = self.pop_event();
        }
        let Some((id, event)) = next? else {
            return Ok(None);
        };
        if let Some(events) = &mut self.events {
            events.in_hand = Some(id);
        }
        Ok(Some(event))
    }

    /// Makes the buffer of the event `next_event` returned last available again.
    fn release_event_in_hand(&mut self) {
        if let Some(id) = self.events.as_mut().and_then(|e| e.in_hand.take()) {
            self.repost_event(id);
        }
    }

    fn repost_event(&mut self, id: u16) {
        let Some(events) = &mut self.events else {
            return;
        };
        events.repost(id);
        if events.needs_notify() {
            self.transport.notify(EVENT_QUEUE);
        }
    }

    /// The next valid event and its buffer. Buffers returned empty are made available
    /// again and skipped, at most one queue's worth per call, so a device that keeps
    /// returning them cannot hold the caller here.
    fn pop_event(&mut self) -> Result<Option<(u16, Event)>, Error> {
        let Some(size) = self.events.as_ref().map(|e| e.size()) else {
            return Ok(None);
        };
        for _ in 0..=size {
            let Some((id, len)) = self.events.as_mut().map_or(Ok(None), |e| e.pop())? else {
                return Ok(None);
            };
            if len == 0 {
                self.repost_event(id);
                continue;
            }
            return match self.read_event(id, len) {
                Ok(event) => Ok(Some((id, event))),
                Err(e) => {
                    self.repost_event(id);
                    Err(e)
                }
            };
        }
        Ok(None)
    }

    /// Copies buffer `id` out once, decodes and validates it, and records its sequence.
    fn read_event(&mut self, id: u16, len: u32) -> Result<Event, Error> {
        if len as usize != EVENT_LEN {
            return Err(Error::EventLength(len));
        }
        let events = self
            .events
            .as_ref()
            .ok_or(Error::UnknownEventBuffer(u32::from(id)))?;
        let record = events
            .copy_out(id)
            .ok_or(Error::UnknownEventBuffer(u32::from(id)))?;
        let last = events.last_sequence;
        let event = Event::decode(&record).map_err(Error::Malformed)?;
        check(&event, last, self.features, &self.tables)?;
        if let Some(device) = event.body.device() {
            if device >= self.config.num_devices {
                // The device grew: the configuration says so before the event is queued,
                // but the interrupt that tells us may not have been handled yet.
                self.refresh_config()?;
            }
            if device >= self.config.num_devices {
                return Err(Error::EventDevice {
                    device,
                    num_devices: self.config.num_devices,
                });
            }
        }
        if let EventBody::DeviceRemoved { device } = event.body {
            self.tables.forget(device);
        }
        if let Some(events) = &mut self.events {
            events.last_sequence = event.sequence;
        }
        Ok(event)
    }
}
