//! The device behind the `guest_driver` and `guest_events` targets: a raw-memory virtio
//! device (no queue library, so it can lie about anything) whose request queue answers with
//! fuzzer-chosen replies and whose event queue writes fuzzer-chosen records.

use super::ReplyIn;
use crate::memory::DirtyMemory;
use pvirq_guest::{QueueAddrs, Transport};
use pvirq_proto::{
    DeviceInfo, DeviceInfoExt, GrantInfo, GrantMode, GrantSlice, IndexSpec, Kind, KindSet,
    MessageFormat, Negotiated, Operation, Outcome, PciIdentity, Refusal, RemappableMsi, Request,
    Response, Targeting, feature,
};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use vm_memory::{Bytes, GuestAddress};

/// Largest request the fake reads.
const MAX_REQUEST: usize = 64 << 10;

/// One queue the driver set up: its size, areas, and how far the device got.
#[derive(Clone, Copy, Debug)]
struct Ring {
    size: u16,
    addrs: QueueAddrs,
    last_avail: u16,
    used_idx: u16,
}

/// A chain the device took: its head, its readable bytes, its writable buffers.
type Chain = (u16, Vec<u8>, Vec<(u64, u32)>);

/// A fuzzer-driven device.
pub struct Fake {
    pub(crate) mem: DirtyMemory,
    pub(crate) status: u8,
    pub(crate) offered: u64,
    pub(crate) driver_features: u64,
    pub(crate) config: [u8; 16],
    pub(crate) generation: u32,
    pub(crate) queue_max: u16,
    pub(crate) event_queue_max: u16,
    rings: [Option<Ring>; 2],
    pub(crate) interrupt: u32,
    pub(crate) replies: VecDeque<ReplyIn>,
}

impl Fake {
    /// A device offering `offered`, with `config`, answering with `replies` in order.
    pub fn new(
        mem: DirtyMemory,
        offered: u64,
        config: [u8; 16],
        replies: VecDeque<ReplyIn>,
    ) -> Self {
        Fake {
            mem,
            status: 0,
            offered,
            driver_features: 0,
            config,
            generation: 0,
            queue_max: 256,
            event_queue_max: 64,
            rings: [None; 2],
            interrupt: 0,
            replies,
        }
    }

    fn read<T: vm_memory::ByteValued>(&self, addr: u64) -> Option<T> {
        self.mem.read_obj(GuestAddress(addr)).ok()
    }

    /// The next chain made available on `queue`: its head, readable bytes and writable
    /// buffers.
    fn pop(&mut self, queue: usize) -> Option<Chain> {
        let ring = self.rings.get(queue).copied().flatten()?;
        let avail_idx = self.read::<u16>(ring.addrs.driver + 2)?;
        if ring.last_avail == avail_idx {
            return None;
        }
        let slot = u64::from(ring.last_avail % ring.size);
        if let Some(Some(r)) = self.rings.get_mut(queue) {
            r.last_avail = r.last_avail.wrapping_add(1);
        }
        let head = self.read::<u16>(ring.addrs.driver + 4 + 2 * slot)?;
        let mut request = Vec::new();
        let mut writable = Vec::new();
        let mut index = head;
        for _ in 0..ring.size {
            let at = ring.addrs.desc + 16 * u64::from(index % ring.size);
            let (Some(addr), Some(len), Some(flags), Some(next)) = (
                self.read::<u64>(at),
                self.read::<u32>(at + 8),
                self.read::<u16>(at + 12),
                self.read::<u16>(at + 14),
            ) else {
                return None;
            };
            if flags & 2 != 0 {
                writable.push((addr, len));
            } else if request.len() + len as usize <= MAX_REQUEST {
                let mut buf = vec![0u8; len as usize];
                self.mem.read_slice(&mut buf, GuestAddress(addr)).ok()?;
                request.extend(buf);
            }
            if flags & 1 == 0 {
                break;
            }
            index = next;
        }
        Some((head, request, writable))
    }

    /// Writes `bytes` over `writable`; returns how many fit.
    fn write(&self, bytes: &[u8], writable: &[(u64, u32)]) -> usize {
        let mut written = 0usize;
        for &(addr, len) in writable {
            let n = (len as usize).min(bytes.len() - written);
            if n == 0 {
                break;
            }
            if self
                .mem
                .write_slice(&bytes[written..written + n], GuestAddress(addr))
                .is_err()
            {
                break;
            }
            written += n;
        }
        written
    }

    /// Returns a chain on `queue` as used element `(id, len)`, the used index moving by
    /// `step` (1, or 2 to run ahead).
    fn push_used(&mut self, queue: usize, id: u32, len: u32, step: u16) {
        let Some(Some(ring)) = self.rings.get_mut(queue) else {
            return;
        };
        let at = ring.addrs.device + 4 + 8 * u64::from(ring.used_idx % ring.size);
        ring.used_idx = ring.used_idx.wrapping_add(step);
        let (device, used_idx) = (ring.addrs.device, ring.used_idx);
        let _ = self.mem.write_obj(id, GuestAddress(at));
        let _ = self.mem.write_obj(len, GuestAddress(at + 4));
        let _ = self.mem.write_obj(used_idx, GuestAddress(device + 2));
        self.interrupt |= 1;
    }

    fn serve_all(&mut self) {
        let size = self.rings[0].map_or(0, |r| r.size);
        for _ in 0..size {
            let Some((head, request, writable)) = self.pop(0) else {
                return;
            };
            self.serve(head, &request, &writable);
        }
    }

    fn serve(&mut self, head: u16, request: &[u8], writable: &[(u64, u32)]) {
        let Some(reply) = self.replies.pop_front() else {
            return;
        };
        if reply.mode & 3 == 3 {
            return;
        }
        let mut bytes = answer(&reply, request, self.driver_features);
        if !bytes.is_empty() {
            let n = bytes.len();
            for (offset, xor) in &reply.patches {
                bytes[usize::from(*offset) % n] ^= xor;
            }
        }
        let written = self.write(&bytes, writable);
        let len = if reply.mode & 4 != 0 {
            reply.used_len
        } else {
            written as u32
        };
        let id = if reply.mode & 8 != 0 {
            reply.id
        } else {
            u32::from(head)
        };
        let step = if reply.mode & 16 != 0 { 2 } else { 1 };
        self.push_used(0, id, len, step);
    }

    /// Writes `record` into the next event buffer, returned as `(id, len)` (the buffer's
    /// own head and the bytes written unless overridden); false when no buffer is there.
    pub fn push_event(&mut self, record: &[u8], id: Option<u32>, len: Option<u32>) -> bool {
        let Some((head, _, writable)) = self.pop(1) else {
            return false;
        };
        let written = self.write(record, &writable);
        let id = id.unwrap_or(u32::from(head));
        self.push_used(1, id, len.unwrap_or(written as u32), 1);
        true
    }

    /// Changes the configuration as a host does: new generation, then the interrupt.
    pub fn change_config(&mut self, num_devices: u32, vm_quota: u32) {
        self.config[4..8].copy_from_slice(&num_devices.to_le_bytes());
        self.config[8..12].copy_from_slice(&vm_quota.to_le_bytes());
        self.generation = self.generation.wrapping_add(1);
        self.interrupt |= 2;
    }
}

/// The QUERY body a well-formed reply carries.
fn query(reply: &ReplyIn, features: u64) -> DeviceInfo {
    let count = u32::from(reply.count);
    let ext = (features & feature::INFO != 0).then(|| DeviceInfoExt {
        identity: PciIdentity {
            segment: 0,
            bus: reply.detail,
            devfn: reply.count,
            requester_id: u16::from(reply.detail) << 8 | u16::from(reply.count),
            pasid: (reply.detail & 0x80 != 0).then_some(reply.info & 0xF_FFFF),
        },
        format: MessageFormat::ALL[usize::from(reply.detail) % MessageFormat::ALL.len()],
        can_post: reply.detail & 0x40 != 0,
        share: reply.info,
        msix_free_run: (reply.info as u16) >> 1,
        ims_free_run: (reply.info >> 16) >> 1,
        parked_drops: count,
    });
    DeviceInfo {
        kinds: KindSet::from_bits(u32::from(reply.detail & 7)).unwrap_or(KindSet::EMPTY),
        msi_max: 8,
        msix_table_size: reply.info as u16,
        ims_slots: reply.info >> 16,
        granted: count,
        vm_quota: reply.info,
        available: count,
        ext,
    }
}

/// The reply bytes `reply` describes for `request`, for a driver with `features`.
fn answer(reply: &ReplyIn, request: &[u8], features: u64) -> Vec<u8> {
    let Some(header) = Request::peek_header(request) else {
        return reply.raw.0.clone();
    };
    let (opcode, device, tag) = (header.opcode, header.device.get(), header.tag.get());
    let negotiated = Negotiated::new(pvirq_proto::MAX_BATCH_LIMIT, features);
    let decoded = Request::decode(request, negotiated).ok();
    let count = u32::from(reply.count);
    let mut grants: Vec<GrantInfo> = Vec::new();
    let outcome = match (reply.mode & 3, decoded.map(|r| r.op)) {
        (1, Some(Operation::Query)) => Outcome::Queried {
            info: query(reply, features),
            quota_remaining: reply.info,
        },
        (1, Some(Operation::Alloc(a))) => {
            let n = count % (u32::from(a.max) + 2);
            // Detail bit 4: posted; bit 5: the parked flag flipped; bit 6: no PASID.
            let mode = if reply.detail & 0x10 != 0 {
                GrantMode::Posted
            } else {
                GrantMode::Remapped
            };
            let parked = (a.targeting == Targeting::Parked) != (reply.detail & 0x20 != 0);
            let pasid = a.pasid.filter(|_| reply.detail & 0x40 == 0);
            grants = (0..n)
                .map(|i| {
                    let index = match a.index {
                        IndexSpec::Any | IndexSpec::AnyContiguous => i,
                        IndexSpec::At(f) => f.wrapping_add(i),
                    };
                    let msg = RemappableMsi {
                        handle: i as u16,
                        subhandle: Some(0),
                    };
                    GrantInfo::new(index, msg.message(), mode)
                        .with_parked(parked)
                        .with_pasid(pasid)
                })
                .collect();
            Outcome::Allocated {
                grants: GrantSlice::Info(&[]),
                quota_remaining: reply.info,
            }
        }
        (1, Some(Operation::Free(r))) => Outcome::Freed {
            count: if reply.detail & 1 == 0 {
                u32::from(r.count())
            } else {
                count
            },
            quota_remaining: reply.info,
        },
        (1, Some(Operation::Retarget(r))) => Outcome::Retargeted {
            count: if reply.detail & 1 == 0 {
                u32::from(r.indices.count())
            } else {
                count
            },
            quota_remaining: reply.info,
        },
        (1, Some(Operation::Reset)) => Outcome::Reset {
            count,
            quota_remaining: reply.info,
        },
        // The codes the driver may be told: version 1's, and with INFO the extended ones.
        (2, _) => match Refusal::from_wire(reply.count, reply.detail, reply.info)
            .filter(|r| features & feature::INFO != 0 || !r.needs_info())
        {
            Some(r) => Outcome::Refused(r),
            None => return reply.raw.0.clone(),
        },
        _ => return reply.raw.0.clone(),
    };
    let basic: Vec<_> = grants.iter().map(|g| g.grant()).collect();
    let outcome = match outcome {
        Outcome::Allocated {
            quota_remaining, ..
        } => Outcome::Allocated {
            grants: if features & feature::INFO != 0 {
                GrantSlice::Info(&grants)
            } else {
                GrantSlice::Basic(&basic)
            },
            quota_remaining,
        },
        other => other,
    };
    let response = Response {
        opcode,
        device,
        tag,
        outcome,
    };
    let mut bytes = vec![0u8; response.encoded_len()];
    match response.encode(&mut bytes) {
        Ok(n) => {
            bytes.truncate(n);
            bytes
        }
        Err(_) => reply.raw.0.clone(),
    }
}

/// The fake behind the driver's `Transport`, shared with the harness (which plays the
/// device's side: writing events, changing the configuration).
#[derive(Clone)]
pub struct FakeTransport(pub Rc<RefCell<Fake>>);

impl FakeTransport {
    /// A transport over `fake`.
    pub fn new(fake: Fake) -> Self {
        FakeTransport(Rc::new(RefCell::new(fake)))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Fake) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }
}

impl Transport for FakeTransport {
    fn device_id(&self) -> u32 {
        pvirq_proto::VIRTIO_ID_PVIRQ
    }
    fn device_features(&mut self) -> u64 {
        self.with(|f| f.offered)
    }
    fn set_driver_features(&mut self, features: u64) {
        self.with(|f| f.driver_features = features);
    }
    fn status(&self) -> u8 {
        self.with(|f| f.status)
    }
    fn set_status(&mut self, status: u8) {
        self.with(|f| {
            f.status = status;
            if status == 0 {
                f.rings = [None; 2];
            }
        });
    }
    fn max_queue_size(&mut self, queue: u16) -> u16 {
        self.with(|f| match queue {
            0 => f.queue_max,
            1 => f.event_queue_max,
            _ => 0,
        })
    }
    fn queue_ready(&mut self, queue: u16) -> bool {
        self.with(|f| f.rings.get(usize::from(queue)).is_some_and(Option::is_some))
    }
    fn setup_queue(&mut self, queue: u16, size: u16, addrs: QueueAddrs) {
        self.with(|f| {
            if let Some(ring) = f.rings.get_mut(usize::from(queue)) {
                *ring = Some(Ring {
                    size,
                    addrs,
                    last_avail: 0,
                    used_idx: 0,
                });
            }
        });
    }
    fn notify(&mut self, queue: u16) {
        if queue == 0 {
            self.with(Fake::serve_all);
        }
    }
    fn ack_interrupt(&mut self) -> u32 {
        self.with(|f| std::mem::take(&mut f.interrupt))
    }
    fn config_generation(&self) -> u32 {
        self.with(|f| f.generation)
    }
    fn read_config_u16(&self, offset: usize) -> u16 {
        self.with(|f| {
            let b = f.config.get(offset..offset + 2).unwrap_or(&[0, 0]);
            u16::from_le_bytes([b[0], b[1]])
        })
    }
    fn read_config_u32(&self, offset: usize) -> u32 {
        self.with(|f| {
            let b = f.config.get(offset..offset + 4).unwrap_or(&[0; 4]);
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })
    }
}

/// Which kind a fuzz byte names.
pub fn kind(byte: u8) -> Kind {
    match byte % 3 {
        0 => Kind::Msi,
        1 => Kind::MsiX,
        _ => Kind::Ims,
    }
}
