//! The driver: device initialisation, what it negotiated, and the memory it owns.
//!
//! The request queue's traffic is in `requests.rs`, the event queue's in `events/`, the
//! configuration's changes in `config.rs`, and the blocking calls in `api.rs` and
//! `domain.rs`.

use crate::Error;
use crate::events::queue::EventQueue;
use crate::grants::{GRANT_INFO_LEN, GRANT_LEN, GrantRecord, entries_for};
use crate::hal::{Dma, Hal};
use crate::init::{DeviceConfig, Options, negotiate};
use crate::ring::{Layout, SplitRing};
use crate::slot::Slot;
use crate::tables::TableCache;
use crate::transport::{Transport, status};
use pvirq_proto::{
    EVENT_QUEUE, HEADER_LEN, Negotiated, REQUEST_QUEUE, RESPONSE_HEADER_LEN, feature,
};

/// Bytes of an ALLOC/FREE/RETARGET body.
const BODY_LEN: usize = 16;
/// Bytes of a QUERY reply body: version 1's, and with `INFO`.
pub(crate) const QUERY_BODY_LEN: usize = 24;
pub(crate) const QUERY_BODY_INFO_LEN: usize = 64;
const TARGET_LEN: usize = 8;
const INDEX_ENTRY_LEN: usize = 4;

/// Bytes of one grant record on a channel with `features`.
pub(crate) const fn grant_len(features: u64) -> usize {
    if features & feature::INFO != 0 {
        GRANT_INFO_LEN
    } else {
        GRANT_LEN
    }
}

/// Where a slot's buffers sit in the buffer allocation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotLayout {
    pub(crate) stride: usize,
    pub(crate) request_cap: usize,
    pub(crate) response_offset: usize,
    pub(crate) response_cap: usize,
}

impl SlotLayout {
    /// Room for the largest request and reply a driver with `features` can make with
    /// `max_batch` vectors: targets and (with `INDEX_LIST`) an index list; grant records of
    /// the channel's layout, or a QUERY body.
    fn new(max_batch: u16, features: u64) -> Self {
        let n = usize::from(max_batch);
        let list = if features & feature::INDEX_LIST != 0 {
            INDEX_ENTRY_LEN
        } else {
            0
        };
        let query = if features & feature::INFO != 0 {
            QUERY_BODY_INFO_LEN
        } else {
            QUERY_BODY_LEN
        };
        let request_cap = HEADER_LEN + BODY_LEN + n * (TARGET_LEN + list);
        let response_cap = RESPONSE_HEADER_LEN + (n * grant_len(features)).max(query);
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
/// is smaller. With [`feature::EVENTS`] negotiated the driver also runs the event queue
/// (queue 1, spec §12): up to [`EVENT_BUFFERS`](crate::EVENT_BUFFERS) 32-byte buffers,
/// always available to the device except while an event is being handled.
///
/// Dropping the driver resets the device (which frees every grant, spec §2.6) and gives
/// the DMA memory back; if the reset does not complete the memory is leaked rather than
/// handed back while the device may still write it.
pub struct Driver<H: Hal, T: Transport, const SLOTS: usize = 8> {
    pub(crate) hal: H,
    pub(crate) transport: T,
    pub(crate) ring: SplitRing,
    pub(crate) ring_mem: Option<Dma>,
    pub(crate) buffers: Option<Dma>,
    pub(crate) layout: SlotLayout,
    pub(crate) slots: [Slot; SLOTS],
    pub(crate) active: usize,
    pub(crate) config: DeviceConfig,
    /// The configuration generation `config` was read at.
    pub(crate) generation: u32,
    pub(crate) features: u64,
    pub(crate) max_batch: u16,
    pub(crate) next_tag: u64,
    pub(crate) options: Options,
    /// Table sizes QUERY reported, to check indices against.
    pub(crate) tables: TableCache,
    /// The event queue, with `EVENTS`.
    pub(crate) events: Option<EventQueue>,
}

impl<H: Hal, T: Transport, const SLOTS: usize> core::fmt::Debug for Driver<H, T, SLOTS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Driver")
            .field("config", &self.config)
            .field("features", &format_args!("{:#x}", self.features))
            .field("max_batch", &self.max_batch)
            .field("slots", &self.active)
            .field("in_flight", &self.ring.outstanding())
            .field("events", &self.events)
            .finish_non_exhaustive()
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
    generation: u32,
    features: u64,
    max_batch: u16,
    options: Options,
    events: Option<EventQueue>,
}

/// The largest power of two not above `max` (which is at least 1).
fn floor_pow2(max: u16) -> usize {
    1usize << (usize::BITS - 1 - usize::from(max).leading_zeros())
}

impl<H: Hal, T: Transport, const SLOTS: usize> Driver<H, T, SLOTS> {
    /// Initialises the device as virtio prescribes (spec §2.5): reset, ACKNOWLEDGE,
    /// DRIVER, feature negotiation ([`Options::features`]), FEATURES_OK check,
    /// configuration and version check, queue setup (the request queue, and with
    /// [`feature::EVENTS`] the event queue with its buffers made available), DRIVER_OK. On
    /// failure the device is left with FAILED set.
    pub fn new(hal: H, mut transport: T, options: Options) -> Result<Self, Error> {
        match Self::init(hal, &mut transport, options) {
            Ok(parts) => {
                let mut driver = Self::assemble(parts, transport);
                driver.kick_events();
                Ok(driver)
            }
            Err(e) => {
                let st = transport.status();
                transport.set_status(st | status::FAILED);
                Err(e)
            }
        }
    }

    fn init(hal: H, transport: &mut T, options: Options) -> Result<Parts<H>, Error> {
        const { assert!(SLOTS >= 1 && SLOTS <= 16384, "SLOTS must be 1..=16384") };
        let (features, config, generation) = negotiate(transport, &options)?;
        if transport.queue_ready(REQUEST_QUEUE) {
            return Err(Error::QueueInUse);
        }
        let max = transport.max_queue_size(REQUEST_QUEUE);
        if max < 2 {
            return Err(Error::QueueUnavailable(max));
        }
        let wanted = (2 * SLOTS).next_power_of_two();
        let size = wanted.min(floor_pow2(max));
        let active = (size / 2).min(SLOTS);
        let size = u16::try_from(size).map_err(|_| Error::QueueUnavailable(max))?;

        let max_batch = config.max_batch.min(options.max_batch.max(1));
        let layout = SlotLayout::new(max_batch, features);
        let ring_mem = Dma::alloc(&hal, Layout::new(size).total)?;
        let buffers = match Dma::alloc(&hal, layout.stride * active) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: the device was never told about this memory.
                unsafe { ring_mem.free(&hal) };
                return Err(e);
            }
        };
        let events = if features & feature::EVENTS != 0 {
            match Self::init_events(&hal, transport) {
                Ok(events) => Some(events),
                Err(e) => {
                    // SAFETY: the device was never told about this memory.
                    unsafe {
                        ring_mem.free(&hal);
                        buffers.free(&hal);
                    }
                    return Err(e);
                }
            }
        } else {
            None
        };
        // SAFETY: `ring_mem` holds at least `Layout::new(size).total` bytes, page-aligned,
        // owned by the driver until it is freed in `Drop` after the device is reset; `size`
        // is a power of two.
        let ring = unsafe { SplitRing::new(ring_mem.vaddr(), ring_mem.paddr(0), size) };
        transport.setup_queue(REQUEST_QUEUE, size, ring.addrs());
        if let Some(events) = &events {
            transport.setup_queue(EVENT_QUEUE, events.size(), events.addrs());
        }
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
            generation,
            features,
            max_batch,
            options,
            events,
        })
    }

    /// The event queue of a driver that negotiated `EVENTS`: its size is the device's
    /// maximum or [`EVENT_BUFFERS`](crate::EVENT_BUFFERS), whichever is smaller (a power of
    /// two), every buffer made available.
    fn init_events(hal: &H, transport: &mut T) -> Result<EventQueue, Error> {
        if transport.queue_ready(EVENT_QUEUE) {
            return Err(Error::QueueInUse);
        }
        let max = transport.max_queue_size(EVENT_QUEUE);
        if max == 0 {
            return Err(Error::EventQueueUnavailable(max));
        }
        let size = floor_pow2(max.min(crate::EVENT_BUFFERS));
        let size = u16::try_from(size).map_err(|_| Error::EventQueueUnavailable(max))?;
        EventQueue::new(hal, size)
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
            generation: p.generation,
            features: p.features,
            max_batch: p.max_batch,
            next_tag: 1,
            options: p.options,
            tables: TableCache::default(),
            events: p.events,
        }
    }

    /// Tells the device the event buffers are there (after DRIVER_OK: a driver notifies
    /// only a live device).
    fn kick_events(&mut self) {
        if self.events.as_ref().is_some_and(EventQueue::needs_notify) {
            self.transport.notify(EVENT_QUEUE);
        }
    }

    /// The device configuration, as read at initialisation or at the last
    /// [`Driver::refresh_config`].
    pub fn config(&self) -> DeviceConfig {
        self.config
    }

    /// The negotiated feature bits ([`pvirq_proto::feature`]).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// What this channel negotiated: the features and the largest count one request may
    /// carry ([`Driver::max_batch`]).
    pub fn negotiated(&self) -> Negotiated {
        Negotiated::new(self.max_batch, self.features)
    }

    /// Whether every bit of `bits` ([`pvirq_proto::feature`]) was negotiated.
    pub fn has(&self, bits: u64) -> bool {
        self.features & bits == bits
    }

    /// Whether targets name x2APIC IDs ([`feature::APIC_ID`], spec §4.5) rather than vCPU
    /// indices `0..num_vcpus`: the value a [`pvirq_proto::Target`]'s CPU must hold.
    pub fn targets_name_apic_ids(&self) -> bool {
        self.has(feature::APIC_ID)
    }

    /// The largest count one request may carry: the device's `max_batch`, or the driver's
    /// [`Options::max_batch`] if smaller.
    pub fn max_batch(&self) -> u16 {
        self.max_batch
    }

    /// Entries a buffer of `G` needs to receive the grants of an ALLOC of up to `max`
    /// vectors on this channel: `max` for [`pvirq_proto::GrantInfo`] always, and for
    /// [`pvirq_proto::Grant`] without `INFO`; with `INFO` a `Grant` buffer also holds the
    /// 24-byte records before they are compacted, so it needs 1.5 × `max` entries.
    pub fn grant_entries<G: GrantRecord>(&self, max: u16) -> usize {
        entries_for::<G>(usize::from(max), grant_len(self.features))
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
        if let Some(events) = &mut self.events {
            events.suppress_interrupts(!enabled);
        }
    }
}

impl<H: Hal, T: Transport, const SLOTS: usize> Drop for Driver<H, T, SLOTS> {
    fn drop(&mut self) {
        if self.transport.reset(self.options.reset_spins).is_err() {
            // The device may still write the memory: leak it rather than hand it back.
            return;
        }
        let events = self.events.as_mut().and_then(EventQueue::take_memory);
        for dma in [self.ring_mem.take(), self.buffers.take(), events]
            .into_iter()
            .flatten()
        {
            // SAFETY: the device is reset, so it no longer accesses the memory, and the
            // driver is going away with every pointer into it.
            unsafe { dma.free(&self.hal) };
        }
    }
}
