//! pvirq wire format.
#![no_std]
#![deny(missing_docs)]
