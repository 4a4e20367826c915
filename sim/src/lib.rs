//! pvirq simulator library.
#![deny(missing_docs)]
