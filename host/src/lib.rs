//! pvirq host backend.
#![deny(missing_docs)]

pub mod error;
pub mod layers;

pub use error::{HostError, LayerError};
