//! The pvirq virtio device, laid out as Firecracker's devices are:
//! - [`device`]: state, negotiation, activation, queue processing;
//! - [`request`]: reading a request from a chain and writing its reply;
//! - [`event_handler`]: the `event-manager` subscriber owning the queue eventfd;
//! - [`mmio`]: the virtio-mmio v2 register front;
//! - [`metrics`]: counters for the VMM.

// `device/device.rs` is Firecracker's layout, kept on purpose.
#[cfg(test)]
mod chain_tests;
#[allow(clippy::module_inception)]
pub mod device;
pub mod event_handler;
pub mod metrics;
pub mod mmio;
#[cfg(test)]
mod mmio_tests;
pub mod request;
#[cfg(test)]
pub(crate) mod test_utils;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod virtio_drivers_shim;

pub use device::{
    DEFAULT_BUDGET, InterruptType, Processed, PvirqDevice, QUEUE_SIZE, VirtioInterrupt,
};
pub use metrics::{MetricsSnapshot, PvirqMetrics};
pub use mmio::{MmioInterrupt, MmioTransport, NotifyMode};
