//! What the driver remembers about each request in flight, and how it checks the answer.

use crate::Error;
use crate::error::EchoField;
use pvirq_proto::{
    IndexSpec, Kind, Opcode, Operation, Outcome, RESPONSE_HEADER_LEN, Request, Response,
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

/// What a correct answer must look like, beyond the echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Query,
    Alloc {
        kind: Kind,
        index: IndexSpec,
        min: u16,
        max: u16,
    },
    Run {
        count: u16,
    },
    Reset,
}

/// A request the device holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) tag: u64,
    device: u32,
    opcode: Opcode,
    expect: Expect,
    /// Writable bytes offered: the largest valid used length.
    pub(crate) capacity: u32,
    /// The negotiated features: the layouts and codes the response may use.
    features: u64,
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

impl Pending {
    pub(crate) fn new(request: &Request<'_>, capacity: u32, features: u64) -> Self {
        let expect = match &request.op {
            Operation::Query => Expect::Query,
            Operation::Alloc(a) => Expect::Alloc {
                kind: a.kind,
                index: a.index,
                min: a.min,
                max: a.max,
            },
            Operation::Free(indices) => Expect::Run {
                count: indices.count(),
            },
            Operation::Retarget(r) => Expect::Run {
                count: r.indices.count(),
            },
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
    /// (spec [DRV-8]): echoed opcode, device and tag, and a result the request allows.
    pub(crate) fn validate<'a>(
        &self,
        header: &[u8; RESPONSE_HEADER_LEN],
        body: &'a [u8],
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
        match (self.expect, &response.outcome) {
            (_, Outcome::Refused(_)) | (Expect::Query, _) | (Expect::Reset, _) => {}
            (
                Expect::Alloc {
                    kind,
                    index,
                    min,
                    max,
                },
                Outcome::Allocated { grants, .. },
            ) => {
                let count = grants.len();
                let in_range = (usize::from(min)..=usize::from(max)).contains(&count);
                if !in_range || (kind == Kind::Msi && !count.is_power_of_two()) {
                    return Err(Error::GrantCount { count, min, max });
                }
                if let IndexSpec::At(first) = index {
                    for (position, grant) in grants.iter().enumerate() {
                        if u64::from(grant.index()) != u64::from(first) + position as u64 {
                            return Err(Error::GrantIndex {
                                position,
                                index: grant.index(),
                            });
                        }
                    }
                }
            }
            (Expect::Run { count }, Outcome::Freed { count: got, .. })
            | (Expect::Run { count }, Outcome::Retargeted { count: got, .. }) => {
                if u32::from(count) != *got {
                    return Err(Error::CountMismatch {
                        expected: u32::from(count),
                        got: *got,
                    });
                }
            }
            // With the opcode echoed correctly, `Response::decode` picks the outcome that
            // belongs to it; anything else is a malformed reply.
            _ => {
                return Err(Error::Malformed(pvirq_proto::Error::OutcomeMismatch(
                    response.opcode,
                )));
            }
        }
        Ok(response)
    }
}
