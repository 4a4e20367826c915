//! Property tests: encoding round-trips, and decoding arbitrary bytes never panics, for
//! version-1 shapes and for every extension (spec §2.2), under arbitrary feature sets.

mod strategies;

use proptest::prelude::*;
use pvirq_proto::{
    Alloc, CompatMsi, DeliveryMode, DeviceInfo, Error, Event, Grant, GrantSlice, IndexRange,
    IndexSpec, Kind, KindSet, MsiMessage, Negotiated, Operation, Outcome, RESPONSE_HEADER_LEN,
    Refusal, RemappableMsi, Request, Response, Retarget, Target, Targeting, feature,
};
use strategies::{MAX_BATCH, event, extended_request, extended_response};

fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(Kind::ALL.to_vec())
}

/// An ALLOC that the rules of spec §4.5 allow, with its targets.
fn alloc_parts() -> impl Strategy<Value = (Kind, IndexSpec, u16, u16, Option<u32>, Vec<Target>)> {
    (
        kind(),
        any::<bool>(),
        0u32..100_000,
        0u32..6,
        0u32..6,
        any::<bool>(),
        0u32..=0xFFFFF,
    )
        .prop_flat_map(|(kind, any_index, first, a, b, pasid_on, pasid)| {
            let (lo, hi) = (a.min(b), a.max(b));
            let (min, max) = if kind == Kind::Msi {
                (1u16 << lo.min(5), 1u16 << hi.min(5))
            } else {
                ((lo * 7 + 1) as u16, (hi * 10 + 1).max(lo * 7 + 1) as u16)
            };
            let index = match (any_index, kind) {
                (true, _) => IndexSpec::Any,
                (false, Kind::Msi) => IndexSpec::At(0),
                (false, _) => IndexSpec::At(first),
            };
            let pasid = (pasid_on && kind == Kind::Ims).then_some(pasid);
            strategies::targets(usize::from(max))
                .prop_map(move |t| (kind, index, min, max, pasid, t))
        })
}

fn range_parts() -> impl Strategy<Value = (IndexRange, Vec<Target>)> {
    (kind(), 0u32..1_000_000, 1u16..=MAX_BATCH).prop_flat_map(|(kind, first, count)| {
        strategies::targets(usize::from(count))
            .prop_map(move |t| (IndexRange { kind, first, count }, t))
    })
}

fn round_trip_request(request: &Request<'_>) {
    let mut buf = vec![0u8; request.encoded_len()];
    let len = request.encode(&mut buf).expect("valid requests encode");
    assert_eq!(len, buf.len());
    assert_eq!(
        Request::decode(&buf, Negotiated::v1(MAX_BATCH)).as_ref(),
        Ok(request)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn alloc_requests_round_trip(device: u32, tag: u64, parts in alloc_parts()) {
        let (kind, index, min, max, pasid, targets) = parts;
        let targeting = Targeting::PerVector;
        let op = Operation::Alloc(Alloc { kind, index, min, max, pasid, targeting, targets: &targets });
        round_trip_request(&Request { device, tag, op });
    }

    #[test]
    fn other_requests_round_trip(device: u32, tag: u64, parts in range_parts(), which in 0..4u8) {
        let (range, targets) = parts;
        let op = match which {
            0 => Operation::Query,
            1 => Operation::Reset,
            2 => Operation::Free(range.into()),
            _ => Operation::Retarget(Retarget::run(range, &targets)),
        };
        round_trip_request(&Request { device, tag, op });
    }

    #[test]
    fn responses_round_trip(
        opcode in 1u8..=5,
        device: u32,
        tag: u64,
        count: u32,
        quota_remaining: u32,
        grants in prop::collection::vec((any::<u32>(), any::<u64>(), any::<u32>()), 1..40),
        refused in prop::option::of(strategies::refusal(false)),
        info in (0u32..8, 0u32..=5, any::<u16>(), any::<u32>(), any::<u32>()),
        mutation in (any::<prop::sample::Index>(), any::<u8>(), 0usize..20),
    ) {
        let grants: Vec<Grant> = grants
            .into_iter()
            .map(|(index, address, data)| Grant::new(index, MsiMessage { address, data }))
            .collect();
        let (kinds, msi_shift, msix_table_size, ims_slots, granted) = info;
        let outcome = match (refused, opcode) {
            (Some(r), _) => Outcome::Refused(r),
            (None, 1) => Outcome::Queried {
                info: DeviceInfo {
                    kinds: KindSet::from_bits(kinds).expect("3 defined bits"),
                    msi_max: 1 << msi_shift,
                    msix_table_size,
                    ims_slots,
                    granted,
                    vm_quota: count,
                    available: quota_remaining / 2,
                    ext: None,
                },
                quota_remaining,
            },
            (None, 2) => Outcome::Allocated { grants: GrantSlice::Basic(&grants), quota_remaining },
            (None, 3) => Outcome::Freed { count, quota_remaining },
            (None, 4) => Outcome::Retargeted { count, quota_remaining },
            (None, _) => Outcome::Reset { count, quota_remaining },
        };
        let response = Response { opcode, device, tag, outcome };
        let mut buf = vec![0u8; response.encoded_len()];
        prop_assert_eq!(response.encode(&mut buf), Ok(buf.len()));
        prop_assert_eq!(response.required_features(), 0);
        prop_assert_eq!(Response::decode(&buf, feature::V1), Ok(response));
        // A driver that copies the header apart from the body decodes the same way: this
        // reply, and the same with one byte changed and the end cut off (every rejection).
        let (position, value, cut) = mutation;
        let mut mutated = buf.clone();
        mutated[position.index(buf.len())] = value;
        mutated.truncate(buf.len().saturating_sub(cut).max(RESPONSE_HEADER_LEN));
        for bytes in [&buf, &mutated] {
            let (header, body) = bytes.split_first_chunk::<RESPONSE_HEADER_LEN>().unwrap();
            for features in [feature::V1, feature::ALL] {
                prop_assert_eq!(
                    Response::decode_parts(header, body, features),
                    Response::decode(bytes, features)
                );
            }
        }
    }

    /// Decoding is total and canonical: arbitrary bytes never panic, under any feature
    /// word (defined bits or not, dependencies kept or not), and whatever decodes re-encodes
    /// to exactly the same bytes (so no two encodings mean the same request, response or
    /// event).
    #[test]
    fn arbitrary_bytes_never_panic_and_decoding_is_canonical(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        max_batch: u16,
        features in prop_oneof![Just(feature::V1), Just(feature::ALL), any::<u64>()],
    ) {
        canonical(&bytes, Negotiated::new(max_batch, features))?;
    }

    /// The same near valid extended requests and responses, where the decoders' new
    /// branches are: one byte changed, the end cut.
    #[test]
    fn mutated_extended_messages_never_panic_and_stay_canonical(
        request in extended_request(),
        response in extended_response(),
        position: prop::sample::Index,
        value: u8,
        cut in 0usize..6,
        features in prop_oneof![Just(feature::ALL), any::<u64>()],
    ) {
        for mut bytes in [request.bytes(), response.bytes()] {
            let at = position.index(bytes.len());
            bytes[at] = value;
            bytes.truncate(bytes.len().saturating_sub(cut));
            canonical(&bytes, Negotiated::new(MAX_BATCH, features))?;
        }
    }

    /// Every extended request round-trips on a channel with every feature, and on one with
    /// just the features it says it needs: `required_features` is enough.
    #[test]
    fn extended_requests_round_trip(request in extended_request()) {
        let bytes = request.bytes();
        let request = request.request();
        prop_assert_eq!(bytes.len(), request.encoded_len());
        let all = Negotiated::new(MAX_BATCH, feature::ALL);
        prop_assert_eq!(Request::decode(&bytes, all), Ok(request));
        let needed = Negotiated::new(MAX_BATCH, feature::V1 | request.required_features());
        prop_assert_eq!(feature::missing_dependency(needed.features), None);
        prop_assert_eq!(Request::decode(&bytes, needed), Ok(request));
    }

    /// Every extended response round-trips for a driver with the features it needs.
    #[test]
    fn extended_responses_round_trip(response in extended_response()) {
        let bytes = response.bytes();
        let response = response.response();
        prop_assert_eq!(bytes.len(), response.encoded_len());
        prop_assert_eq!(Response::decode(&bytes, feature::ALL), Ok(response));
        let needed = feature::V1 | response.required_features();
        prop_assert_eq!(Response::decode(&bytes, needed), Ok(response));
    }

    /// Events round-trip, and their text names the type and the device.
    #[test]
    fn events_round_trip(event in event()) {
        let mut buf = [0u8; pvirq_proto::EVENT_LEN];
        prop_assert_eq!(event.encode(&mut buf), Ok(pvirq_proto::EVENT_LEN));
        prop_assert_eq!(Event::decode(&buf), Ok(event));
        let text = event.to_string();
        let expected_prefix = format!("event seq={} {}", event.sequence, event.body.event_type());
        prop_assert!(text.starts_with(&expected_prefix), "{}", text);
    }

    /// Every rejection maps to a refusal a device can send, and a driver with a valid
    /// feature set without `INFO` is never told an extended code.
    #[test]
    fn rejections_map_to_refusals_a_driver_can_decode(
        bytes in prop::collection::vec(any::<u8>(), 0..120),
        request in extended_request(),
        position: prop::sample::Index,
        value: u8,
        features in any::<u64>(),
    ) {
        let mut mutated = request.bytes();
        let at = position.index(mutated.len());
        mutated[at] = value;
        for bytes in [&bytes, &mutated] {
            for features in [features, features & feature::ALL, feature::V1, feature::ALL] {
                if let Err(error) = Request::decode(bytes, Negotiated::new(MAX_BATCH, features)) {
                    let refusal = error.refusal();
                    let (status, detail, info) = refusal.to_wire();
                    prop_assert_eq!(Refusal::from_wire(status, detail, info), Some(refusal));
                    let valid = feature::missing_dependency(features).is_none();
                    if valid && features & feature::INFO == 0 {
                        prop_assert!(!refusal.needs_info(), "{} under {:#x}", refusal, features);
                    }
                }
            }
        }
    }

    /// Mostly-valid requests with one byte changed: the interesting neighbourhood of the
    /// decoder. Never a panic; any success is canonical.
    #[test]
    fn mutated_valid_requests_never_panic(
        parts in alloc_parts(),
        position: prop::sample::Index,
        value: u8,
        cut in 0usize..8,
    ) {
        let (kind, index, min, max, pasid, targets) = parts;
        let targeting = Targeting::PerVector;
        let op = Operation::Alloc(Alloc { kind, index, min, max, pasid, targeting, targets: &targets });
        let request = Request { device: 1, tag: 2, op };
        let mut bytes = vec![0u8; request.encoded_len()];
        request.encode(&mut bytes).expect("valid");
        let at = position.index(bytes.len());
        bytes[at] = value;
        bytes.truncate(bytes.len().saturating_sub(cut));
        if let Ok(decoded) = Request::decode(&bytes, Negotiated::v1(MAX_BATCH)) {
            let mut out = vec![0u8; bytes.len()];
            prop_assert_eq!(decoded.encode(&mut out), Ok(bytes.len()));
        }
    }

    #[test]
    fn msi_decoders_are_total_and_round_trip(address: u64, data: u32) {
        let message = MsiMessage { address, data };
        if let Ok(remap) = RemappableMsi::decode(message) {
            prop_assert_eq!(remap.message(), message);
        }
        if let Ok(compat) = CompatMsi::decode(message) {
            // Bit 14 (assert) is not kept for edge-triggered messages; everything else is.
            let again = compat.message();
            prop_assert_eq!(again.address, message.address);
            prop_assert_eq!(again.data & !(1 << 14), message.data & !(1 << 14));
        }
    }

    #[test]
    fn remappable_messages_round_trip(handle: u16, subhandle: Option<u16>) {
        let msi = RemappableMsi { handle, subhandle };
        prop_assert_eq!(RemappableMsi::decode(msi.message()), Ok(msi));
    }

    #[test]
    fn compat_messages_round_trip(dest_id: u32, vector: u8, mode in 0usize..6, flags in 0u8..8) {
        let delivery = [
            DeliveryMode::Fixed,
            DeliveryMode::LowestPriority,
            DeliveryMode::Smi,
            DeliveryMode::Nmi,
            DeliveryMode::Init,
            DeliveryMode::ExtInt,
        ][mode];
        let msi = CompatMsi {
            dest_id,
            vector,
            delivery,
            logical: flags & 1 != 0,
            redirection_hint: flags & 2 != 0,
            level_triggered: flags & 4 != 0,
        };
        prop_assert_eq!(CompatMsi::decode(msi.message()), Ok(msi));
    }
}

/// Whatever decodes re-encodes to the same bytes; never a panic.
fn canonical(bytes: &[u8], negotiated: Negotiated) -> Result<(), TestCaseError> {
    if let Ok(request) = Request::decode(bytes, negotiated) {
        let mut out = vec![0u8; bytes.len()];
        prop_assert_eq!(request.encode(&mut out), Ok(bytes.len()));
        prop_assert_eq!(&out[..], bytes);
        prop_assert!(request.max_response_len(negotiated.features) >= 24);
    }
    if let Ok(response) = Response::decode(bytes, negotiated.features) {
        let mut out = vec![0u8; bytes.len()];
        prop_assert_eq!(response.encode(&mut out), Ok(bytes.len()));
        prop_assert_eq!(&out[..], bytes);
        prop_assert_eq!(response.required_features() & !negotiated.features, 0);
    }
    if let Ok(event) = Event::decode(bytes) {
        let mut out = vec![0u8; bytes.len()];
        prop_assert_eq!(event.encode(&mut out), Ok(bytes.len()));
        prop_assert_eq!(&out[..], bytes);
    }
    Ok(())
}

#[test]
fn encode_refuses_a_short_buffer_and_mismatched_target_counts() {
    let targets = [Target::new(0, 0x30)];
    let alloc = |max| {
        Operation::Alloc(Alloc {
            kind: Kind::MsiX,
            index: IndexSpec::Any,
            min: 1,
            max,
            pasid: None,
            targeting: Targeting::PerVector,
            targets: &targets,
        })
    };
    let request = Request {
        device: 0,
        tag: 0,
        op: alloc(1),
    };
    let mut small = [0u8; 39];
    assert_eq!(
        request.encode(&mut small),
        Err(Error::BufferTooSmall {
            needed: 40,
            got: 39
        })
    );
    let mismatched = Request {
        device: 0,
        tag: 0,
        op: alloc(2),
    };
    let mut buf = [0u8; 64];
    assert_eq!(
        mismatched.encode(&mut buf),
        Err(Error::EntryCountMismatch {
            expected: 2,
            got: 1
        })
    );
    let invalid = Request {
        device: 0,
        tag: 0,
        op: Operation::Alloc(Alloc {
            kind: Kind::MsiX,
            index: IndexSpec::Any,
            min: 1,
            max: 1,
            pasid: None,
            targeting: Targeting::PerVector,
            targets: &[Target::new(0, 0x10)],
        }),
    };
    assert_eq!(
        invalid.encode(&mut buf),
        Err(Error::VectorOutOfRange {
            entry: 0,
            vector: 0x10
        })
    );
}

#[test]
fn response_encode_refuses_an_outcome_of_another_opcode() {
    let response = Response {
        opcode: 2,
        device: 0,
        tag: 0,
        outcome: Outcome::Freed {
            count: 1,
            quota_remaining: 0,
        },
    };
    let mut buf = [0u8; 64];
    assert_eq!(response.encode(&mut buf), Err(Error::OutcomeMismatch(2)));
    let empty = Response {
        opcode: 2,
        device: 0,
        tag: 0,
        outcome: Outcome::Allocated {
            grants: GrantSlice::Basic(&[]),
            quota_remaining: 0,
        },
    };
    assert_eq!(empty.encode(&mut buf), Err(Error::InvalidResponseCount(0)));
}

#[test]
fn max_response_len_covers_every_possible_reply() {
    let targets = vec![Target::new(0, 0x30); 16];
    let alloc = Request {
        device: 0,
        tag: 0,
        op: Operation::Alloc(Alloc::any(Kind::MsiX, 1, &targets)),
    };
    assert_eq!(alloc.max_response_len(feature::V1), 24 + 16 * 16);
    assert_eq!(alloc.max_response_len(feature::ALL), 24 + 24 * 16);
    let query = Request {
        device: 0,
        tag: 0,
        op: Operation::Query,
    };
    assert_eq!(query.max_response_len(feature::V1), 48);
    assert_eq!(query.max_response_len(feature::V1 | feature::INFO), 88);
    assert_eq!(
        Request {
            device: 0,
            tag: 0,
            op: Operation::Reset
        }
        .max_response_len(feature::ALL),
        24
    );
}
