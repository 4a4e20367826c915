//! pvirq host backend.
#![deny(missing_docs)]
