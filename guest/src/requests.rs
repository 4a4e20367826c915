//! The request queue (spec §4, §6): submission, completion matching, and taking a reply
//! out of shared memory once.

use crate::driver::Driver;
use crate::hal::Hal;
use crate::ring::{DESC_F_NEXT, DESC_F_WRITE, Descriptor, UsedElem};
use crate::slot::{Pending, Slot};
use crate::transport::{Transport, interrupt};
use crate::{Error, Token};
use pvirq_proto::{
    Operation, Outcome, REQUEST_QUEUE, RESPONSE_HEADER_LEN, Request, Response, feature,
};

/// What [`Driver::handle_interrupt`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InterruptStatus {
    /// The device signalled returned buffers.
    pub used_buffer: bool,
    /// The device signalled a configuration change: the configuration was re-read
    /// ([`Driver::refresh_config`]; with `EVENTS`, `num_devices` or `vm_quota` may have
    /// changed).
    pub config_changed: bool,
    /// Completions recorded by this call.
    pub completed: usize,
    /// The event queue holds events to handle ([`Driver::poll_events`]).
    pub events_pending: bool,
}

impl<H: Hal, T: Transport, const SLOTS: usize> Driver<H, T, SLOTS> {
    fn active_slots(&self) -> &[Slot] {
        self.slots.get(..self.active).unwrap_or_default()
    }

    fn buffer_ptr(&self, slot: usize, offset: usize) -> Option<*mut u8> {
        let buffers = self.buffers.as_ref()?;
        let at = slot.checked_mul(self.layout.stride)?.checked_add(offset)?;
        if slot >= self.active || at >= buffers.len() {
            return None;
        }
        // SAFETY: `at` lies inside the allocation (checked above).
        Some(unsafe { buffers.vaddr().as_ptr().add(at) })
    }

    fn buffer_paddr(&self, slot: usize, offset: usize) -> u64 {
        let base = self.buffers.as_ref().map_or(0, |b| b.paddr(0));
        base + (slot * self.layout.stride + offset) as u64
    }

    /// Submits `op` for `device` and returns the token that names its completion.
    ///
    /// The driver picks the tag. The request is checked as the device would check it
    /// ([`Request::encode`]), against [`Driver::max_batch`], and against the negotiation:
    /// a shape whose extension bits were not negotiated is [`Error::NotNegotiated`] and
    /// never reaches the device (spec §2.2). Then it is made available and the device
    /// notified (unless it asked not to be).
    pub fn submit(&mut self, device: u32, op: Operation<'_>) -> Result<Token, Error> {
        let count = match &op {
            Operation::Alloc(a) => a.max,
            Operation::Free(indices) => indices.count(),
            Operation::Retarget(r) => r.indices.count(),
            Operation::Query | Operation::Reset => 0,
        };
        if count > self.max_batch {
            return Err(Error::BatchTooLarge {
                count,
                max_batch: self.max_batch,
            });
        }
        let slot = self
            .active_slots()
            .iter()
            .position(|s| matches!(s, Slot::Free))
            .ok_or(Error::QueueFull)?;
        let tag = self.next_tag;
        let request = Request { device, tag, op };
        let needed = request.required_features() & feature::EXTENSIONS & !self.features;
        if needed != 0 {
            return Err(Error::NotNegotiated { needed });
        }
        let response_len = request.max_response_len(self.features);
        if response_len > self.layout.response_cap {
            return Err(Error::BatchTooLarge {
                count,
                max_batch: self.max_batch,
            });
        }
        let req_ptr = self.buffer_ptr(slot, 0).ok_or(Error::QueueFull)?;
        let resp_ptr = self
            .buffer_ptr(slot, self.layout.response_offset)
            .ok_or(Error::QueueFull)?;
        // SAFETY: the slot is free, so no chain the device holds covers its buffer, and
        // `&mut self` makes this the only reference; `request_cap` bytes fit the stride.
        let req_buf = unsafe { core::slice::from_raw_parts_mut(req_ptr, self.layout.request_cap) };
        let len = request.encode(req_buf).map_err(Error::Encode)?;
        // SAFETY: as above; the header fits `response_cap`. Clearing it means stale bytes
        // of an earlier reply never pass for this one's.
        unsafe { core::ptr::write_bytes(resp_ptr, 0, RESPONSE_HEADER_LEN) };
        self.next_tag = self.next_tag.wrapping_add(1);

        let head = (2 * slot) as u16;
        self.ring.set_desc(
            head,
            Descriptor {
                addr: self.buffer_paddr(slot, 0),
                len: len as u32,
                flags: DESC_F_NEXT,
                next: head + 1,
            },
        );
        self.ring.set_desc(
            head + 1,
            Descriptor {
                addr: self.buffer_paddr(slot, self.layout.response_offset),
                len: response_len as u32,
                flags: DESC_F_WRITE,
                next: 0,
            },
        );
        if let Some(state) = self.slots.get_mut(slot) {
            *state = Slot::InFlight(Pending::new(&request, response_len as u32, self.features));
        }
        self.ring.publish(head);
        if self.ring.needs_notify() {
            self.transport.notify(REQUEST_QUEUE);
        }
        Ok(Token {
            slot: slot as u16,
            tag,
        })
    }

    /// Drains the used ring, recording each completion with its request. Returns how many
    /// completions were recorded.
    ///
    /// A used element naming no request in flight is [`Error::UnknownId`]; it is consumed,
    /// so the next call goes on with the rest.
    pub fn poll(&mut self) -> Result<usize, Error> {
        let mut completed = 0;
        while let Some(UsedElem { id, len }) = self.ring.pop_used()? {
            let slot = usize::try_from(id / 2).unwrap_or(usize::MAX);
            let active = self.active;
            let state = match self.slots.get_mut(..active).and_then(|s| s.get_mut(slot)) {
                Some(state) if id % 2 == 0 => state,
                _ => return Err(Error::UnknownId(id)),
            };
            let Slot::InFlight(pending) = *state else {
                return Err(Error::UnknownId(id));
            };
            *state = Slot::Done(pending, len);
            completed += 1;
        }
        Ok(completed)
    }

    /// The interrupt-path entry point: reads and acknowledges the interrupt status, drains
    /// the request queue's used ring like [`Driver::poll`], and on a configuration change
    /// re-reads the configuration ([`Driver::refresh_config`]: DEVICE_NEEDS_RESET and
    /// changes the device may not make are errors). Events are left for
    /// [`Driver::poll_events`], which hands them to the caller; `events_pending` says
    /// whether there are any.
    pub fn handle_interrupt(&mut self) -> Result<InterruptStatus, Error> {
        let cause = self.transport.ack_interrupt();
        let completed = self.poll()?;
        let config_changed = cause & interrupt::CONFIG_CHANGE != 0;
        if config_changed {
            self.refresh_config()?;
        }
        Ok(InterruptStatus {
            used_buffer: cause & interrupt::USED_BUFFER != 0,
            config_changed,
            completed,
            events_pending: self.events.as_ref().is_some_and(|e| e.has_used()),
        })
    }

    pub(crate) fn slot_of(&self, token: Token) -> Result<&Slot, Error> {
        let slot = self
            .active_slots()
            .get(usize::from(token.slot))
            .ok_or(Error::StaleToken)?;
        match slot {
            Slot::InFlight(p) | Slot::Done(p, _) if p.tag == token.tag => Ok(slot),
            _ => Err(Error::StaleToken),
        }
    }

    /// Whether the request of `token` has completed (after [`Driver::poll`] or
    /// [`Driver::handle_interrupt`] recorded it).
    pub fn is_complete(&self, token: Token) -> Result<bool, Error> {
        Ok(matches!(self.slot_of(token)?, Slot::Done(..)))
    }

    /// Bytes a reply buffer needs to hold the reply of any request this driver can submit
    /// (the header and [`Driver::max_batch`] grants, or a QUERY body, in the channel's
    /// layout): a buffer this large never gets [`Error::ReplyBufferTooSmall`] from
    /// [`Driver::take`].
    pub fn max_reply_len(&self) -> usize {
        self.layout.response_cap
    }

    /// Takes the completion of `token`: `Ok(None)` while it is in flight; once complete,
    /// the validated response, and the slot is free again.
    ///
    /// The reply is copied out of the memory the device can write into `reply` once, and
    /// only that copy is validated and returned: a device that rewrites its reply after
    /// returning it cannot change what was checked. `reply` must hold the request's largest
    /// reply ([`pvirq_proto::Request::max_response_len`]; [`Driver::max_reply_len`] fits
    /// every request), or [`Error::ReplyBufferTooSmall`] leaves the completion in place.
    ///
    /// Refusals come back as `Ok` with [`pvirq_proto::Outcome::Refused`] (see
    /// [`crate::into_result`]); errors are device faults ([`Error::is_device_fault`]),
    /// [`Error::NoReply`] or [`Error::StaleToken`]. Either way the request is over.
    pub fn take<'r>(
        &mut self,
        token: Token,
        reply: &'r mut [u8],
    ) -> Result<Option<Response<'r>>, Error> {
        let got = reply.len();
        match reply.split_first_chunk_mut::<RESPONSE_HEADER_LEN>() {
            Some((header, body)) => self.take_into(token, header, body),
            // Not even a header fits: no request's reply does.
            None => match *self.slot_of(token)? {
                Slot::Done(pending, _) => Err(Error::ReplyBufferTooSmall {
                    needed: pending.capacity as usize,
                    got,
                }),
                _ => Ok(None),
            },
        }
    }

    /// [`Driver::take`] with the reply's header and body in separate buffers, so that an
    /// ALLOC's grants land straight in the caller's array. `header` and `body` together must
    /// hold the request's largest reply.
    pub(crate) fn take_into<'b>(
        &mut self,
        token: Token,
        header: &mut [u8; RESPONSE_HEADER_LEN],
        body: &'b mut [u8],
    ) -> Result<Option<Response<'b>>, Error> {
        let (pending, len) = match *self.slot_of(token)? {
            Slot::Done(p, len) => (p, len),
            _ => return Ok(None),
        };
        let room = RESPONSE_HEADER_LEN + body.len();
        if room < pending.capacity as usize {
            return Err(Error::ReplyBufferTooSmall {
                needed: pending.capacity as usize,
                got: room,
            });
        }
        let slot = usize::from(token.slot);
        if let Some(state) = self.slots.get_mut(slot) {
            *state = Slot::Free;
        }
        if len == 0 {
            return Err(Error::NoReply);
        }
        if len > pending.capacity {
            return Err(Error::UsedLenTooLarge {
                len,
                capacity: pending.capacity,
            });
        }
        // `len <= capacity <= room`: the reply fits the caller's buffers.
        let len = len as usize;
        let at = slot
            .checked_mul(self.layout.stride)
            .and_then(|base| base.checked_add(self.layout.response_offset))
            .ok_or(Error::StaleToken)?;
        let buffers = self.buffers.as_ref().ok_or(Error::StaleToken)?;
        // The device returned the chain, but may still write the buffer: each byte is read
        // once, here, and never again.
        let header_len = len.min(RESPONSE_HEADER_LEN);
        let header_part = header.get_mut(..header_len).ok_or(Error::StaleToken)?;
        buffers.copy_out(at, header_part).ok_or(Error::StaleToken)?;
        let Some(body_len) = len.checked_sub(RESPONSE_HEADER_LEN) else {
            return Err(Error::Malformed(pvirq_proto::Error::TooShort {
                needed: RESPONSE_HEADER_LEN,
                got: len,
            }));
        };
        let body = body.get_mut(..body_len).ok_or(Error::ReplyBufferTooSmall {
            needed: len,
            got: room,
        })?;
        at.checked_add(RESPONSE_HEADER_LEN)
            .and_then(|body_at| buffers.copy_out(body_at, body))
            .ok_or(Error::StaleToken)?;
        let response = pending.validate(header, body, &self.tables, self.config.max_batch)?;
        if let Outcome::Queried { info, .. } = &response.outcome {
            self.tables.learn(pending.device, info);
        }
        Ok(Some(response))
    }

    /// Spins until the request of `token` completes, polling. Gives up with
    /// [`Error::Timeout`] after [`crate::Options::spin_limit`] spins, leaving it in flight.
    fn wait_complete(&mut self, token: Token) -> Result<(), Error> {
        let mut spins = 0u64;
        while !self.is_complete(token)? {
            self.poll()?;
            if self.is_complete(token)? {
                break;
            }
            if self.options.spin_limit.is_some_and(|limit| spins >= limit) {
                return Err(Error::Timeout);
            }
            spins += 1;
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// Spins until the request of `token` completes, polling, then takes it into `reply`
    /// (see [`Driver::take`]). Gives up with [`Error::Timeout`] after
    /// [`crate::Options::spin_limit`] spins, leaving the request in flight.
    pub fn wait<'r>(&mut self, token: Token, reply: &'r mut [u8]) -> Result<Response<'r>, Error> {
        self.wait_complete(token)?;
        self.take(token, reply)?.ok_or(Error::Pending)
    }

    /// Submits `op` and waits for its validated response, copied into `reply` (refusals
    /// included, as in [`Driver::take`]).
    pub fn call<'r>(
        &mut self,
        device: u32,
        op: Operation<'_>,
        reply: &'r mut [u8],
    ) -> Result<Response<'r>, Error> {
        let token = self.submit(device, op)?;
        self.wait(token, reply)
    }

    /// [`Driver::call`] into a separate header and body (see [`Driver::take_into`]).
    pub(crate) fn call_into<'b>(
        &mut self,
        device: u32,
        op: Operation<'_>,
        header: &mut [u8; RESPONSE_HEADER_LEN],
        body: &'b mut [u8],
    ) -> Result<Response<'b>, Error> {
        let token = self.submit(device, op)?;
        self.wait_complete(token)?;
        self.take_into(token, header, body)?.ok_or(Error::Pending)
    }
}
