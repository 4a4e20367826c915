//! A fake pvirq device behind virtio-mmio registers, for unit tests.
//!
//! It serves the register window through [`MmioRegs`] and reads the driver's rings from the
//! same `GuestMemoryMmap` with rust-vmm's `virtio_queue::Queue` (the device side): queue 0
//! for requests, decoded with `Request::decode` under the negotiated features and answered
//! from a small resource model (`serve.rs`), and queue 1 for events, written into the
//! driver's buffers in order, coalesced as spec §12 says (`events.rs`). It can be told to
//! misbehave for the next replies ([`Fault`]) and events ([`EventFault`]).

mod events;
mod serve;

pub(crate) use events::EventFault;
pub(crate) use serve::Held;

use crate::transport::MmioRegs;
use pvirq_proto::{Config, EventBody, GrantInfo, Le16, Le32, feature};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::vec::Vec;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// How the next reply goes wrong.
#[derive(Clone, Debug)]
pub(crate) enum Fault {
    /// Report this used length instead of the bytes written.
    UsedLen(u32),
    /// Return the chain under this head id instead of its own.
    HeadId(u32),
    /// Echo another tag.
    Tag(u64),
    /// Echo another device handle.
    Device(u32),
    /// Echo another opcode.
    Opcode(u8),
    /// Write these bytes as the reply.
    Garbage(Vec<u8>),
    /// Write nothing and return used length 0.
    NoReply,
    /// Advance the used index by this many extra entries.
    UsedIdxJump(u16),
    /// Grant this many vectors, whatever the request allowed.
    GrantCount(u32),
    /// Shift every grant's index by one.
    ShiftIndex,
    /// Report this count for FREE / RETARGET / RESET.
    Count(u32),
    /// Rewrite the grant records before they are encoded (the model keeps what it granted).
    EditGrants(fn(&mut Vec<GrantInfo>)),
    /// Rewrite a QUERY body before it is encoded.
    EditQuery(fn(&mut pvirq_proto::DeviceInfo)),
    /// Refuse with this, whatever the request (nothing changes).
    Refuse(pvirq_proto::Refusal),
}

pub(crate) struct State {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) magic: u32,
    pub(crate) mmio_version: u32,
    pub(crate) device_id: u32,
    pub(crate) offered: u64,
    device_sel: u32,
    driver_sel: u32,
    queue_sel: u32,
    pub(crate) driver_features: u64,
    /// Whether FEATURES_OK sticks.
    pub(crate) accept_features: bool,
    pub(crate) status: u32,
    /// QueueNumMax of the request queue and of the event queue.
    pub(crate) queue_num_max: u16,
    pub(crate) event_queue_max: u16,
    /// The request queue (0) and the event queue (1).
    pub(crate) queue: Queue,
    pub(crate) event_queue: Queue,
    pub(crate) interrupt_status: u32,
    pub(crate) config: Config,
    pub(crate) config_generation: u32,
    /// Process requests as soon as the driver notifies.
    pub(crate) auto: bool,
    /// Return chains in reverse order of arrival.
    pub(crate) reverse: bool,
    /// Chains answered per `process` call.
    pub(crate) budget: usize,
    /// QueueNotify writes seen, per queue.
    pub(crate) notifies: usize,
    pub(crate) event_notifies: usize,
    pub(crate) faults: VecDeque<Fault>,
    /// Raw bytes of every request read, and of every reply written, in order.
    pub(crate) requests: Vec<Vec<u8>>,
    pub(crate) replies: Vec<Vec<u8>>,
    /// Writable bytes each request offered.
    pub(crate) writable: Vec<u32>,
    /// Where the last reply was written (its first writable descriptor).
    pub(crate) last_reply_at: Option<GuestAddress>,
    pub(crate) available: u32,
    pub(crate) granted: u32,
    next_index: u32,
    /// Keep a real table per device and kind (ANY picks free indices, FREE and RETARGET
    /// need held ones); off, the model only counts, as the version-1 tests expect.
    pub(crate) track: bool,
    /// Grants held, by (device, kind wire byte, index), when tracking.
    pub(crate) held: BTreeMap<(u32, u8, u32), Held>,
    /// Grant posted interrupts to a driver that negotiated POSTED.
    pub(crate) post: bool,
    /// Table sizes of every device.
    pub(crate) msix_table_size: u16,
    pub(crate) ims_slots: u32,
    /// Events not yet written, in order; the sequence the next one gets.
    pub(crate) pending_events: VecDeque<EventBody>,
    pub(crate) next_sequence: u32,
    pub(crate) event_faults: VecDeque<EventFault>,
    /// Deliver events as soon as they are queued or buffers come back.
    pub(crate) auto_events: bool,
    /// Raw bytes of every event written.
    pub(crate) events_written: Vec<[u8; pvirq_proto::EVENT_LEN]>,
}

pub(crate) struct FakeDevice {
    pub(crate) state: RefCell<State>,
}

impl std::fmt::Debug for FakeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeDevice")
    }
}

pub(crate) const MEM_SIZE: usize = 8 << 20;

impl FakeDevice {
    pub(crate) fn new(mem: GuestMemoryMmap) -> Self {
        let config = Config {
            version: Le16::new(1),
            max_batch: Le16::new(64),
            num_devices: Le32::new(2),
            vm_quota: Le32::new(32),
            num_vcpus: Le32::new(4),
        };
        FakeDevice {
            state: RefCell::new(State {
                mem,
                magic: crate::transport::MMIO_MAGIC,
                mmio_version: 2,
                device_id: pvirq_proto::VIRTIO_ID_PVIRQ,
                offered: feature::V1,
                device_sel: 0,
                driver_sel: 0,
                queue_sel: 0,
                driver_features: 0,
                accept_features: true,
                status: 0,
                queue_num_max: 256,
                event_queue_max: 64,
                queue: Queue::new(256).expect("queue"),
                event_queue: Queue::new(256).expect("queue"),
                interrupt_status: 0,
                config,
                config_generation: 0,
                auto: true,
                reverse: false,
                budget: usize::MAX,
                notifies: 0,
                event_notifies: 0,
                faults: VecDeque::new(),
                requests: Vec::new(),
                replies: Vec::new(),
                writable: Vec::new(),
                last_reply_at: None,
                available: 32,
                granted: 0,
                next_index: 0,
                track: false,
                held: BTreeMap::new(),
                post: false,
                msix_table_size: 64,
                ims_slots: 128,
                pending_events: VecDeque::new(),
                next_sequence: 1,
                event_faults: VecDeque::new(),
                auto_events: true,
                events_written: Vec::new(),
            }),
        }
    }

    /// A device offering every feature bit, tracking its tables.
    pub(crate) fn full(mem: GuestMemoryMmap) -> Self {
        let dev = FakeDevice::new(mem);
        dev.with(|s| {
            s.offered = feature::ALL;
            s.track = true;
        });
        dev
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.borrow_mut())
    }

    pub(crate) fn fault(&self, fault: Fault) {
        self.with(|s| s.faults.push_back(fault));
    }

    pub(crate) fn event_fault(&self, fault: EventFault) {
        self.with(|s| s.event_faults.push_back(fault));
    }

    /// Answers every available request; returns how many.
    pub(crate) fn process(&self) -> usize {
        self.with(State::process)
    }

    /// Queues an event (coalescing, spec §12) and, with `auto_events`, delivers what fits.
    pub(crate) fn push_event(&self, body: EventBody) {
        let auto = self.with(|s| {
            s.queue_event(body);
            s.auto_events
        });
        if auto {
            self.deliver_events();
        }
    }

    /// Writes pending events into available buffers; returns how many.
    pub(crate) fn deliver_events(&self) -> usize {
        self.with(State::deliver_events)
    }

    /// Changes the configuration as a host does (spec §2.4): new generation, then a
    /// configuration-change interrupt.
    pub(crate) fn change_config(&self, change: impl FnOnce(&mut Config)) {
        self.with(|s| {
            change(&mut s.config);
            s.config_generation += 1;
            s.interrupt_status |= crate::transport::interrupt::CONFIG_CHANGE;
        });
    }
}

fn set_low(value: u64, low: u32) -> u64 {
    value & !0xffff_ffff | u64::from(low)
}

fn set_high(value: u64, high: u32) -> u64 {
    value & 0xffff_ffff | u64::from(high) << 32
}

impl State {
    fn selected(&mut self) -> &mut Queue {
        if self.queue_sel == 1 {
            &mut self.event_queue
        } else {
            &mut self.queue
        }
    }

    fn reset(&mut self) {
        self.queue.reset();
        self.event_queue.reset();
        self.status = 0;
        self.driver_features = 0;
        self.interrupt_status = 0;
        self.held.clear();
        self.pending_events.clear();
        self.next_sequence = 1;
    }

    /// Writes a used element raw (any id) on `queue` and publishes it.
    fn push_used(mem: &GuestMemoryMmap, queue: &mut Queue, id: u32, len: u32, jump: u16) {
        let size = queue.size();
        let used = GuestAddress(queue.used_ring());
        let next = queue.next_used();
        let at = used.0 + 4 + 8 * u64::from(next % size);
        mem.write_obj(id.to_le(), GuestAddress(at)).expect("used");
        mem.write_obj(len.to_le(), GuestAddress(at + 4))
            .expect("used");
        let next = next.wrapping_add(1).wrapping_add(jump);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        mem.write_obj(next.to_le(), GuestAddress(used.0 + 2))
            .expect("used idx");
        queue.set_next_used(next);
    }
}

impl MmioRegs for FakeDevice {
    fn read32(&self, offset: usize) -> u32 {
        let s = &mut *self.state.borrow_mut();
        match offset {
            0x000 => s.magic,
            0x004 => s.mmio_version,
            0x008 => s.device_id,
            0x00c => 0x554d_4551,
            0x010 => (s.offered >> (32 * s.device_sel.min(1))) as u32,
            0x034 => u32::from(match s.queue_sel {
                0 => s.queue_num_max,
                1 => s.event_queue_max,
                _ => 0,
            }),
            0x044 => u32::from(s.selected().ready()),
            0x060 => s.interrupt_status,
            0x070 => s.status,
            0x0fc => s.config_generation,
            0x100.. => {
                let bytes = bytemuck::bytes_of(&s.config);
                let at = offset - 0x100;
                bytes
                    .get(at..at + 4)
                    .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            _ => 0,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        let (requests, events) = {
            let s = &mut *self.state.borrow_mut();
            match offset {
                0x014 => s.device_sel = value,
                0x020 => {
                    s.driver_features = if s.driver_sel == 0 {
                        set_low(s.driver_features, value)
                    } else {
                        set_high(s.driver_features, value)
                    }
                }
                0x024 => s.driver_sel = value,
                0x030 => {
                    assert!(value < 2, "queue {value} does not exist");
                    s.queue_sel = value;
                }
                0x038 => s.selected().set_size(value as u16),
                0x044 => s.selected().set_ready(value == 1),
                0x050 => match value {
                    0 => s.notifies += 1,
                    _ => s.event_notifies += 1,
                },
                0x064 => s.interrupt_status &= !value,
                0x070 => {
                    if value == 0 {
                        s.reset();
                    } else {
                        let mut value = value;
                        let features_ok = u32::from(crate::transport::status::FEATURES_OK);
                        let refuse = !s.accept_features
                            || feature::missing_dependency(s.driver_features).is_some()
                            || s.driver_features & !s.offered != 0;
                        if refuse {
                            value &= !features_ok;
                        }
                        s.status = value;
                    }
                }
                0x080 => s.selected().set_desc_table_address(Some(value), None),
                0x084 => s.selected().set_desc_table_address(None, Some(value)),
                0x090 => s.selected().set_avail_ring_address(Some(value), None),
                0x094 => s.selected().set_avail_ring_address(None, Some(value)),
                0x0a0 => s.selected().set_used_ring_address(Some(value), None),
                0x0a4 => s.selected().set_used_ring_address(None, Some(value)),
                _ => {}
            }
            let notify = offset == 0x050;
            (
                notify && value == 0 && s.auto,
                notify && value == 1 && s.auto_events,
            )
        };
        if requests {
            self.process();
        }
        if events {
            self.deliver_events();
        }
    }

    fn read16(&self, offset: usize) -> u16 {
        let s = self.state.borrow();
        let bytes = bytemuck::bytes_of(&s.config);
        let at = offset.wrapping_sub(0x100);
        bytes
            .get(at..at.wrapping_add(2))
            .map_or(0, |b| u16::from_le_bytes(b.try_into().expect("2 bytes")))
    }
}

pub(crate) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
}
