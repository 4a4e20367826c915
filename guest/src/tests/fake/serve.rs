//! The fake device's request queue: reading chains, answering them from a small model of
//! the VM's grants, and the faults it can be told to commit.

use super::{Fault, State};
use pvirq_proto::{
    DeviceInfo, DeviceInfoExt, GrantInfo, GrantMode, GrantSlice, IndexSpec, Indices, Kind, KindSet,
    MessageFormat, Negotiated, Operation, Outcome, PciIdentity, Refusal, RemappableMsi, Request,
    Resource, Response, RetargetTo, Target, Targeting, feature,
};
use std::vec;
use std::vec::Vec;
use virtio_queue::QueueT;
use vm_memory::Bytes;

/// What the model keeps of one grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    /// Where it is delivered; `None` while parked.
    pub(crate) target: Option<Target>,
    pub(crate) pasid: Option<u32>,
}

const fn kind_bit(kind: Kind) -> u64 {
    match kind {
        Kind::Msi => feature::MSI,
        Kind::MsiX => feature::MSIX,
        Kind::Ims => feature::IMS,
    }
}

impl State {
    pub(super) fn process(&mut self) -> usize {
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
            self.replies.push(reply.clone());
            let mut rest = &reply[..];
            for (addr, l) in writable {
                let take = rest.len().min(l as usize);
                mem.write_slice(&rest[..take], addr).expect("writable");
                rest = &rest[take..];
            }
            State::push_used(&mem, &mut self.queue, id, len, jump);
        }
        if n > 0 {
            self.interrupt_status |= crate::transport::interrupt::USED_BUFFER;
        }
        n
    }

    fn info(&self) -> bool {
        self.driver_features & feature::INFO != 0
    }

    fn answer(&mut self, bytes: &[u8], capacity: u32, fault: Option<&Fault>) -> Vec<u8> {
        let max_batch = self.config.max_batch.get();
        let features = self.driver_features;
        let (mut response, mut grants) =
            match Request::decode(bytes, Negotiated::new(max_batch, features)) {
                Ok(request) => {
                    if let Some(Fault::Refuse(r)) = fault {
                        (self.reply(&request, Outcome::Refused(*r)), Vec::new())
                    } else if (capacity as usize) < request.max_response_len(features) {
                        let r = Refusal::ResponseTooSmall {
                            needed: request.max_response_len(features) as u32,
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
                        outcome: Outcome::Refused(e.refusal().for_features(features)),
                    };
                    (response, Vec::new())
                }
            };
        if let Some(Fault::EditGrants(edit)) = fault {
            edit(&mut grants);
        }
        if let (Some(Fault::EditQuery(edit)), Outcome::Queried { info, .. }) =
            (fault, &mut response.outcome)
        {
            edit(info);
        }
        match fault {
            Some(Fault::Tag(t)) => response.tag = *t,
            Some(Fault::Device(d)) => response.device = *d,
            _ => {}
        }
        // Encode by hand (header + body) so that faults the encoder would reject survive.
        let mut header = response.header();
        if let Outcome::Allocated { .. } = response.outcome {
            header.count = (grants.len() as u32).into();
        }
        let mut out = bytemuck::bytes_of(&header).to_vec();
        if let Some(Fault::Opcode(op)) = fault {
            out[0] = *op;
        }
        match response.outcome {
            Outcome::Queried { .. } => {
                let mut buf = vec![0; response.encoded_len()];
                response.encode(&mut buf).expect("query encodes");
                out.extend_from_slice(&buf[24..]);
            }
            Outcome::Allocated { .. } if self.info() => {
                out.extend_from_slice(GrantSlice::Info(&grants).as_bytes());
            }
            Outcome::Allocated { .. } => {
                let basic: Vec<_> = grants.iter().map(|g| g.grant()).collect();
                out.extend_from_slice(GrantSlice::Basic(&basic).as_bytes());
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

    fn query(&self, quota_remaining: u32) -> Outcome<'static> {
        let features = self.driver_features;
        let mut kinds = KindSet::EMPTY;
        for kind in [Kind::Msi, Kind::MsiX, Kind::Ims] {
            if features & kind_bit(kind) != 0 {
                kinds = kinds.with(kind);
            }
        }
        let has = |kind| kinds.contains(kind);
        let ext = self.info().then(|| DeviceInfoExt {
            identity: PciIdentity {
                segment: 0,
                bus: 3,
                devfn: 0x10,
                requester_id: 0x310,
                pasid: None,
            },
            format: MessageFormat::VtdRemappable,
            can_post: self.post,
            share: self.config.vm_quota.get(),
            msix_free_run: if has(Kind::MsiX) {
                self.msix_table_size
            } else {
                0
            },
            ims_free_run: if has(Kind::Ims) { self.ims_slots } else { 0 },
            parked_drops: 0,
        });
        Outcome::Queried {
            info: DeviceInfo {
                kinds,
                msi_max: if has(Kind::Msi) { 32 } else { 0 },
                msix_table_size: if has(Kind::MsiX) {
                    self.msix_table_size
                } else {
                    0
                },
                ims_slots: if has(Kind::Ims) { self.ims_slots } else { 0 },
                granted: self.granted,
                vm_quota: self.config.vm_quota.get(),
                available: self.available.min(u32::from(self.config.max_batch.get())),
                ext,
            },
            quota_remaining,
        }
    }

    fn table_size(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Msi => 32,
            Kind::MsiX => u32::from(self.msix_table_size),
            Kind::Ims => self.ims_slots,
        }
    }

    fn is_held(&self, device: u32, kind: Kind, index: u32) -> bool {
        self.held.contains_key(&(device, kind.to_wire(), index))
    }

    /// The indices an ALLOC of `n` gets when tracking, or the refusal.
    fn choose(
        &self,
        device: u32,
        kind: Kind,
        index: IndexSpec,
        n: u32,
    ) -> Result<Vec<u32>, Refusal> {
        let size = if kind == Kind::Msi {
            n
        } else {
            self.table_size(kind)
        };
        let free = |i: &u32| !self.is_held(device, kind, *i);
        match index {
            IndexSpec::At(first) => {
                let run: Vec<u32> = (first..first + n).collect();
                if let Some(&i) = run.iter().find(|i| **i >= size) {
                    return Err(Refusal::IndexOutOfRange { index: i });
                }
                match run.iter().find(|i| !free(i)) {
                    Some(&i) => Err(Refusal::IndexInUse { index: i }),
                    None => Ok(run),
                }
            }
            IndexSpec::Any => {
                let got: Vec<u32> = (0..size).filter(free).take(n as usize).collect();
                if got.len() < n as usize {
                    return Err(Refusal::NoSpace {
                        resource: Resource::DeviceSlots,
                        available: got.len() as u32,
                    });
                }
                Ok(got)
            }
            IndexSpec::AnyContiguous => (0..size.saturating_sub(n - 1))
                .find(|&s| (s..s + n).all(|i| free(&i)))
                .map(|s| (s..s + n).collect())
                .ok_or(Refusal::NoSpace {
                    resource: Resource::SlotsFragmented.for_features(self.driver_features),
                    available: 0,
                }),
        }
    }

    fn serve(
        &mut self,
        request: &Request<'_>,
        fault: Option<&Fault>,
    ) -> (Response<'static>, Vec<GrantInfo>) {
        let count_override = match fault {
            Some(Fault::Count(c)) => Some(*c),
            _ => None,
        };
        let device = request.device;
        let refuse = |s: &Self, r| (s.reply(request, Outcome::Refused(r)), Vec::new());
        let quota_remaining = self.available;
        let outcome = match request.op {
            Operation::Query => self.query(quota_remaining),
            Operation::Alloc(a) => {
                let mut n = u32::from(a.max).min(self.available);
                if a.kind == Kind::Msi && n > 0 {
                    n = 1 << (31 - n.leading_zeros());
                }
                if n < u32::from(a.min) {
                    let r = Refusal::NoSpace {
                        resource: Resource::VmQuota,
                        available: n,
                    };
                    return refuse(self, r);
                }
                let indices: Vec<u32> = if self.track {
                    match self.choose(device, a.kind, a.index, n) {
                        Ok(indices) => indices,
                        Err(r) => return refuse(self, r),
                    }
                } else {
                    let first = match a.index {
                        IndexSpec::At(f) => f,
                        IndexSpec::Any | IndexSpec::AnyContiguous => self.next_index,
                    };
                    (first..first + n).collect()
                };
                if let Some(Fault::GrantCount(c)) = fault {
                    n = *c;
                }
                let shift = u32::from(matches!(fault, Some(Fault::ShiftIndex)));
                let posted = self.post && self.driver_features & feature::POSTED != 0;
                let mode = if posted {
                    GrantMode::Posted
                } else {
                    GrantMode::Remapped
                };
                let grants: Vec<GrantInfo> = (0..n)
                    .map(|i| {
                        let index = indices.get(i as usize).copied().unwrap_or(i) + shift;
                        let msg = RemappableMsi {
                            handle: index as u16,
                            subhandle: None,
                        }
                        .message();
                        GrantInfo::new(index, msg, mode)
                            .with_parked(a.targeting == Targeting::Parked)
                            .with_pasid(a.pasid)
                    })
                    .collect();
                for (i, &index) in indices.iter().enumerate() {
                    let target = a.target_of(i, indices.len());
                    let held = Held {
                        target,
                        pasid: a.pasid,
                    };
                    if self.track {
                        self.held.insert((device, a.kind.to_wire(), index), held);
                    }
                }
                if a.index == IndexSpec::Any {
                    self.next_index += n;
                }
                self.available = self.available.saturating_sub(n);
                self.granted += n;
                let response = self.reply(
                    request,
                    Outcome::Allocated {
                        grants: GrantSlice::Info(&[]),
                        quota_remaining: self.available,
                    },
                );
                return (response, grants);
            }
            Operation::Free(indices) => {
                if let Some(r) = self.not_held(device, &indices) {
                    return refuse(self, r);
                }
                for index in indices.iter() {
                    self.held.remove(&(device, indices.kind().to_wire(), index));
                }
                let count = u32::from(indices.count());
                self.available += count;
                self.granted = self.granted.saturating_sub(count);
                Outcome::Freed {
                    count: count_override.unwrap_or(count),
                    quota_remaining: self.available,
                }
            }
            Operation::Retarget(r) => {
                if let Some(refusal) = self.not_held(device, &r.indices) {
                    return refuse(self, refusal);
                }
                let kind = r.indices.kind().to_wire();
                for (i, index) in r.indices.iter().enumerate() {
                    if let Some(held) = self.held.get_mut(&(device, kind, index)) {
                        held.target = match r.to {
                            RetargetTo::Targets(targets) => targets.get(i).copied(),
                            RetargetTo::Park => None,
                        };
                    }
                }
                Outcome::Retargeted {
                    count: count_override.unwrap_or(u32::from(r.indices.count())),
                    quota_remaining,
                }
            }
            Operation::Reset => {
                let count = self.granted;
                self.held.retain(|(d, _, _), _| *d != device);
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

    /// With tracking, the first named index not held (NOT_GRANTED).
    fn not_held(&self, device: u32, indices: &Indices<'_>) -> Option<Refusal> {
        if !self.track {
            return None;
        }
        let kind = indices.kind();
        indices
            .iter()
            .find(|i| !self.is_held(device, kind, *i))
            .map(|index| Refusal::NotGranted { index })
    }
}
