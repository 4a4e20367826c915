//! A fake pvirq device behind virtio-mmio registers, for unit tests.
//!
//! It serves the register window through [`MmioRegs`] and reads the driver's ring from the
//! same `GuestMemoryMmap` with rust-vmm's `virtio_queue::Queue` (the device side), decodes
//! requests with `Request::decode`, answers from a tiny resource model, and can be told to
//! misbehave for the next replies ([`Fault`]).

use crate::transport::MmioRegs;
use pvirq_proto::{
    Config, DeviceInfo, Grant, GrantSlice, IndexSpec, Kind, KindSet, Le16, Le32, Negotiated,
    Operation, Outcome, RemappableMsi, Request, Resource, Response, feature,
};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::vec;
use std::vec::Vec;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// How the next reply goes wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

pub(crate) struct State {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) magic: u32,
    pub(crate) mmio_version: u32,
    pub(crate) device_id: u32,
    pub(crate) offered: u64,
    device_sel: u32,
    driver_sel: u32,
    pub(crate) driver_features: u64,
    /// Whether FEATURES_OK sticks.
    pub(crate) accept_features: bool,
    pub(crate) status: u32,
    pub(crate) queue_num_max: u16,
    pub(crate) queue: Queue,
    pub(crate) interrupt_status: u32,
    pub(crate) config: Config,
    /// Process requests as soon as the driver notifies.
    pub(crate) auto: bool,
    /// Return chains in reverse order of arrival.
    pub(crate) reverse: bool,
    /// Chains answered per `process` call.
    pub(crate) budget: usize,
    /// QueueNotify writes seen.
    pub(crate) notifies: usize,
    pub(crate) faults: VecDeque<Fault>,
    /// Raw bytes of every request read, in order.
    pub(crate) requests: Vec<Vec<u8>>,
    /// Writable bytes each request offered.
    pub(crate) writable: Vec<u32>,
    /// Where the last reply was written (its first writable descriptor).
    pub(crate) last_reply_at: Option<GuestAddress>,
    pub(crate) available: u32,
    pub(crate) granted: u32,
    next_index: u32,
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
                driver_features: 0,
                accept_features: true,
                status: 0,
                queue_num_max: 256,
                queue: Queue::new(256).expect("queue"),
                interrupt_status: 0,
                config,
                auto: true,
                reverse: false,
                budget: usize::MAX,
                notifies: 0,
                faults: VecDeque::new(),
                requests: Vec::new(),
                writable: Vec::new(),
                last_reply_at: None,
                available: 32,
                granted: 0,
                next_index: 0,
            }),
        }
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.borrow_mut())
    }

    pub(crate) fn fault(&self, fault: Fault) {
        self.with(|s| s.faults.push_back(fault));
    }

    /// Answers every available request; returns how many.
    pub(crate) fn process(&self) -> usize {
        self.with(State::process)
    }
}

fn set_low(value: u64, low: u32) -> u64 {
    value & !0xffff_ffff | u64::from(low)
}

fn set_high(value: u64, high: u32) -> u64 {
    value & 0xffff_ffff | u64::from(high) << 32
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
            0x034 => u32::from(s.queue_num_max),
            0x044 => u32::from(s.queue.ready()),
            0x060 => s.interrupt_status,
            0x070 => s.status,
            0x0fc => 0,
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
        let auto = {
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
                0x030 => assert_eq!(value, 0, "only queue 0 exists"),
                0x038 => s.queue.set_size(value as u16),
                0x044 => s.queue.set_ready(value == 1),
                0x050 => s.notifies += 1,
                0x064 => s.interrupt_status &= !value,
                0x070 => {
                    if value == 0 {
                        s.queue.reset();
                        s.status = 0;
                        s.driver_features = 0;
                        s.interrupt_status = 0;
                    } else {
                        let mut value = value;
                        if !s.accept_features {
                            value &= !u32::from(crate::transport::status::FEATURES_OK);
                        }
                        s.status = value;
                    }
                }
                0x080 => s.queue.set_desc_table_address(Some(value), None),
                0x084 => s.queue.set_desc_table_address(None, Some(value)),
                0x090 => s.queue.set_avail_ring_address(Some(value), None),
                0x094 => s.queue.set_avail_ring_address(None, Some(value)),
                0x0a0 => s.queue.set_used_ring_address(Some(value), None),
                0x0a4 => s.queue.set_used_ring_address(None, Some(value)),
                _ => {}
            }
            offset == 0x050 && s.auto
        };
        if auto {
            self.process();
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

impl State {
    fn process(&mut self) -> usize {
        let mem = self.mem.clone();
        let mut chains = Vec::new();
        while chains.len() < self.budget {
            let Some(chain) = self.queue.pop_descriptor_chain(&mem) else {
                break;
            };
            chains.push(chain);
        }
        if self.reverse {
            chains.reverse();
        }
        let n = chains.len();
        for chain in chains {
            let head = chain.head_index();
            let mut request = Vec::new();
            let mut writable = Vec::new();
            for desc in chain {
                if desc.is_write_only() {
                    writable.push((desc.addr(), desc.len()));
                } else {
                    assert!(writable.is_empty(), "readable after writable");
                    let mut buf = vec![0; desc.len() as usize];
                    mem.read_slice(&mut buf, desc.addr()).expect("readable");
                    request.extend_from_slice(&buf);
                }
            }
            let capacity: u32 = writable.iter().map(|(_, l)| l).sum();
            self.requests.push(request.clone());
            self.writable.push(capacity);
            let fault = self.faults.pop_front();
            let mut reply = self.answer(&request, capacity, fault.as_ref());
            let (mut id, mut len) = (u32::from(head), reply.len() as u32);
            let mut jump = 0;
            match fault {
                Some(Fault::UsedLen(l)) => len = l,
                Some(Fault::HeadId(h)) => id = h,
                Some(Fault::Garbage(bytes)) => {
                    len = bytes.len() as u32;
                    reply = bytes;
                }
                Some(Fault::NoReply) => {
                    reply.clear();
                    len = 0;
                }
                Some(Fault::UsedIdxJump(j)) => jump = j,
                _ => {}
            }
            // Write the reply over the writable descriptors.
            self.last_reply_at = writable.first().map(|&(addr, _)| addr);
            let mut rest = &reply[..];
            for (addr, l) in writable {
                let take = rest.len().min(l as usize);
                mem.write_slice(&rest[..take], addr).expect("writable");
                rest = &rest[take..];
            }
            self.push_used(id, len, jump);
        }
        if n > 0 {
            self.interrupt_status |= crate::transport::interrupt::USED_BUFFER;
        }
        n
    }

    /// Writes a used element raw (any id) and publishes it.
    fn push_used(&mut self, id: u32, len: u32, jump: u16) {
        let size = self.queue.size();
        let used = GuestAddress(self.queue.used_ring());
        let next = self.queue.next_used();
        let at = used.0 + 4 + 8 * u64::from(next % size);
        self.mem
            .write_obj(id.to_le(), GuestAddress(at))
            .expect("used");
        self.mem
            .write_obj(len.to_le(), GuestAddress(at + 4))
            .expect("used");
        let next = next.wrapping_add(1).wrapping_add(jump);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.mem
            .write_obj(next.to_le(), GuestAddress(used.0 + 2))
            .expect("used idx");
        self.queue.set_next_used(next);
    }

    fn answer(&mut self, bytes: &[u8], capacity: u32, fault: Option<&Fault>) -> Vec<u8> {
        let max_batch = self.config.max_batch.get();
        let (mut response, outcome_grants) = match Request::decode(bytes, Negotiated::v1(max_batch))
        {
            Ok(request) => {
                if (capacity as usize) < request.max_response_len(feature::V1) {
                    let r = pvirq_proto::Refusal::ResponseTooSmall {
                        needed: request.max_response_len(feature::V1) as u32,
                    };
                    (self.reply(&request, Outcome::Refused(r)), Vec::new())
                } else {
                    self.serve(&request, fault)
                }
            }
            Err(e) => {
                let h = Request::peek_header(bytes).unwrap_or_default();
                let response = Response {
                    opcode: h.opcode,
                    device: h.device.get(),
                    tag: h.tag.get(),
                    outcome: Outcome::Refused(e.refusal()),
                };
                (response, Vec::new())
            }
        };
        if let Outcome::Allocated { grants, .. } = &mut response.outcome {
            *grants = GrantSlice::Basic(&outcome_grants);
        }
        match fault {
            Some(Fault::Tag(t)) => response.tag = *t,
            Some(Fault::Device(d)) => response.device = *d,
            _ => {}
        }
        // Encode by hand (header + body) so that faults the encoder would reject survive.
        let mut out = bytemuck::bytes_of(&response.header()).to_vec();
        if let Some(Fault::Opcode(op)) = fault {
            out[0] = *op;
        }
        match response.outcome {
            Outcome::Queried { .. } => {
                let mut buf = vec![0; response.encoded_len()];
                response.encode(&mut buf).expect("query encodes");
                out.extend_from_slice(&buf[24..]);
            }
            Outcome::Allocated { grants, .. } => {
                out.extend_from_slice(grants.as_bytes());
            }
            _ => {}
        }
        out
    }

    fn reply<'g>(&self, request: &Request<'_>, outcome: Outcome<'g>) -> Response<'g> {
        Response {
            opcode: request.op.opcode().to_wire(),
            device: request.device,
            tag: request.tag,
            outcome,
        }
    }

    fn serve(
        &mut self,
        request: &Request<'_>,
        fault: Option<&Fault>,
    ) -> (Response<'static>, Vec<Grant>) {
        let count_override = match fault {
            Some(Fault::Count(c)) => Some(*c),
            _ => None,
        };
        let quota_remaining = self.available;
        let outcome = match request.op {
            Operation::Query => Outcome::Queried {
                info: DeviceInfo {
                    kinds: KindSet::EMPTY
                        .with(Kind::Msi)
                        .with(Kind::MsiX)
                        .with(Kind::Ims),
                    msi_max: 32,
                    msix_table_size: 64,
                    ims_slots: 128,
                    granted: self.granted,
                    vm_quota: self.config.vm_quota.get(),
                    available: self.available,
                    ext: None,
                },
                quota_remaining,
            },
            Operation::Alloc(a) => {
                let mut n = u32::from(a.max).min(self.available);
                if a.kind == Kind::Msi && n > 0 {
                    n = 1 << (31 - n.leading_zeros());
                }
                if n < u32::from(a.min) {
                    let r = pvirq_proto::Refusal::NoSpace {
                        resource: Resource::VmQuota,
                        available: n,
                    };
                    return (self.reply(request, Outcome::Refused(r)), Vec::new());
                }
                if let Some(Fault::GrantCount(c)) = fault {
                    n = *c;
                }
                let first = match a.index {
                    IndexSpec::At(f) => f,
                    IndexSpec::Any | IndexSpec::AnyContiguous => self.next_index,
                };
                let shift = u32::from(matches!(fault, Some(Fault::ShiftIndex)));
                let grants: Vec<Grant> = (0..n)
                    .map(|i| {
                        let index = first + i + shift;
                        let msg = RemappableMsi {
                            handle: index as u16,
                            subhandle: None,
                        }
                        .message();
                        Grant::new(index, msg)
                    })
                    .collect();
                if a.index == IndexSpec::Any {
                    self.next_index += n;
                }
                self.available = self.available.saturating_sub(n);
                self.granted += n;
                let response = self.reply(
                    request,
                    Outcome::Allocated {
                        grants: GrantSlice::Basic(&[]),
                        quota_remaining: self.available,
                    },
                );
                return (response, grants);
            }
            Operation::Free(r) => {
                self.available += u32::from(r.count());
                self.granted = self.granted.saturating_sub(u32::from(r.count()));
                Outcome::Freed {
                    count: count_override.unwrap_or(u32::from(r.count())),
                    quota_remaining: self.available,
                }
            }
            Operation::Retarget(r) => Outcome::Retargeted {
                count: count_override.unwrap_or(u32::from(r.indices.count())),
                quota_remaining,
            },
            Operation::Reset => {
                let count = self.granted;
                self.available += count;
                self.granted = 0;
                Outcome::Reset {
                    count: count_override.unwrap_or(count),
                    quota_remaining: self.available,
                }
            }
        };
        (self.reply(request, outcome), Vec::new())
    }
}

pub(crate) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
}
