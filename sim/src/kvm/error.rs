//! The one error type of the KVM guest.

use std::time::Duration;

use super::counts::InterruptCounts;

/// What failed while building, running or stopping a [`KvmGuest`](super::KvmGuest).
#[derive(Debug, thiserror::Error)]
pub enum KvmGuestError {
    /// The vCPU count is 0 or above [`MAX_VCPUS`](super::MAX_VCPUS).
    #[error("{requested} vCPUs requested; 1..={max} supported")]
    VcpuCount {
        /// vCPUs asked for.
        requested: usize,
        /// The most the guest layout holds.
        max: usize,
    },
    /// The memory size is not a multiple of 4 KiB or outside
    /// [`MIN_MEM_SIZE`](super::MIN_MEM_SIZE)..=[`MAX_MEM_SIZE`](super::MAX_MEM_SIZE).
    #[error("guest memory of {size:#x} bytes: must be 4 KiB-aligned, {min:#x}..={max:#x}")]
    MemorySize {
        /// Bytes asked for.
        size: usize,
        /// Least accepted.
        min: usize,
        /// Most accepted.
        max: usize,
    },
    /// The VMM could not build, run or stop the VM.
    #[error(transparent)]
    Vmm(#[from] crate::vmm::VmmError),
    /// The vCPU index is not one of this guest's.
    #[error("no vCPU {vcpu}; the guest has {count}")]
    NoSuchVcpu {
        /// Index asked for.
        vcpu: usize,
        /// vCPUs the guest has.
        count: usize,
    },
    /// `KVM_SIGNAL_MSI` failed.
    #[error("KVM_SIGNAL_MSI to vCPU {vcpu} failed: {source}")]
    SignalMsi {
        /// Target vCPU index.
        vcpu: usize,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// The awaited counts did not appear within the timeout.
    #[error("timed out after {timeout:?}; counts were {last:?}")]
    WaitTimeout {
        /// How long we waited.
        timeout: Duration,
        /// The last counts seen.
        last: InterruptCounts,
    },
    /// A vCPU stopped running while we waited for it; `shutdown` reports why.
    #[error("vCPU {vcpu} is no longer running")]
    VcpuStopped {
        /// vCPU index.
        vcpu: usize,
    },
}
