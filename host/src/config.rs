//! What the VMM says about a VM and its assigned devices: the core's whole configuration,
//! validated once when the VM is made.

use crate::error::{ConfigError, HostError};
use pvirq_proto::{
    Config, Kind, Le16, Le32, MAX_BATCH_LIMIT, MAX_PASID, PROTOCOL_VERSION, PciIdentity,
};

/// Most IMS slots one device may declare (keeps a device's slot bitmap ≤ 128 KiB).
pub const MAX_IMS_SLOTS: u32 = 1 << 20;
/// Largest MSI-X table (PCI).
pub const MAX_MSIX_TABLE: u16 = 2048;

/// An assigned device behind the channel, as the VMM describes it.
///
/// The fields after the tables have defaults that describe the common case (the guest
/// sees the function at its host address, no share), so a VMM that does not know them
/// writes `..DeviceSpec::default()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceSpec {
    /// PCI requester ID on the host (the source-id its interrupt writes carry).
    pub requester_id: u16,
    /// Largest multi-MSI block: 0 (no MSI) or a power of two up to 32.
    pub msi_max: u16,
    /// MSI-X table size: 0 (no MSI-X) up to 2048.
    pub msix_table_size: u16,
    /// IMS slots: 0 (no IMS) up to [`MAX_IMS_SLOTS`].
    pub ims_slots: u32,
    /// Which PCI function the guest enumerates it as, and for an assignable interface of
    /// a scalable device the PASID that tells it from its siblings (spec §4.4). `None`:
    /// segment 0 and the bus and devfn of `requester_id`, which is also the requester ID
    /// of the guest's view, and no PASID ([`DeviceSpec::identity`]).
    pub guest_identity: Option<PciIdentity>,
    /// The most vectors the device may hold at once (spec §3.7); `None`: the VM's quota,
    /// which the spec gives a device without a share.
    pub share: Option<u32>,
}

impl DeviceSpec {
    /// Whether the device has `kind` at all.
    pub fn supports(&self, kind: Kind) -> bool {
        self.table_size(kind) > 0
    }

    /// The size of the device's `kind` table (MSI: its largest block).
    pub fn table_size(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Msi => u32::from(self.msi_max),
            Kind::MsiX => u32::from(self.msix_table_size),
            Kind::Ims => self.ims_slots,
        }
    }

    /// What QUERY reports as the device's identity (spec §4.4): `guest_identity`, or the
    /// one `requester_id` implies.
    pub fn identity(&self) -> PciIdentity {
        self.guest_identity.unwrap_or(PciIdentity {
            segment: 0,
            bus: (self.requester_id >> 8) as u8,
            devfn: self.requester_id as u8,
            requester_id: self.requester_id,
            pasid: None,
        })
    }

    /// The device's share in a VM whose quota is `quota` (spec §3.7).
    pub fn effective_share(&self, quota: u32) -> u32 {
        self.share.unwrap_or(quota)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(pasid) = self.guest_identity.and_then(|i| i.pasid)
            && pasid > MAX_PASID
        {
            return Err(ConfigError::IdentityPasid(pasid));
        }
        if self.msi_max != 0 && (!self.msi_max.is_power_of_two() || self.msi_max > 32) {
            return Err(ConfigError::MsiMax(self.msi_max));
        }
        if self.msix_table_size > MAX_MSIX_TABLE {
            return Err(ConfigError::MsixTableSize {
                size: self.msix_table_size,
                max: MAX_MSIX_TABLE,
            });
        }
        if self.ims_slots > MAX_IMS_SLOTS {
            return Err(ConfigError::ImsSlots {
                slots: self.ims_slots,
                max: MAX_IMS_SLOTS,
            });
        }
        Ok(())
    }
}

/// How the VM's vCPUs are numbered by APIC ID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ApicIds {
    /// vCPU `n` has APIC ID `n` (KVM's default when the VMM sets none).
    #[default]
    Identity,
    /// vCPU `n` has APIC ID `ids[n]` (sparse under most topologies, as QEMU numbers them).
    Table(Vec<u32>),
}

impl ApicIds {
    /// The APIC ID of vCPU index `vcpu`, if the VM has that vCPU.
    pub fn of_vcpu(&self, vcpu: u32, num_vcpus: u32) -> Option<u32> {
        if vcpu >= num_vcpus {
            return None;
        }
        match self {
            ApicIds::Identity => Some(vcpu),
            ApicIds::Table(ids) => ids.get(vcpu as usize).copied(),
        }
    }

    /// Whether `apic_id` is one of the VM's.
    pub fn contains(&self, apic_id: u32, num_vcpus: u32) -> bool {
        match self {
            ApicIds::Identity => apic_id < num_vcpus,
            ApicIds::Table(ids) => ids.contains(&apic_id),
        }
    }
}

/// The VM's APIC IDs in a form a request can look up in O(log vCPUs): a guest that
/// negotiated `APIC_ID` names up to `max_batch` targets per request, each of which must be
/// one of them (spec §4.5).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ApicIdSet {
    /// `Some(n)`: the IDs are `0..n` ([`ApicIds::Identity`]).
    below: Option<u32>,
    /// Otherwise: the table, sorted.
    sorted: Vec<u32>,
}

impl ApicIdSet {
    /// The APIC IDs of a VM configured by `config`.
    pub(crate) fn of(config: &VmConfig) -> Self {
        match &config.apic_ids {
            ApicIds::Identity => ApicIdSet {
                below: Some(config.num_vcpus),
                sorted: Vec::new(),
            },
            ApicIds::Table(ids) => {
                let mut sorted = ids.clone();
                sorted.sort_unstable();
                ApicIdSet {
                    below: None,
                    sorted,
                }
            }
        }
    }

    /// Whether `apic_id` is one of the VM's.
    pub(crate) fn contains(&self, apic_id: u32) -> bool {
        match self.below {
            Some(n) => apic_id < n,
            None => self.sorted.binary_search(&apic_id).is_ok(),
        }
    }
}

/// A VM's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmConfig {
    /// Vectors the VM may hold at once, over all its devices.
    pub quota: u32,
    /// vCPUs; version-1 targets name `0..num_vcpus`.
    pub num_vcpus: u32,
    /// Largest count in one request (1..=4096).
    pub max_batch: u16,
    /// The devices; handle `i` is `devices[i]`.
    pub devices: Vec<DeviceSpec>,
    /// The vCPUs' APIC IDs.
    pub apic_ids: ApicIds,
}

impl VmConfig {
    pub(crate) fn validate(&self) -> Result<(), HostError> {
        if self.num_vcpus == 0 {
            return Err(ConfigError::NoVcpus.into());
        }
        if self.max_batch == 0 || self.max_batch > MAX_BATCH_LIMIT {
            return Err(ConfigError::MaxBatch {
                batch: self.max_batch,
                max: MAX_BATCH_LIMIT,
            }
            .into());
        }
        if let ApicIds::Table(ids) = &self.apic_ids {
            if ids.len() != self.num_vcpus as usize {
                return Err(ConfigError::ApicIdCount {
                    ids: ids.len(),
                    vcpus: self.num_vcpus,
                }
                .into());
            }
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w.first() == w.get(1))
                && let Some(id) = w.first()
            {
                return Err(ConfigError::DuplicateApicId(*id).into());
            }
        }
        for (i, d) in self.devices.iter().enumerate() {
            d.validate()?;
            if self
                .devices
                .iter()
                .take(i)
                .any(|o| o.requester_id == d.requester_id)
            {
                return Err(HostError::SourceIdInUse(d.requester_id));
            }
        }
        Ok(())
    }

    /// The virtio configuration space this VM's device presents.
    pub fn virtio_config(&self) -> Config {
        Config {
            version: Le16::new(PROTOCOL_VERSION),
            max_batch: Le16::new(self.max_batch),
            num_devices: Le32::new(self.devices.len() as u32),
            vm_quota: Le32::new(self.quota),
            num_vcpus: Le32::new(self.num_vcpus),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(devices: Vec<DeviceSpec>) -> VmConfig {
        VmConfig {
            quota: 8,
            num_vcpus: 2,
            max_batch: 8,
            devices,
            ..VmConfig::default()
        }
    }

    fn device(msi_max: u16, msix_table_size: u16, ims_slots: u32) -> DeviceSpec {
        DeviceSpec {
            requester_id: 0x100,
            msi_max,
            msix_table_size,
            ims_slots,
            ..DeviceSpec::default()
        }
    }

    fn refusal(config: &VmConfig) -> Option<ConfigError> {
        match config.validate() {
            Err(HostError::InvalidConfig(e)) => Some(e),
            _ => None,
        }
    }

    #[test]
    fn each_bad_value_is_named_with_what_it_was() {
        assert_eq!(refusal(&vm(vec![device(32, 2048, MAX_IMS_SLOTS)])), None);
        assert_eq!(
            refusal(&vm(vec![device(12, 0, 0)])),
            Some(ConfigError::MsiMax(12))
        );
        assert_eq!(
            refusal(&vm(vec![device(64, 0, 0)])),
            Some(ConfigError::MsiMax(64))
        );
        assert_eq!(
            refusal(&vm(vec![device(0, 2049, 0)])),
            Some(ConfigError::MsixTableSize {
                size: 2049,
                max: 2048
            })
        );
        assert_eq!(
            refusal(&vm(vec![device(0, 0, MAX_IMS_SLOTS + 1)])),
            Some(ConfigError::ImsSlots {
                slots: MAX_IMS_SLOTS + 1,
                max: MAX_IMS_SLOTS
            })
        );
        let mut c = vm(vec![]);
        c.num_vcpus = 0;
        assert_eq!(refusal(&c), Some(ConfigError::NoVcpus));
        c.num_vcpus = 2;
        c.max_batch = 0;
        assert_eq!(
            refusal(&c),
            Some(ConfigError::MaxBatch {
                batch: 0,
                max: MAX_BATCH_LIMIT
            })
        );
        c.max_batch = 8;
        c.apic_ids = ApicIds::Table(vec![4]);
        assert_eq!(
            refusal(&c),
            Some(ConfigError::ApicIdCount { ids: 1, vcpus: 2 })
        );
        c.apic_ids = ApicIds::Table(vec![6, 6]);
        assert_eq!(refusal(&c), Some(ConfigError::DuplicateApicId(6)));
        let mut interface = device(0, 4, 0);
        interface.guest_identity = Some(PciIdentity {
            pasid: Some(MAX_PASID + 1),
            ..interface.identity()
        });
        assert_eq!(
            refusal(&vm(vec![interface])),
            Some(ConfigError::IdentityPasid(MAX_PASID + 1))
        );
        // Not a range error: two devices with one requester ID.
        let twice = vm(vec![device(0, 4, 0), device(0, 4, 0)]);
        assert_eq!(twice.validate(), Err(HostError::SourceIdInUse(0x100)));
    }

    #[test]
    fn identity_defaults_to_the_requester_id_and_share_to_the_quota() {
        let d = DeviceSpec {
            requester_id: 0x3a19,
            ..DeviceSpec::default()
        };
        let id = d.identity();
        assert_eq!((id.segment, id.bus, id.devfn), (0, 0x3a, 0x19));
        assert_eq!(
            (id.device(), id.function(), id.requester_id),
            (3, 1, 0x3a19)
        );
        assert_eq!(id.pasid, None);
        let given = PciIdentity {
            segment: 1,
            bus: 2,
            devfn: 0x18,
            requester_id: 0x0200,
            pasid: Some(7),
        };
        let d = DeviceSpec {
            guest_identity: Some(given),
            share: Some(5),
            ..d
        };
        assert_eq!(d.identity(), given);
        assert_eq!(d.effective_share(64), 5);
        assert_eq!(DeviceSpec::default().effective_share(64), 64);
    }

    #[test]
    fn apic_id_sets_answer_like_the_table() {
        let mut c = vm(vec![]);
        c.num_vcpus = 3;
        let identity = ApicIdSet::of(&c);
        assert!(identity.contains(2) && !identity.contains(3));
        c.apic_ids = ApicIds::Table(vec![300, 4, 0]);
        let table = ApicIdSet::of(&c);
        for id in 0..400 {
            assert_eq!(table.contains(id), c.apic_ids.contains(id, 3), "{id}");
        }
    }
}
