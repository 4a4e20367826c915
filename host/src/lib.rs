//! pvirq host backend.
#![deny(missing_docs)]
pub mod kvm;
