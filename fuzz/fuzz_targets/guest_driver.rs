//! The guest driver against a fake device answering with fuzzer-chosen used ids, used
//! lengths and response bytes: it must never panic, and what it returns as success must
//! keep its promises. Input format: `pvirq_fuzz_common::driver::DriverInput`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvirq_fuzz_common::driver::{DriverInput, run};
use pvirq_fuzz_common::wire::Wire;

fuzz_target!(|data: &[u8]| {
    run(&DriverInput::from_bytes(data));
});
