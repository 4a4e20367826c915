//! Strategies shared by the property tests: valid requests, responses and events of every
//! shape, extensions included, held in owned form so that the borrowed protocol values can
//! be built from them.
#![allow(dead_code)] // Each test crate uses its own part.

use proptest::prelude::*;
use pvirq_proto::{
    Alloc, DeviceInfo, DeviceInfoExt, Event, EventBody, Field, Grant, GrantInfo, GrantMode,
    GrantSlice, IndexList, IndexRange, IndexSpec, Indices, Kind, KindSet, Le32, MessageFormat,
    MsiMessage, Operation, Outcome, PciIdentity, Refusal, Request, Resource, Response, Retarget,
    RetargetTo, Target, Targeting,
};

/// The `max_batch` the properties decode against.
pub const MAX_BATCH: u16 = 64;

pub fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(Kind::ALL.to_vec())
}

pub fn targets(n: usize) -> impl Strategy<Value = Vec<Target>> {
    prop::collection::vec((any::<u32>(), 0x20u8..=0xFF), n)
        .prop_map(|v| v.into_iter().map(|(c, vec)| Target::new(c, vec)).collect())
}

/// Run or list, owned.
#[derive(Clone, Debug)]
pub enum OwnedIndices {
    Run(IndexRange),
    List(Kind, Vec<Le32>),
}

impl OwnedIndices {
    pub fn indices(&self) -> Indices<'_> {
        match self {
            OwnedIndices::Run(r) => Indices::Run(*r),
            OwnedIndices::List(kind, entries) => Indices::List {
                kind: *kind,
                indices: IndexList::new(entries).expect("strictly increasing"),
            },
        }
    }

    pub fn count(&self) -> usize {
        match self {
            OwnedIndices::Run(r) => usize::from(r.count),
            OwnedIndices::List(_, entries) => entries.len(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Shape {
    Query,
    Reset,
    Alloc {
        kind: Kind,
        index: IndexSpec,
        min: u16,
        max: u16,
        pasid: Option<u32>,
        targeting: Targeting,
        targets: Vec<Target>,
    },
    Free(OwnedIndices),
    Retarget(OwnedIndices, Option<Vec<Target>>),
}

/// A valid request of any shape, owned.
#[derive(Clone, Debug)]
pub struct OwnedRequest {
    pub device: u32,
    pub tag: u64,
    pub shape: Shape,
}

impl OwnedRequest {
    pub fn request(&self) -> Request<'_> {
        let op = match &self.shape {
            Shape::Query => Operation::Query,
            Shape::Reset => Operation::Reset,
            Shape::Alloc {
                kind,
                index,
                min,
                max,
                pasid,
                targeting,
                targets,
            } => Operation::Alloc(Alloc {
                kind: *kind,
                index: *index,
                min: *min,
                max: *max,
                pasid: *pasid,
                targeting: *targeting,
                targets,
            }),
            Shape::Free(indices) => Operation::Free(indices.indices()),
            Shape::Retarget(indices, targets) => Operation::Retarget(Retarget {
                indices: indices.indices(),
                to: match targets {
                    Some(targets) => RetargetTo::Targets(targets),
                    None => RetargetTo::Park,
                },
            }),
        };
        Request {
            device: self.device,
            tag: self.tag,
            op,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let request = self.request();
        let mut bytes = vec![0u8; request.encoded_len()];
        let len = request
            .encode(&mut bytes)
            .unwrap_or_else(|e| panic!("{request}: {e}"));
        assert_eq!(len, bytes.len());
        bytes
    }
}

fn counts(kind: Kind) -> impl Strategy<Value = (u16, u16)> {
    (0u16..6, 0u16..6).prop_map(move |(a, b)| {
        let (lo, hi) = (a.min(b), a.max(b));
        if kind == Kind::Msi {
            (1 << lo, 1 << hi)
        } else {
            (lo * 7 + 1, (hi * 10 + 1).max(lo * 7 + 1))
        }
    })
}

fn alloc_shape() -> impl Strategy<Value = Shape> {
    kind()
        .prop_flat_map(|kind| {
            (
                Just(kind),
                counts(kind),
                0u8..3,
                0u32..100_000,
                prop::option::of(0u32..=0xF_FFFF),
                0u8..3,
            )
        })
        .prop_flat_map(
            |(kind, (min, max), which_index, first, pasid, which_targeting)| {
                let index = match (which_index, kind) {
                    (0, _) => IndexSpec::Any,
                    (1, _) => IndexSpec::AnyContiguous,
                    (_, Kind::Msi) => IndexSpec::At(0),
                    _ => IndexSpec::At(first),
                };
                let pasid = pasid.filter(|_| kind == Kind::Ims);
                let (targeting, n) = match which_targeting {
                    0 => (Targeting::PerVector, Just(usize::from(max)).boxed()),
                    1 => (Targeting::Spread, (1..=usize::from(MAX_BATCH)).boxed()),
                    _ => (Targeting::Parked, Just(0).boxed()),
                };
                n.prop_flat_map(targets)
                    .prop_map(move |targets| Shape::Alloc {
                        kind,
                        index,
                        min,
                        max,
                        pasid,
                        targeting,
                        targets,
                    })
            },
        )
}

fn owned_indices() -> impl Strategy<Value = OwnedIndices> {
    prop_oneof![
        (kind(), 0u32..1_000_000, 1u16..=MAX_BATCH)
            .prop_map(|(kind, first, count)| OwnedIndices::Run(IndexRange { kind, first, count })),
        (
            kind(),
            prop::collection::btree_set(any::<u32>(), 1..=usize::from(MAX_BATCH))
        )
            .prop_map(|(kind, set)| OwnedIndices::List(
                kind,
                set.into_iter().map(Le32::new).collect()
            )),
    ]
}

/// A valid request of any shape, version 1's and every extension's.
pub fn extended_request() -> impl Strategy<Value = OwnedRequest> {
    let shape = prop_oneof![
        Just(Shape::Query),
        Just(Shape::Reset),
        alloc_shape(),
        alloc_shape(),
        owned_indices().prop_map(Shape::Free),
        (owned_indices(), any::<bool>()).prop_flat_map(|(indices, park)| {
            let n = indices.count();
            let targets = if park {
                Just(None).boxed()
            } else {
                targets(n).prop_map(Some).boxed()
            };
            targets.prop_map(move |t| Shape::Retarget(indices.clone(), t))
        }),
    ];
    (any::<u32>(), any::<u64>(), shape).prop_map(|(device, tag, shape)| OwnedRequest {
        device,
        tag,
        shape,
    })
}

/// Refusals a response may carry: version 1's codes only, or the extended ones too.
pub fn refusal(extended: bool) -> impl Strategy<Value = Refusal> {
    let resources: Vec<Resource> = Resource::ALL
        .iter()
        .copied()
        .filter(|r| r.in_responses() && (extended || !r.needs_info()))
        .collect();
    let fields: Vec<Field> = Field::ALL
        .iter()
        .copied()
        .filter(|f| extended || !f.needs_info())
        .collect();
    let resource = prop::sample::select(resources);
    let field = prop::sample::select(fields);
    prop_oneof![
        (resource.clone(), any::<u32>()).prop_map(|(resource, available)| Refusal::NoSpace {
            resource,
            available
        }),
        (field.clone(), any::<u32>())
            .prop_map(|(field, entry)| Refusal::BadRequest { field, entry }),
        field
            .clone()
            .prop_map(|field| Refusal::Unsupported { field }),
        Just(Refusal::NoDevice),
        any::<u32>().prop_map(|index| Refusal::IndexOutOfRange { index }),
        any::<u32>().prop_map(|index| Refusal::IndexInUse { index }),
        any::<u32>().prop_map(|index| Refusal::NotGranted { index }),
        (field, any::<u32>()).prop_map(|(field, entry)| Refusal::InvalidTarget { field, entry }),
        any::<u32>().prop_map(|max_batch| Refusal::BatchTooLarge { max_batch }),
        any::<u32>().prop_map(|needed| Refusal::ResponseTooSmall { needed }),
        resource.prop_map(|resource| Refusal::DeviceError { resource }),
    ]
}

fn grant_info() -> impl Strategy<Value = GrantInfo> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(0u32..=0xF_FFFF),
    )
        .prop_map(|(index, address, data, posted, parked, pasid)| {
            let mode = if posted {
                GrantMode::Posted
            } else {
                GrantMode::Remapped
            };
            GrantInfo::new(index, MsiMessage { address, data }, mode)
                .with_parked(parked)
                .with_pasid(pasid)
        })
}

fn device_info_ext() -> impl Strategy<Value = DeviceInfoExt> {
    (
        (any::<u16>(), any::<u8>(), any::<u8>(), any::<u16>()),
        prop::option::of(0u32..=0xF_FFFF),
        prop::sample::select(MessageFormat::ALL.to_vec()),
        any::<bool>(),
        (any::<u32>(), any::<u16>(), any::<u32>(), any::<u32>()),
    )
        .prop_map(
            |((segment, bus, devfn, requester_id), pasid, format, can_post, counts)| {
                DeviceInfoExt {
                    identity: PciIdentity {
                        segment,
                        bus,
                        devfn,
                        requester_id,
                        pasid,
                    },
                    format,
                    can_post,
                    share: counts.0,
                    msix_free_run: counts.1,
                    ims_free_run: counts.2,
                    parked_drops: counts.3,
                }
            },
        )
}

/// The outcome of a response, owned.
#[derive(Clone, Debug)]
pub enum OwnedOutcome {
    Refused(Refusal),
    Queried(DeviceInfo, u32),
    Allocated(Vec<GrantInfo>, u32),
    Counted(u32, u32),
}

/// A valid response with the extended layouts (`INFO`), owned.
#[derive(Clone, Debug)]
pub struct OwnedResponse {
    pub opcode: u8,
    pub device: u32,
    pub tag: u64,
    pub outcome: OwnedOutcome,
}

impl OwnedResponse {
    pub fn response(&self) -> Response<'_> {
        let outcome = match &self.outcome {
            OwnedOutcome::Refused(r) => Outcome::Refused(*r),
            OwnedOutcome::Queried(info, quota_remaining) => Outcome::Queried {
                info: *info,
                quota_remaining: *quota_remaining,
            },
            OwnedOutcome::Allocated(grants, quota_remaining) => Outcome::Allocated {
                grants: GrantSlice::Info(grants),
                quota_remaining: *quota_remaining,
            },
            OwnedOutcome::Counted(count, quota_remaining) => {
                let (count, quota_remaining) = (*count, *quota_remaining);
                match self.opcode {
                    3 => Outcome::Freed {
                        count,
                        quota_remaining,
                    },
                    4 => Outcome::Retargeted {
                        count,
                        quota_remaining,
                    },
                    _ => Outcome::Reset {
                        count,
                        quota_remaining,
                    },
                }
            }
        };
        Response {
            opcode: self.opcode,
            device: self.device,
            tag: self.tag,
            outcome,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let response = self.response();
        let mut bytes = vec![0u8; response.encoded_len()];
        let len = response
            .encode(&mut bytes)
            .unwrap_or_else(|e| panic!("{response}: {e}"));
        assert_eq!(len, bytes.len());
        bytes
    }
}

/// A valid response to a driver with `INFO`: extended QUERY bodies, 24-byte grants,
/// extended refusal codes.
pub fn extended_response() -> impl Strategy<Value = OwnedResponse> {
    let info = (
        0u32..8,
        0u32..=5,
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        device_info_ext(),
    )
        .prop_map(|(kinds, msi_shift, msix, ims, granted, ext)| DeviceInfo {
            kinds: KindSet::from_bits(kinds).expect("3 defined bits"),
            msi_max: 1 << msi_shift,
            msix_table_size: msix,
            ims_slots: ims,
            granted,
            vm_quota: granted / 2,
            available: granted / 3,
            ext: Some(ext),
        });
    let outcome = prop_oneof![
        refusal(true).prop_map(|r| (1u8, OwnedOutcome::Refused(r))),
        (info, any::<u32>()).prop_map(|(i, q)| (1, OwnedOutcome::Queried(i, q))),
        (prop::collection::vec(grant_info(), 1..20), any::<u32>())
            .prop_map(|(g, q)| (2, OwnedOutcome::Allocated(g, q))),
        (3u8..=5, any::<u32>(), any::<u32>())
            .prop_map(|(op, c, q)| (op, OwnedOutcome::Counted(c, q))),
    ];
    (any::<u32>(), any::<u64>(), outcome, 0u8..=6).prop_map(
        |(device, tag, (opcode, outcome), refused_opcode)| OwnedResponse {
            // A refusal echoes any opcode, even an unknown one.
            opcode: match outcome {
                OwnedOutcome::Refused(_) => refused_opcode,
                _ => opcode,
            },
            device,
            tag,
            outcome,
        },
    )
}

/// A valid event of any type.
pub fn event() -> impl Strategy<Value = Event> {
    let message =
        (any::<u64>(), any::<u32>()).prop_map(|(address, data)| MsiMessage { address, data });
    let mode = prop::sample::select(GrantMode::ALL.to_vec());
    let reason = prop::sample::select(Resource::ALL.to_vec());
    let body = prop_oneof![
        (any::<u32>(), kind(), any::<u32>(), message, mode).prop_map(
            |(device, kind, index, message, mode)| EventBody::Reprogram {
                device,
                kind,
                index,
                message,
                mode
            }
        ),
        (any::<u32>(), kind(), any::<u32>(), reason).prop_map(|(device, kind, index, reason)| {
            EventBody::Revoke {
                device,
                kind,
                index,
                reason,
            }
        }),
        (prop::option::of(0u32..u32::MAX), any::<u32>())
            .prop_map(|(device, limit)| EventBody::Limits { device, limit }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(device, count)| EventBody::Available { device, count }),
        any::<u32>().prop_map(|device| EventBody::DeviceAdded { device }),
        any::<u32>().prop_map(|device| EventBody::DeviceRemoved { device }),
    ];
    (any::<u32>(), body).prop_map(|(sequence, body)| Event { sequence, body })
}

/// Version-1 grants as 16-byte records.
pub fn v1_grants(grants: &[GrantInfo]) -> Vec<Grant> {
    grants.iter().map(|g| g.grant()).collect()
}
