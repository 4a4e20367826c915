//! The guest driver's event queue against a fake device writing fuzzer-chosen records under
//! fuzzer-chosen used ids and lengths, changing its configuration and answering requests in
//! between. Input format: `pvirq_fuzz_common::events::EventsInput`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvirq_fuzz_common::events::{EventsInput, run};
use pvirq_fuzz_common::wire::Wire;

fuzz_target!(|data: &[u8]| {
    run(&EventsInput::from_bytes(data));
});
