//! End-to-end tests of pvirq live in `tests/tests/`; this library holds their shared helpers.
#![deny(missing_docs)]

pub mod model;
