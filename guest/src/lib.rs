//! pvirq guest driver library (see the crate README).
#![no_std]
#![deny(missing_docs)]
