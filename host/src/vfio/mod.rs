//! The VFIO backend: an assigned PCI device's MSI and MSI-X vectors reserved from the
//! host kernel, which owns IRTEs and CPU vectors, through `VFIO_DEVICE_SET_IRQS`.
//!
//! - [`VfioBackend`]: the [`crate::backend::InterruptBackend`] (enable at the granted
//!   indices, prefix ≥ `min`, dynamic MSI-X, `NoResize`, no IMS).
//! - [`errno`]: what each errno of the call means, as a [`crate::backend::BackendError`].
//! - [`IrqSet`]: the exact argument of one call; [`IrqHost`] the kernel behind a trait;
//!   [`VfioDeviceIrqs`] the real one; [`FailNth`] refuses chosen calls (failure walks);
//!   `fake_kernel` (feature `test-utils`) models the kernel's side for tests and fuzzing.
//! - [`VmmToken`]: the messages grants carry, for the VMM's trapped table emulation.
//! - [`open_device`]: container, group and device through rust-vmm `vfio-ioctls`.
//!
//! How a VMM plugs it in, and what it must still do itself: `docs/vfio.md`.

mod backend;
mod disable;
mod enable;
pub mod errno;
mod error;
mod fail;
mod irq_set;
mod kernel;
mod open;
mod state;
mod token;

#[cfg(any(test, feature = "test-utils"))]
pub mod fake_kernel;
#[cfg(test)]
mod tests;

pub use backend::VfioBackend;
pub use errno::IommuKind;
pub use error::VfioError;
pub use fail::FailNth;
pub use irq_set::{DETACH, IrqSet, vfio_index};
pub use kernel::{IrqHost, IrqInfo, VfioDeviceIrqs};
pub use open::{OpenedDevice, open_device};
pub use token::{TOKEN_ADDRESS_HIGH, TOKEN_ADDRESS_LOW, VmmToken};
