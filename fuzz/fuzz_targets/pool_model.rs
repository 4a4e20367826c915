//! Sequences of QUERY / ALLOC / FREE / RETARGET / RESET, virtio resets and device
//! interrupts from several VMs against one small pool, compared step by step with the
//! reference model (`pvirq_tests::model`); everything is released after the final reset.
//! Input format: `pvirq_fuzz_common::pool::PoolInput`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvirq_fuzz_common::pool::{PoolInput, run};
use pvirq_fuzz_common::wire::Wire;

fuzz_target!(|data: &[u8]| {
    run(&PoolInput::from_bytes(data));
});
