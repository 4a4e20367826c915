//! A version-1 driver gets version 1's bytes and answers (spec §2.2 [DEV-24]): the decoders,
//! given a feature set without extension bits, behave exactly as version 1's decoders did
//! (`v1_reference`, frozen before the protocol grew), and an extension a driver did not
//! negotiate is refused exactly as version 1 refuses an undefined flag or a non-zero
//! reserved field (spec §5.3).

mod strategies;
mod v1_reference;

use proptest::prelude::*;
use pvirq_proto::{Field, Negotiated, Operation, Refusal, Request, Response, feature};
use strategies::{MAX_BATCH, extended_request, extended_response};

/// Feature words without an extension bit: version 1's bits, anything else unknown.
fn v1_features() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(feature::V1),
        any::<u64>().prop_map(|f| f & !feature::EXTENSIONS)
    ]
}

fn same_request_answer(bytes: &[u8], negotiated: Negotiated) -> Result<(), TestCaseError> {
    let now = Request::decode(bytes, negotiated).map(|r| r.to_string());
    let then = v1_reference::decode_request(bytes, negotiated.max_batch);
    prop_assert_eq!(now, then, "{:02x?} under {:#x}", bytes, negotiated.features);
    Ok(())
}

fn same_response_answer(bytes: &[u8], features: u64) -> Result<(), TestCaseError> {
    let now = Response::decode(bytes, features).map(|r| r.to_string());
    let then = v1_reference::decode_response(bytes);
    prop_assert_eq!(now, then, "{:02x?} under {:#x}", bytes, features);
    Ok(())
}

/// The refusal version 1 gives a request whose extension was not negotiated: FREE and
/// RETARGET read the flags byte as reserved unless `INDEX_LIST` or `PARKED` gives it
/// flags; everything else is an undefined flag.
fn expected_refusal(op: &Operation<'_>, features: u64) -> Refusal {
    let flags_byte = features & (feature::INDEX_LIST | feature::PARKED) != 0;
    let field = match op {
        Operation::Free(_) | Operation::Retarget(_) if !flags_byte => Field::BodyReserved,
        _ => Field::Flags,
    };
    Refusal::BadRequest { field, entry: 0 }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Arbitrary bytes: the same acceptance, the same text, the same error.
    #[test]
    fn arbitrary_requests_decode_as_version_1_did(
        bytes in prop::collection::vec(any::<u8>(), 0..160),
        max_batch: u16,
        features in v1_features(),
    ) {
        same_request_answer(&bytes, Negotiated::new(max_batch, features))?;
    }

    /// Requests using extensions, and their one-byte mutations, sent by a driver that
    /// negotiated none: version 1's answer, byte for byte.
    #[test]
    fn extended_requests_get_version_1_answers_without_the_features(
        request in extended_request(),
        position: prop::sample::Index,
        value: u8,
        mutate: bool,
        features in v1_features(),
    ) {
        let mut bytes = request.bytes();
        if mutate {
            let at = position.index(bytes.len());
            bytes[at] = value;
        }
        same_request_answer(&bytes, Negotiated::new(MAX_BATCH, features))?;
    }

    /// Responses, arbitrary or in the extended layouts, to a driver without `INFO`: the
    /// same acceptance, text and error as version 1's decoder.
    #[test]
    fn responses_decode_as_version_1_did_without_info(
        bytes in prop::collection::vec(any::<u8>(), 0..160),
        response in extended_response(),
        position: prop::sample::Index,
        value: u8,
        features in any::<u64>().prop_map(|f| f & !feature::INFO),
    ) {
        same_response_answer(&bytes, features)?;
        let mut extended = response.bytes();
        same_response_answer(&extended, features)?;
        let at = position.index(extended.len());
        extended[at] = value;
        same_response_answer(&extended, features)?;
    }

    /// What version 1 accepts means the same on every channel: extensions only give
    /// meaning to bytes version 1 refuses.
    #[test]
    fn version_1_requests_mean_the_same_under_every_feature_set(
        request in extended_request(),
        features: u64,
    ) {
        let bytes = request.bytes();
        let v1 = Request::decode(&bytes, Negotiated::v1(MAX_BATCH));
        if let Ok(v1) = v1 {
            prop_assert_eq!(v1.required_features() & feature::EXTENSIONS, 0);
            prop_assert_eq!(Request::decode(&bytes, Negotiated::new(MAX_BATCH, features)), Ok(v1));
        } else {
            prop_assert_ne!(request.request().required_features() & feature::EXTENSIONS, 0);
        }
    }

    /// A request that uses an extension the driver did not negotiate is refused as
    /// version 1 refuses an undefined flag or reserved byte, whatever else was negotiated.
    #[test]
    fn un_negotiated_extensions_are_refused_as_version_1_refuses(
        request in extended_request(),
        pick: prop::sample::Index,
    ) {
        let bytes = request.bytes();
        let value = request.request();
        let used = value.required_features() & feature::EXTENSIONS;
        let bits: Vec<u64> = (0..64).map(|b| 1u64 << b).filter(|b| used & b != 0).collect();
        if bits.is_empty() {
            return Ok(()); // A version-1 shape: the other properties cover it.
        }
        let dropped = bits[pick.index(bits.len())];
        // Dropping INFO drops everything that needs it: a device offers only valid sets.
        let mut features = feature::ALL & !dropped;
        while let Some(bit) = feature::missing_dependency(features) {
            features &= !bit;
        }
        let error = Request::decode(&bytes, Negotiated::new(MAX_BATCH, features))
            .expect_err("an extension that was not negotiated");
        prop_assert_eq!(error.refusal(), expected_refusal(&value.op, features), "{}", value);
    }
}

/// The frozen decoders agree with the version-1 test vectors, so the properties above
/// compare against what version 1 was.
#[test]
fn the_reference_decoders_agree_with_the_version_1_vectors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors");
    let mut checked = 0;
    for path in std::fs::read_dir(dir)
        .expect("spec/vectors")
        .map(|e| e.expect("entry").path())
    {
        if path.extension().is_none_or(|e| e != "vec") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        for entry in text.split("\n[").skip(1) {
            let mut fields = std::collections::BTreeMap::<&str, String>::new();
            let mut last = "";
            for line in entry.lines().skip(1) {
                if line.trim_start().starts_with('#') || line.trim().is_empty() {
                    continue;
                }
                if line.starts_with(char::is_whitespace) {
                    let v = fields.get_mut(last).expect("continued key");
                    v.push(' ');
                    v.push_str(line.trim());
                } else if let Some((k, v)) = line.split_once('=') {
                    last = k.trim();
                    fields.insert(last, v.trim().to_owned());
                }
            }
            if fields.contains_key("features") {
                continue; // Not a version-1 vector.
            }
            let bytes: Vec<u8> = match fields.get("bytes") {
                Some(b) => b
                    .split_whitespace()
                    .map(|p| u8::from_str_radix(p, 16).expect("hex"))
                    .collect(),
                None => continue,
            };
            match fields.get("type").map(String::as_str) {
                Some("request") => {
                    let max_batch: u16 = fields["max_batch"].parse().expect("max_batch");
                    let then = v1_reference::decode_request(&bytes, max_batch);
                    let now = Request::decode(&bytes, Negotiated::v1(max_batch));
                    assert_eq!(now.map(|r| r.to_string()), then, "{path:?} [{entry:.40}");
                    if let Some(text) = fields.get("text") {
                        assert_eq!(then.as_ref(), Ok(text));
                    }
                }
                Some("response") => {
                    let then = v1_reference::decode_response(&bytes);
                    let now = Response::decode(&bytes, feature::V1);
                    assert_eq!(now.map(|r| r.to_string()), then, "{path:?} [{entry:.40}");
                    if let Some(text) = fields.get("text") {
                        assert_eq!(then.as_ref(), Ok(text));
                    }
                }
                _ => continue,
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} request and response vectors");
}
