//! Property tests: encoding round-trips, and decoding arbitrary bytes never panics.

use proptest::prelude::*;
use pvirq_proto::{
    Alloc, CompatMsi, DeliveryMode, DeviceInfo, Error, Field, Grant, IndexRange, IndexSpec, Kind,
    KindSet, MsiMessage, Operation, Outcome, RESPONSE_HEADER_LEN, Refusal, RemappableMsi, Request,
    Resource, Response, Retarget, Target,
};

const MAX_BATCH: u16 = 64;

fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(Kind::ALL.to_vec())
}

fn targets(n: usize) -> impl Strategy<Value = Vec<Target>> {
    prop::collection::vec((any::<u32>(), 0x20u8..=0xFF), n)
        .prop_map(|v| v.into_iter().map(|(c, vec)| Target::new(c, vec)).collect())
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
            targets(usize::from(max)).prop_map(move |t| (kind, index, min, max, pasid, t))
        })
}

fn range_parts() -> impl Strategy<Value = (IndexRange, Vec<Target>)> {
    (kind(), 0u32..1_000_000, 1u16..=MAX_BATCH).prop_flat_map(|(kind, first, count)| {
        targets(usize::from(count)).prop_map(move |t| (IndexRange { kind, first, count }, t))
    })
}

fn round_trip_request(request: &Request<'_>) {
    let mut buf = vec![0u8; request.encoded_len()];
    let len = request.encode(&mut buf).expect("valid requests encode");
    assert_eq!(len, buf.len());
    assert_eq!(Request::decode(&buf, MAX_BATCH).as_ref(), Ok(request));
}

fn refusal() -> impl Strategy<Value = Refusal> {
    let resource = prop::sample::select(Resource::ALL.to_vec());
    let field = prop::sample::select(Field::ALL.to_vec());
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn alloc_requests_round_trip(device: u32, tag: u64, parts in alloc_parts()) {
        let (kind, index, min, max, pasid, targets) = parts;
        let op = Operation::Alloc(Alloc { kind, index, min, max, pasid, targets: &targets });
        round_trip_request(&Request { device, tag, op });
    }

    #[test]
    fn other_requests_round_trip(device: u32, tag: u64, parts in range_parts(), which in 0..4u8) {
        let (range, targets) = parts;
        let op = match which {
            0 => Operation::Query,
            1 => Operation::Reset,
            2 => Operation::Free(range),
            _ => Operation::Retarget(Retarget { range, targets: &targets }),
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
        refused in prop::option::of(refusal()),
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
                },
                quota_remaining,
            },
            (None, 2) => Outcome::Allocated { grants: &grants, quota_remaining },
            (None, 3) => Outcome::Freed { count, quota_remaining },
            (None, 4) => Outcome::Retargeted { count, quota_remaining },
            (None, _) => Outcome::Reset { count, quota_remaining },
        };
        let response = Response { opcode, device, tag, outcome };
        let mut buf = vec![0u8; response.encoded_len()];
        prop_assert_eq!(response.encode(&mut buf), Ok(buf.len()));
        prop_assert_eq!(Response::decode(&buf), Ok(response));
        // A driver that copies the header apart from the body decodes the same way: this
        // reply, and the same with one byte changed and the end cut off (every rejection).
        let (position, value, cut) = mutation;
        let mut mutated = buf.clone();
        mutated[position.index(buf.len())] = value;
        mutated.truncate(buf.len().saturating_sub(cut).max(RESPONSE_HEADER_LEN));
        for bytes in [&buf, &mutated] {
            let (header, body) = bytes.split_first_chunk::<RESPONSE_HEADER_LEN>().unwrap();
            prop_assert_eq!(Response::decode_parts(header, body), Response::decode(bytes));
        }
    }

    /// Decoding is total and canonical: arbitrary bytes never panic, and whatever decodes
    /// re-encodes to exactly the same bytes (so no two encodings mean the same request).
    #[test]
    fn arbitrary_bytes_never_panic_and_decoding_is_canonical(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        max_batch: u16,
    ) {
        if let Ok(request) = Request::decode(&bytes, max_batch) {
            let mut out = vec![0u8; bytes.len()];
            prop_assert_eq!(request.encode(&mut out), Ok(bytes.len()));
            prop_assert_eq!(&out, &bytes);
        }
        if let Ok(response) = Response::decode(&bytes) {
            let mut out = vec![0u8; bytes.len()];
            prop_assert_eq!(response.encode(&mut out), Ok(bytes.len()));
            prop_assert_eq!(&out, &bytes);
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
        let op = Operation::Alloc(Alloc { kind, index, min, max, pasid, targets: &targets });
        let request = Request { device: 1, tag: 2, op };
        let mut bytes = vec![0u8; request.encoded_len()];
        request.encode(&mut bytes).expect("valid");
        let at = position.index(bytes.len());
        bytes[at] = value;
        bytes.truncate(bytes.len().saturating_sub(cut));
        if let Ok(decoded) = Request::decode(&bytes, MAX_BATCH) {
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
            grants: &[],
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
    assert_eq!(alloc.max_response_len(), 24 + 16 * 16);
    let query = Request {
        device: 0,
        tag: 0,
        op: Operation::Query,
    };
    assert_eq!(query.max_response_len(), 48);
    assert_eq!(
        Request {
            device: 0,
            tag: 0,
            op: Operation::Reset
        }
        .max_response_len(),
        24
    );
}
