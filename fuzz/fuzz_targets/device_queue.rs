//! The host's virtio device fed arbitrary guest memory, ring state and descriptor chains;
//! the invariants are checked after every request, another VM must stay untouched, and a
//! device reset must release everything. Input format:
//! `pvirq_fuzz_common::device::DeviceInput`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvirq_fuzz_common::device::{DeviceInput, run};
use pvirq_fuzz_common::wire::Wire;

fuzz_target!(|data: &[u8]| {
    run(&DeviceInput::from_bytes(data));
});
