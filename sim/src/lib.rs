//! pvirq simulator library.
#![deny(missing_docs)]
pub mod kvm;
