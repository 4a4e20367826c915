//! The VFIO backend's refusals, driven through the transaction path: a VM on VFIO-backed
//! devices over the model of the kernel, whose calls and route layer fail where the input
//! says, with the errno it says; after every refusal nothing is held. Input format:
//! `pvirq_fuzz_common::vfio::VfioInput`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvirq_fuzz_common::vfio::{VfioInput, run};
use pvirq_fuzz_common::wire::Wire;

fuzz_target!(|data: &[u8]| {
    run(&VfioInput::from_bytes(data));
});
