//! Decodes arbitrary bytes as a request (against an arbitrary `max_batch` and features), a
//! response, an event and MSI messages. Decoding must never panic, and whatever decodes
//! must re-encode to exactly the input: decoding is canonical. Harness:
//! `pvirq_fuzz_common::proto`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pvirq_fuzz_common::proto::run(data);
});
