//! What the driver remembers about each request in flight, and how it checks the answer.

use crate::Error;
use crate::error::EchoField;
use crate::tables::TableCache;
use crate::validate::{self, AllocExpect, Context, Expect};
use pvirq_proto::{
    Indices, Opcode, Operation, RESPONSE_HEADER_LEN, Request, Response, RetargetTo, Targeting,
};

/// Names one submitted request: its slot and its tag (unique per driver, so a token of a
/// request already taken never matches the slot's next request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token {
    pub(crate) slot: u16,
    pub(crate) tag: u64,
}

impl Token {
    /// The tag the request carries on the wire.
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// The in-flight slot the request occupies.
    pub fn slot(&self) -> u16 {
        self.slot
    }
}

/// A request the device holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) tag: u64,
    pub(crate) device: u32,
    pub(crate) opcode: Opcode,
    pub(crate) expect: Expect,
    /// Writable bytes offered: the largest valid used length.
    pub(crate) capacity: u32,
    /// The negotiated features: the layouts and codes the response may use.
    pub(crate) features: u64,
}

/// The state of one in-flight slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Unused.
    Free,
    /// Made available; the device holds the chain.
    InFlight(Pending),
    /// The device returned the chain with this used length.
    Done(Pending, u32),
}

fn indices_expect(indices: &Indices<'_>, targets: usize) -> Expect {
    Expect::Indices {
        count: indices.count(),
        first: match indices {
            Indices::Run(r) => Some(r.first),
            Indices::List { .. } => None,
        },
        targets,
    }
}

impl Pending {
    pub(crate) fn new(request: &Request<'_>, capacity: u32, features: u64) -> Self {
        let expect = match &request.op {
            Operation::Query => Expect::Query,
            Operation::Alloc(a) => Expect::Alloc(AllocExpect {
                kind: a.kind,
                index: a.index,
                min: a.min,
                max: a.max,
                pasid: a.pasid,
                parked: a.targeting == Targeting::Parked,
                targets: a.targets.len(),
            }),
            Operation::Free(indices) => indices_expect(indices, 0),
            Operation::Retarget(r) => {
                let targets = match r.to {
                    RetargetTo::Targets(t) => t.len(),
                    RetargetTo::Park => 0,
                };
                indices_expect(&r.indices, targets)
            }
            Operation::Reset => Expect::Reset,
        };
        Pending {
            tag: request.tag,
            device: request.device,
            opcode: request.op.opcode(),
            expect,
            capacity,
            features,
        }
    }

    /// Decodes a reply (`header`, then `body`: exactly the used length, both already
    /// copied out of memory the device can write) and checks that it answers this request
    /// (spec [DRV-8], §8 [DRV-9]): echoed opcode, device and tag, then a result the request
    /// allows ([`validate`]). `tables` holds the table sizes QUERY reported; `max_batch` is
    /// the device's.
    pub(crate) fn validate<'a>(
        &self,
        header: &[u8; RESPONSE_HEADER_LEN],
        body: &'a [u8],
        tables: &TableCache,
        max_batch: u16,
    ) -> Result<Response<'a>, Error> {
        let response =
            Response::decode_parts(header, body, self.features).map_err(Error::Malformed)?;
        let echo = [
            (
                EchoField::Opcode,
                u64::from(self.opcode.to_wire()),
                u64::from(response.opcode),
            ),
            (
                EchoField::Device,
                u64::from(self.device),
                u64::from(response.device),
            ),
            (EchoField::Tag, self.tag, response.tag),
        ];
        for (field, expected, got) in echo {
            if expected != got {
                return Err(Error::EchoMismatch {
                    field,
                    expected,
                    got,
                });
            }
        }
        let context = Context {
            opcode: self.opcode,
            device: self.device,
            capacity: self.capacity,
            features: self.features,
            tables,
            max_batch,
        };
        validate::outcome(&self.expect, &context, &response)?;
        Ok(response)
    }
}
