//! The errors of setting the host side up and of writing replies. Errors of the two seams
//! live with them: [`crate::backend::BackendError`], [`crate::routes::RouteError`].

/// Why a host, a VM or a device could not be set up. Never caused by guest input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// A configuration value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(#[from] ConfigError),
    /// A device's IOMMU unit does not exist on the modelled host.
    #[error("IOMMU unit {unit} does not exist (the host has {units})")]
    NoSuchUnit {
        /// The unit asked for.
        unit: u16,
        /// Units the host has.
        units: u16,
    },
    /// Two devices (possibly of different VMs) claim the same requester ID.
    #[error("requester ID {0:#06x} is already assigned to a device")]
    SourceIdInUse(u16),
    /// The VM has a different number of devices and backends.
    #[error("{devices} devices but {backends} interrupt backends")]
    BackendCount {
        /// Devices in the configuration.
        devices: usize,
        /// Backends given.
        backends: usize,
    },
    /// An eventfd could not be created or used.
    #[error("eventfd: errno {0}")]
    EventFd(i32),
    /// No assigned device has that handle (never had, or was removed).
    #[error("no assigned device has handle {0}")]
    NoSuchDevice(u32),
    /// The route layer refused to commit a change the VMM asked for; nothing changed.
    #[error("the guest routes could not be committed")]
    RouteCommit,
}

/// Which configuration value is out of range, and what it was.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `DeviceSpec::msi_max` is neither 0 nor a power of two ≤ 32.
    #[error("msi_max {0} is neither 0 nor a power of two ≤ 32")]
    MsiMax(u16),
    /// `DeviceSpec::msix_table_size` is larger than PCI allows.
    #[error("an MSI-X table of {size} entries is larger than {max}")]
    MsixTableSize {
        /// The size given.
        size: u16,
        /// The largest allowed.
        max: u16,
    },
    /// `DeviceSpec::ims_slots` is larger than a device may declare.
    #[error("{slots} IMS slots are more than {max}")]
    ImsSlots {
        /// The count given.
        slots: u32,
        /// The largest allowed.
        max: u32,
    },
    /// A device's `guest_identity` carries a PASID of more than 20 bits.
    #[error("interface PASID {0:#x} does not fit 20 bits")]
    IdentityPasid(u32),
    /// `VmConfig::num_vcpus` is 0.
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    /// `VmConfig::max_batch` is outside `1..=max`.
    #[error("max_batch {batch} is not in 1..={max}")]
    MaxBatch {
        /// The value given.
        batch: u16,
        /// The largest allowed.
        max: u16,
    },
    /// `ApicIds::Table` does not give one APIC ID per vCPU.
    #[error("{ids} APIC IDs for {vcpus} vCPUs")]
    ApicIdCount {
        /// APIC IDs given.
        ids: usize,
        /// vCPUs of the VM.
        vcpus: u32,
    },
    /// Two vCPUs were given the same APIC ID.
    #[error("APIC ID {0} is given to two vCPUs")]
    DuplicateApicId(u32),
    /// `ModelConfig::vtd_max_msi_block` is neither 0 nor a power of two ≤ 32.
    #[error("vtd_max_msi_block {0} is neither 0 nor a power of two ≤ 32")]
    VtdMaxMsiBlock(u32),
    /// An AMD remapping table of a size the model does not have (512 or 2048).
    #[error("an AMD remapping table has 512 or 2048 entries, not {0}")]
    AmdTableSize(u32),
    /// The modelled host has no remapping unit.
    #[error("the modelled host needs at least one remapping unit")]
    NoRemapUnits,
    /// A remapping unit's table size is outside `1..=65536`.
    #[error("{0} entries per remapping unit, not 1..=65536")]
    RemapEntries(u32),
    /// The modelled host has no CPU.
    #[error("the modelled host needs at least one CPU")]
    NoHostCpus,
    /// The host vector range `first..end` is empty.
    #[error("host vector range {first:#x}..{end:#x} is empty")]
    EmptyVectorRange {
        /// First usable vector.
        first: u8,
        /// One past the last.
        end: u8,
    },
    /// Every vector of the host range is reserved.
    #[error("every host vector of the range is reserved")]
    NoUsableVector,
    /// Virtio device ID 0, which means "no device" to a virtio-mmio driver.
    #[error("virtio device ID 0 means no device")]
    DeviceIdZero,
    /// A VM has at most 0xFFFF_FFFF device handles (0xFFFF_FFFF itself means the VM).
    #[error("no device handle left")]
    DeviceHandles,
    /// Route ids `first..first + count` do not fit in 32 bits.
    #[error("route ids {first}..{first}+{count} overflow")]
    RouteIdRange {
        /// First id.
        first: u32,
        /// Number of ids.
        count: u32,
    },
}

impl HostError {
    /// The error for a failed eventfd call.
    pub fn eventfd(err: &std::io::Error) -> Self {
        HostError::EventFd(err.raw_os_error().unwrap_or(0))
    }
}

/// Why a reply could not be written into the guest's buffers.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// A writable descriptor does not lie in guest memory.
    #[error("guest memory at {0:#x} is not writable")]
    GuestMemory(u64),
    /// The reply is longer than the writable buffers.
    #[error("reply of {needed} bytes does not fit {capacity} writable bytes")]
    TooLong {
        /// Reply length.
        needed: usize,
        /// Writable bytes.
        capacity: usize,
    },
    /// The encoder refused the reply (a bug: every reply the core builds encodes).
    #[error("the reply could not be encoded")]
    Encode,
    /// A test sink was told to fail.
    #[error("injected write failure")]
    Injected,
}
