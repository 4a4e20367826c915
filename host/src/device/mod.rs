//! The pvirq virtio device, laid out as Firecracker's devices are:
//! - [`device`]: state, negotiation, the activate/reset lifecycle, pause and resume;
//! - `process`: queue processing; `eventq`: writing events into the event queue;
//! - `changes`: what the VMM changes while the device runs (quota, shares, hotplug);
//! - [`request`]: reading a request from a chain and writing its reply;
//! - [`event_handler`]: the `event-manager` subscriber owning the queue eventfd;
//! - [`mmio`]: the virtio-mmio v2 transport (a `vm-device` bus device);
//! - [`persist`]: snapshot and restore;
//! - [`metrics`]: counters for the VMM;
//! - `test_utils` (feature `test-utils`): the test driver the host's tests and the fuzz
//!   targets share.

// `device/device.rs` is Firecracker's layout, kept on purpose.
#[cfg(test)]
mod chain_tests;
mod changes;
#[cfg(test)]
mod changes_tests;
#[allow(clippy::module_inception)]
pub mod device;
mod error;
pub mod event_handler;
mod eventq;
#[cfg(test)]
mod eventq_tests;
#[cfg(test)]
mod lifecycle_tests;
pub mod metrics;
pub mod mmio;
#[cfg(test)]
mod mmio_tests;
#[cfg(test)]
mod negotiation_tests;
pub mod persist;
#[cfg(test)]
mod persist_events_tests;
#[cfg(test)]
mod persist_tests;
mod process;
pub mod request;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod virtio_drivers_shim;

pub use device::{
    ActiveParts, DEFAULT_BUDGET, EVENT_QUEUE_SIZE, InterruptType, Processed, PvirqDevice,
    QUEUE_SIZE, VirtioInterrupt,
};
pub use error::ActivateError;
pub use metrics::{MetricsSnapshot, PvirqMetrics};
pub use mmio::{MmioInterrupt, MmioRegisters, MmioTransport, NotifyMode};
pub use persist::{PersistError, PvirqDeviceState, QueueSnapshot, RestoreParts};
