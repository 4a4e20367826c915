//! Target `proto_decode`: arbitrary bytes decoded as a request (against an arbitrary
//! `max_batch` and feature set), a response (under the same features), an event and MSI
//! messages. Decoding must never panic, and whatever decodes must re-encode to exactly the
//! input: decoding is canonical.
//!
//! Input: `max_batch` (2 bytes, little-endian), a feature selector (2 bytes: bits 0–12 are
//! the device-specific feature bits 0–12, bit 13 `ACCESS_PLATFORM`, bit 14 picks the raw
//! word, dependencies unchecked, bit 15 `VERSION_1`), then the message.

use pvirq_proto::{
    CompatMsi, Event, MsiMessage, Negotiated, Refusal, RemappableMsi, Request, Response, feature,
};

/// The feature set a selector names. Without bit 14, bits whose prerequisite is missing
/// are dropped, as a device would never accept them (spec §2.2 [DEV-23]).
fn features(selector: u16) -> u64 {
    let selector = u64::from(selector);
    let mut features = selector & feature::DEVICE_DEFINED;
    if selector & 1 << 13 != 0 {
        features |= feature::ACCESS_PLATFORM;
    }
    if selector & 1 << 15 != 0 {
        features |= feature::VERSION_1;
    }
    if selector & 1 << 14 == 0 {
        while let Some(bit) = feature::missing_dependency(features) {
            features &= !bit;
        }
    }
    features
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((batch, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let Some((selector, bytes)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let negotiated = Negotiated::new(
        u16::from_le_bytes(*batch),
        features(u16::from_le_bytes(*selector)),
    );
    let valid_set = feature::missing_dependency(negotiated.features).is_none();
    let mut out = vec![0u8; bytes.len()];
    match Request::decode(bytes, negotiated) {
        Ok(request) => {
            assert_eq!(request.encode(&mut out), Ok(bytes.len()));
            assert_eq!(out, bytes);
            assert!(
                request.max_response_len(negotiated.features) >= pvirq_proto::RESPONSE_HEADER_LEN
            );
            // What decoded uses only what was negotiated, or version 1's bytes.
            if valid_set {
                let extensions = request.required_features() & feature::EXTENSIONS;
                assert_eq!(extensions & !negotiated.features, 0);
            }
        }
        Err(error) => {
            // Every rejection maps to a refusal a device can send, and a driver without
            // INFO is never told an extended code.
            let refusal = error.refusal();
            let (status, detail, info) = refusal.to_wire();
            assert_eq!(Refusal::from_wire(status, detail, info), Some(refusal));
            if valid_set && negotiated.features & feature::INFO == 0 {
                assert!(!refusal.needs_info());
            }
        }
    }
    if let Ok(response) = Response::decode(bytes, negotiated.features) {
        assert_eq!(response.encode(&mut out), Ok(bytes.len()));
        assert_eq!(out, bytes);
        assert_eq!(response.required_features() & !negotiated.features, 0);
    }
    if let Ok(event) = Event::decode(bytes) {
        assert_eq!(event.encode(&mut out), Ok(bytes.len()));
        assert_eq!(out, bytes);
    }
    if let Some((address, rest)) = bytes.split_first_chunk::<8>()
        && let Some((data, _)) = rest.split_first_chunk::<4>()
    {
        let message = MsiMessage {
            address: u64::from_le_bytes(*address),
            data: u32::from_le_bytes(*data),
        };
        if let Ok(remappable) = RemappableMsi::decode(message) {
            assert_eq!(remappable.message(), message);
        }
        let _ = CompatMsi::decode(message);
    }
}
