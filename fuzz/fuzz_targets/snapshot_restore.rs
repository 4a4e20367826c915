//! A saved device state or VM snapshot from hostile bytes, deserialised and restored:
//! never a panic, typed errors with nothing held, and a restored VM within its quota.
//! Input format: `pvirq_fuzz_common::snapshot::SnapshotInput`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvirq_fuzz_common::snapshot::{SnapshotInput, run};
use pvirq_fuzz_common::wire::Wire;

fuzz_target!(|data: &[u8]| {
    run(&SnapshotInput::from_bytes(data));
});
