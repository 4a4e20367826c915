//! The VMM's error type.

use std::time::Duration;

/// What failed while building, running or commanding a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl on the VM failed (`step` names it).
    #[error("{step} failed: {source}")]
    Kvm {
        /// The ioctl.
        step: &'static str,
        /// Its error.
        source: kvm_ioctls::Error,
    },
    /// A KVM ioctl on a vCPU failed.
    #[error("vCPU {vcpu}: {step} failed: {source}")]
    Vcpu {
        /// vCPU index.
        vcpu: usize,
        /// The ioctl.
        step: &'static str,
        /// Its error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be mapped.
    #[error("cannot map guest memory: {0}")]
    Memory(#[source] vm_memory::mmap::FromRangesError),
    /// Guest memory could not be accessed.
    #[error("guest memory access failed: {0}")]
    MemoryAccess(#[source] vm_memory::GuestMemoryError),
    /// linux-loader refused the image.
    #[error("cannot load the guest image: {0}")]
    LoadImage(#[source] linux_loader::loader::Error),
    /// The image's boot header is not what the VMM expects.
    #[error("the guest image's boot header is wrong (magic {magic:#x}, ELF entry {entry:#x})")]
    BadImage {
        /// The magic read.
        magic: u64,
        /// The ELF entry.
        entry: u64,
    },
    /// The vCPU count is 0 or too large for the layout.
    #[error("{requested} vCPUs requested; 1..={max} supported")]
    VcpuCount {
        /// Asked for.
        requested: usize,
        /// The most.
        max: usize,
    },
    /// The vCPUs' APIC IDs are not one per vCPU, distinct, each at most `max`.
    #[error("APIC IDs {ids:?} for {vcpus} vCPUs: one each, distinct, at most {max}")]
    ApicIds {
        /// Asked for.
        ids: Vec<u32>,
        /// vCPUs.
        vcpus: usize,
        /// The largest the guest supports.
        max: u32,
    },
    /// The memory size is not 4 KiB-aligned or out of range.
    #[error("guest memory of {size:#x} bytes: must be 4 KiB-aligned, {min:#x}..={max:#x}")]
    MemorySize {
        /// Asked for.
        size: usize,
        /// Least.
        min: usize,
        /// Most.
        max: usize,
    },
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// An eventfd could not be made.
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// Devices could not be placed on the bus.
    #[error("MMIO bus: {0:?}")]
    Bus(vm_device::bus::Error),
    /// A vCPU stopped on an exception in the guest.
    #[error("vCPU {vcpu}: guest exception, vector {vector:#x}, frame {frame:x?}")]
    GuestException {
        /// vCPU index.
        vcpu: usize,
        /// The vector (0xFF: the image panicked).
        vector: u8,
        /// The exception frame from the guest's stack: (error code,) RIP, CS, RFLAGS, RSP, SS.
        frame: [u64; 6],
    },
    /// A vCPU exited in a way the VMM does not handle.
    #[error("vCPU {vcpu}: unexpected exit {exit}")]
    UnexpectedExit {
        /// vCPU index.
        vcpu: usize,
        /// What it was.
        exit: String,
    },
    /// A vCPU's thread is gone.
    #[error("vCPU {vcpu} has stopped")]
    VcpuStopped {
        /// vCPU index.
        vcpu: usize,
    },
    /// vCPUs did not get ready in time.
    #[error("vCPUs {vcpus:?} not ready after {timeout:?}")]
    NotReady {
        /// The vCPUs still waiting.
        vcpus: Vec<usize>,
        /// How long the VMM waited.
        timeout: Duration,
    },
    /// The guest did not answer a command in time.
    #[error("the guest did not answer {op} within {timeout:?}")]
    CommandTimeout {
        /// The command.
        op: String,
        /// How long the VMM waited.
        timeout: Duration,
    },
    /// The guest's report is malformed.
    #[error("the guest's report is malformed: {0}")]
    BadReport(&'static str),
    /// vCPU threads did not stop in time.
    #[error("vCPUs {vcpus:?} did not stop")]
    ShutdownTimeout {
        /// The vCPUs still running.
        vcpus: Vec<usize>,
    },
    /// The pvirq host refused the VM's setup.
    #[error("pvirq host: {0}")]
    Host(#[from] pvirq_host::HostError),
    /// A KVM route could not be set up.
    #[error("KVM route: {0}")]
    Route(#[from] pvirq_host::kvm::KvmRouteError),
    /// The VM is not one of the host's (a device cannot be attached to it there).
    #[error("the VM does not run on this host")]
    NotOnHost,
    /// A device added while the VM runs got a handle whose BAR window the layout lacks (or
    /// whose MSI-X table is trapped); it was removed again.
    #[error("no free BAR window for device handle {handle}")]
    NoBarWindow {
        /// The handle it got.
        handle: u32,
    },
    /// The destination of a migration refused the device's state (nothing is held there;
    /// the source carries on).
    #[error("restore: {0}")]
    Restore(#[from] pvirq_host::device::PersistError),
    /// The pass-through device model refused its configuration.
    #[error("pass-through device: {0}")]
    Passthrough(#[from] crate::passthrough::PassthroughError),
}
