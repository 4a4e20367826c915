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
    /// `/dev/kvm` could not be opened: KVM is missing or not accessible.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VM` failed.
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// A VM-wide setup ioctl failed (`step` names it).
    #[error("{step} failed: {source}")]
    VmSetup {
        /// The ioctl that failed.
        step: &'static str,
        /// Its error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be mapped.
    #[error("cannot map guest memory: {0}")]
    Memory(#[source] vm_memory::mmap::FromRangesError),
    /// Guest memory could not be accessed (loading the program, reading counters).
    #[error("guest memory access failed: {0}")]
    MemoryAccess(#[source] vm_memory::GuestMemoryError),
    /// `KVM_SET_USER_MEMORY_REGION` failed.
    #[error("cannot register guest memory with KVM: {0}")]
    RegisterMemory(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VCPU` failed.
    #[error("cannot create vCPU {vcpu}: {source}")]
    CreateVcpu {
        /// vCPU index.
        vcpu: usize,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// Setting a vCPU's registers failed (`step` names the ioctl).
    #[error("cannot set up vCPU {vcpu} ({step}): {source}")]
    SetupVcpu {
        /// vCPU index.
        vcpu: usize,
        /// The ioctl that failed.
        step: &'static str,
        /// Its error.
        source: kvm_ioctls::Error,
    },
    /// The vCPU thread could not be started.
    #[error("cannot spawn the thread of vCPU {vcpu}: {source}")]
    SpawnVcpu {
        /// vCPU index.
        vcpu: usize,
        /// The spawn error.
        source: std::io::Error,
    },
    /// These vCPUs did not enable their APIC within the timeout.
    #[error("vCPUs {vcpus:?} not ready after {timeout:?}")]
    NotReady {
        /// vCPU indices that never set their ready flag.
        vcpus: Vec<usize>,
        /// How long we waited.
        timeout: Duration,
    },
    /// `KVM_RUN` failed.
    #[error("KVM_RUN on vCPU {vcpu} failed: {source}")]
    Run {
        /// vCPU index.
        vcpu: usize,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// The vCPU exited to the VMM for a reason the guest program never causes.
    #[error("vCPU {vcpu} exited unexpectedly: {exit}")]
    UnexpectedExit {
        /// vCPU index.
        vcpu: usize,
        /// The exit, as `VcpuExit`'s debug text.
        exit: String,
    },
    /// The guest took a CPU exception (a bug in the guest program or its setup).
    #[error("vCPU {vcpu} took CPU exception {vector}")]
    GuestException {
        /// vCPU index.
        vcpu: usize,
        /// Exception vector (0–31).
        vector: u8,
    },
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
    /// These vCPU threads did not stop within the timeout; they were left detached.
    #[error("vCPUs {vcpus:?} did not stop")]
    ShutdownTimeout {
        /// vCPU indices still running.
        vcpus: Vec<usize>,
    },
}
