//! Target `proto_decode`: arbitrary bytes (after a 2-byte `max_batch`) decoded as a
//! request, a response and MSI messages. Decoding must never panic, and whatever decodes
//! must re-encode to exactly the input: decoding is canonical.

use pvirq_proto::{CompatMsi, MsiMessage, RemappableMsi, Request, Response};

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((batch, bytes)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_batch = u16::from_le_bytes(*batch);
    let mut out = vec![0u8; bytes.len()];
    match Request::decode(bytes, max_batch) {
        Ok(request) => {
            assert_eq!(request.encode(&mut out), Ok(bytes.len()));
            assert_eq!(out, bytes);
            assert!(request.max_response_len() >= pvirq_proto::RESPONSE_HEADER_LEN);
        }
        Err(error) => {
            // Every rejection maps to a refusal a device can send.
            let (status, detail, info) = error.refusal().to_wire();
            assert!(pvirq_proto::Refusal::from_wire(status, detail, info).is_some());
        }
    }
    if let Ok(response) = Response::decode(bytes) {
        assert_eq!(response.encode(&mut out), Ok(bytes.len()));
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
