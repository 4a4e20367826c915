//! pvirq host backend.
#![deny(missing_docs)]

pub mod device;
pub mod error;
pub mod grants;
pub mod invariants;
pub mod layers;
pub mod pool;
pub mod transaction;
pub mod vm;

pub use device::{MmioInterrupt, MmioTransport, NotifyMode, PvirqDevice, VirtioInterrupt};
pub use error::{HostError, LayerError, ReplyError};
pub use pool::{Delivery, Fault, FaultReason, FaultReport, Host, HostConfig, HostOccupancy, VmId};
pub use transaction::{BufferSink, Handled, ReplySink};
pub use vm::{DeviceSpec, Vm, VmConfig, VmOccupancy};
