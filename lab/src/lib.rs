//! The VFIO lab: `pvirq_host::vfio::VfioBackend` against a real Linux 6.12 kernel with
//! VT-d interrupt remapping and VFIO, inside QEMU, on an emulated NVMe controller with
//! 2048 MSI-X vectors bound to `vfio-pci`.
//!
//! - In the guest ([`checks`], run by the `pvirq-vfio-guest` binary): the backend through
//!   the `InterruptBackend` trait until the kernel refuses, free and re-grant, batches,
//!   a failure walk, and an NVMe completion arriving on the trigger's eventfd. It prints
//!   one [`report::LabReport`] line on the console.
//! - Then the same through the whole pvirq path ([`pvirq_path`]): guest driver, ring,
//!   virtio device, transaction, `VfioBackend`, over `pvirq_sim::Channel`; and the cost
//!   per vector of a grant against the bare `VFIO_DEVICE_SET_IRQS`, in the same run.
//! - Then every failure point of that path ([`path_faults`]): route stage and commit,
//!   each `VFIO_DEVICE_SET_IRQS` of the enable, each write of the reply; after each,
//!   nothing held in the kernel, the backend or the VM's books, and a retry succeeds.
//! - On the host ([`lab_env`], [`initramfs`], [`qemu`]): find the kernel and QEMU that
//!   `.ci/vfio-lab-setup.sh` installed, build an initramfs around the binary, boot it and
//!   read the report back. `tests/vfio_qemu.rs` asserts on it.
#![deny(missing_docs)]

pub mod checks;
pub mod eventfd_wait;
pub mod initramfs;
pub mod lab_env;
pub mod nvme;
pub mod path_faults;
pub mod procfs;
pub mod pvirq_path;
pub mod qemu;
pub mod report;
pub mod routes;
