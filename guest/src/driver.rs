//! The driver: device initialisation, request submission, completion matching.

use crate::hal::{Dma, Hal};
use crate::init::{DeviceConfig, Options, negotiate};
use crate::ring::{DESC_F_NEXT, DESC_F_WRITE, Descriptor, Layout, SplitRing, UsedElem};
use crate::slot::{Pending, Slot};
use crate::transport::{Transport, interrupt, status};
use crate::{Error, Token};
use pvirq_proto::{HEADER_LEN, Operation, REQUEST_QUEUE, RESPONSE_HEADER_LEN, Request, Response};

/// Bytes of an ALLOC/FREE/RETARGET body, and of a QUERY reply body.
const BODY_LEN: usize = 16;
pub(crate) const QUERY_BODY_LEN: usize = 24;
const TARGET_LEN: usize = 8;
const GRANT_LEN: usize = 16;

/// What [`Driver::handle_interrupt`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InterruptStatus {
    /// The device signalled returned buffers.
    pub used_buffer: bool,
    /// The device signalled a configuration change (pvirq v1 never does).
    pub config_changed: bool,
    /// Completions recorded by this call.
    pub completed: usize,
}

/// Where a slot's buffers sit in the buffer allocation.
#[derive(Clone, Copy, Debug)]
struct SlotLayout {
    stride: usize,
    request_cap: usize,
    response_offset: usize,
    response_cap: usize,
}

impl SlotLayout {
    fn new(max_batch: u16) -> Self {
        let n = usize::from(max_batch);
        let request_cap = HEADER_LEN + BODY_LEN + n * TARGET_LEN;
        let response_cap = RESPONSE_HEADER_LEN + (n * GRANT_LEN).max(QUERY_BODY_LEN);
        let response_offset = request_cap.next_multiple_of(64);
        let stride = (response_offset + response_cap).next_multiple_of(64);
        SlotLayout {
            stride,
            request_cap,
            response_offset,
            response_cap,
        }
    }
}

/// A pvirq driver over HAL `H` and transport `T`, with up to `SLOTS` requests in flight.
///
/// Each slot owns two descriptors (head `2 * slot`: the request, readable; then the
/// response buffer, writable) and a fixed buffer in DMA memory, so submission never
/// allocates and a completion's head id names its slot directly. The queue has
/// `2 * SLOTS` entries rounded up to a power of two, or fewer slots if the device's queue
/// is smaller.
///
/// Dropping the driver resets the device (which frees every grant, spec §2.6) and gives
/// the DMA memory back; if the reset does not complete the memory is leaked rather than
/// handed back while the device may still write it.
pub struct Driver<H: Hal, T: Transport, const SLOTS: usize = 8> {
    hal: H,
    transport: T,
    ring: SplitRing,
    ring_mem: Option<Dma>,
    buffers: Option<Dma>,
    layout: SlotLayout,
    slots: [Slot; SLOTS],
    active: usize,
    config: DeviceConfig,
    features: u64,
    max_batch: u16,
    next_tag: u64,
    options: Options,
}

impl<H: Hal, T: Transport, const SLOTS: usize> core::fmt::Debug for Driver<H, T, SLOTS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Driver")
            .field("config", &self.config)
            .field("features", &format_args!("{:#x}", self.features))
            .field("max_batch", &self.max_batch)
            .field("slots", &self.active)
            .field("in_flight", &self.ring.outstanding())
            .finish_non_exhaustive()
    }
}

impl<H: Hal, T: Transport, const SLOTS: usize> Driver<H, T, SLOTS> {
    /// Initialises the device as virtio prescribes: reset, ACKNOWLEDGE, DRIVER, feature
    /// negotiation, FEATURES_OK check, configuration and version check, queue setup,
    /// DRIVER_OK. On failure the device is left with FAILED set.
    pub fn new(hal: H, mut transport: T, options: Options) -> Result<Self, Error> {
        match Self::init(hal, &mut transport, options) {
            Ok(parts) => Ok(Self::assemble(parts, transport)),
            Err(e) => {
                let st = transport.status();
                transport.set_status(st | status::FAILED);
                Err(e)
            }
        }
    }

    fn init(hal: H, transport: &mut T, options: Options) -> Result<Parts<H>, Error> {
        const { assert!(SLOTS >= 1 && SLOTS <= 16384, "SLOTS must be 1..=16384") };
        let (features, config) = negotiate(transport, &options)?;
        if transport.queue_ready(REQUEST_QUEUE) {
            return Err(Error::QueueInUse);
        }
        let max = transport.max_queue_size(REQUEST_QUEUE);
        if max < 2 {
            return Err(Error::QueueUnavailable(max));
        }
        let wanted = (2 * SLOTS).next_power_of_two();
        // Largest power of two not above the device's maximum.
        let cap = 1usize << (usize::BITS - 1 - usize::from(max).leading_zeros());
        let size = wanted.min(cap);
        let active = (size / 2).min(SLOTS);
        let size = u16::try_from(size).map_err(|_| Error::QueueUnavailable(max))?;

        let max_batch = config.max_batch.min(options.max_batch.max(1));
        let layout = SlotLayout::new(max_batch);
        let ring_mem = Dma::alloc(&hal, Layout::new(size).total)?;
        let buffers = match Dma::alloc(&hal, layout.stride * active) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: the device was never told about this memory.
                unsafe { ring_mem.free(&hal) };
                return Err(e);
            }
        };
        // SAFETY: `ring_mem` holds at least `Layout::new(size).total` bytes, page-aligned,
        // owned by the driver until it is freed in `Drop` after the device is reset; `size`
        // is a power of two.
        let ring = unsafe { SplitRing::new(ring_mem.vaddr(), ring_mem.paddr(0), size) };
        transport.setup_queue(REQUEST_QUEUE, size, ring.addrs());
        transport.set_status(
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        Ok(Parts {
            hal,
            ring,
            ring_mem,
            buffers,
            layout,
            active,
            config,
            features,
            max_batch,
            options,
        })
    }

    fn assemble(p: Parts<H>, transport: T) -> Self {
        Driver {
            hal: p.hal,
            transport,
            ring: p.ring,
            ring_mem: Some(p.ring_mem),
            buffers: Some(p.buffers),
            layout: p.layout,
            slots: [const { Slot::Free }; SLOTS],
            active: p.active,
            config: p.config,
            features: p.features,
            max_batch: p.max_batch,
            next_tag: 1,
            options: p.options,
        }
    }

    /// The device configuration read at initialisation.
    pub fn config(&self) -> DeviceConfig {
        self.config
    }

    /// The negotiated feature bits ([`pvirq_proto::feature`]).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The largest count one request may carry: the device's `max_batch`, or the driver's
    /// [`Options::max_batch`] if smaller.
    pub fn max_batch(&self) -> u16 {
        self.max_batch
    }

    /// Requests that may be in flight at once (at most `SLOTS`).
    pub fn slots(&self) -> usize {
        self.active
    }

    /// Requests submitted and not yet taken.
    pub fn in_flight(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| !matches!(s, Slot::Free))
            .count()
    }

    /// The transport underneath.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Asks the device not to raise interrupts for completions (polling mode), or to raise
    /// them again. Advisory: a device may interrupt anyway.
    pub fn set_interrupts(&mut self, enabled: bool) {
        self.ring.suppress_interrupts(!enabled);
    }

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
    /// ([`Request::encode`]) and against [`Driver::max_batch`]; then it is made available
    /// and the device notified (unless it asked not to be).
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

    /// The interrupt-path entry point: reads and acknowledges the interrupt status, then
    /// drains the used ring like [`Driver::poll`].
    pub fn handle_interrupt(&mut self) -> Result<InterruptStatus, Error> {
        let cause = self.transport.ack_interrupt();
        let completed = self.poll()?;
        Ok(InterruptStatus {
            used_buffer: cause & interrupt::USED_BUFFER != 0,
            config_changed: cause & interrupt::CONFIG_CHANGE != 0,
            completed,
        })
    }

    fn slot_of(&self, token: Token) -> Result<&Slot, Error> {
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
    /// (the header and [`Driver::max_batch`] grants, or a QUERY body): a buffer this large
    /// never gets [`Error::ReplyBufferTooSmall`] from [`Driver::take`].
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
        pending.validate(header, body).map(Some)
    }

    /// Spins until the request of `token` completes, polling. Gives up with
    /// [`Error::Timeout`] after [`Options::spin_limit`] spins, leaving it in flight.
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
    /// [`Options::spin_limit`] spins, leaving the request in flight.
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

/// What `init` builds before the driver is assembled.
struct Parts<H> {
    hal: H,
    ring: SplitRing,
    ring_mem: Dma,
    buffers: Dma,
    layout: SlotLayout,
    active: usize,
    config: DeviceConfig,
    features: u64,
    max_batch: u16,
    options: Options,
}

impl<H: Hal, T: Transport, const SLOTS: usize> Drop for Driver<H, T, SLOTS> {
    fn drop(&mut self) {
        if self.transport.reset(self.options.reset_spins).is_err() {
            // The device may still write the memory: leak it rather than hand it back.
            return;
        }
        for dma in [self.ring_mem.take(), self.buffers.take()]
            .into_iter()
            .flatten()
        {
            // SAFETY: the device is reset, so it no longer accesses the memory, and the
            // driver is going away with every pointer into it.
            unsafe { dma.free(&self.hal) };
        }
    }
}
