//! A validated scenario: the hosts, the VMs and their devices (the steps are in `step`).

use super::step::Step;
use pvirq_host::model::{ModelConfig, Placement, RemapConfig, VectorConfig};
use pvirq_host::{ApicIds, DeviceSpec, VmConfig};
use pvirq_proto::{MessageFormat, PciIdentity, feature};

/// A scenario: one host, its VMs, and the steps their guests take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Its name (the file's `name`, or the file name).
    pub name: String,
    /// What it shows, if the file says.
    pub description: Option<String>,
    /// The host's sizes.
    pub host: HostDecl,
    /// Other hosts a VM may migrate to (`[[destination]]`), each with its own occupancy.
    pub destinations: Vec<DestinationDecl>,
    /// The VMs, created in this order before the first step.
    pub vms: Vec<VmDecl>,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// The host's sizes (`[host]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDecl {
    /// IOMMU (interrupt-remapping) units.
    pub iommu_units: u16,
    /// IRTEs per unit.
    pub irtes_per_unit: u32,
    /// Host CPUs.
    pub cpus: u32,
    /// First usable host vector of each CPU.
    pub first_vector: u8,
    /// One past the last usable host vector of each CPU.
    pub end_vector: u8,
    /// Vectors in that range the system keeps.
    pub reserved_vectors: Vec<u8>,
    /// Whether the remapping hardware posts interrupts (VT-d posted interrupts, AMD AVIC):
    /// grants of a driver that negotiated `POSTED` then take no host vector.
    pub posted: bool,
    /// The largest multi-MSI block the VT-d units support (ECAP.MHMV); 32 by default.
    pub max_msi_block: u32,
}

impl HostDecl {
    /// The host configuration these sizes describe.
    pub fn config(&self) -> ModelConfig {
        ModelConfig {
            remap: RemapConfig {
                units: self.iommu_units,
                entries_per_unit: self.irtes_per_unit,
            },
            vectors: VectorConfig {
                cpus: self.cpus,
                first: self.first_vector,
                end: self.end_vector,
                reserved: self.reserved_vectors.clone(),
            },
            posted: self.posted,
            vtd_max_msi_block: self.max_msi_block,
            ..ModelConfig::default()
        }
    }
}

/// Another host a VM can migrate to (`[[destination]]`): its sizes, and the tenants that
/// already hold some of it when the scenario starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationDecl {
    /// Its name, unique in the scenario; `migrate` steps name it in `to`.
    pub name: String,
    /// Its sizes.
    pub host: HostDecl,
    /// What other VMs hold there before anything migrates, in order.
    pub tenants: Vec<TenantDecl>,
}

/// Another VM on a destination host (`tenants = [{ unit, vectors }]`): it holds `vectors`
/// remapped MSI-X vectors of a device behind `unit`, taking the lowest free remapping
/// entries of that unit and one host vector each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantDecl {
    /// The IOMMU unit its device is behind.
    pub unit: u16,
    /// Vectors it holds.
    pub vectors: u16,
}

/// A VM (`[[vm]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmDecl {
    /// Its name, unique in the scenario.
    pub name: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Vectors it may hold at once.
    pub quota: u32,
    /// Largest count in one request.
    pub max_batch: u16,
    /// Its pass-through devices; handle `i` is `devices[i]`. Those with
    /// [`DeviceDecl::hotplug`] come after the others and get their handle when an
    /// `add_device` step plugs them, in this order.
    pub devices: Vec<DeviceDecl>,
    /// The feature bits the guest driver asks for: [`feature::V1`] (a version-1 driver)
    /// plus any extension bits (`APIC_ID`, `INFO`, `POSTED`, `PARKED`, `EVENTS`, `SPREAD`,
    /// `CONTIGUOUS`, `INDEX_LIST`).
    pub features: u64,
    /// The vCPUs' APIC IDs, sparse as QEMU numbers them; `None`: vCPU `i` has APIC ID `i`.
    pub apic_ids: Option<Vec<u32>>,
}

impl VmDecl {
    /// The VM configuration the host is given at creation: every device but the
    /// hot-plugged ones.
    pub fn config(&self) -> VmConfig {
        VmConfig {
            quota: self.quota,
            num_vcpus: self.vcpus,
            max_batch: self.max_batch,
            devices: self
                .devices
                .iter()
                .filter(|d| !d.hotplug)
                .map(DeviceDecl::spec)
                .collect(),
            apic_ids: self
                .apic_ids
                .clone()
                .map_or(ApicIds::Identity, ApicIds::Table),
        }
    }

    /// Whether the driver asks for every bit of `bits`.
    pub fn asks(&self, bits: u64) -> bool {
        self.features & bits == bits
    }

    /// The APIC ID of vCPU index `vcpu` (`None`: no such vCPU).
    pub fn apic_id(&self, vcpu: u32) -> Option<u32> {
        if vcpu >= self.vcpus {
            return None;
        }
        match &self.apic_ids {
            None => Some(vcpu),
            Some(ids) => ids.get(vcpu as usize).copied(),
        }
    }

    /// The vCPU index of APIC ID `apic_id`, if it is one of the VM's.
    pub fn vcpu_of_apic_id(&self, apic_id: u32) -> Option<u32> {
        match &self.apic_ids {
            None => (apic_id < self.vcpus).then_some(apic_id),
            Some(ids) => ids.iter().position(|a| *a == apic_id).map(|i| i as u32),
        }
    }

    /// The wire value naming vCPU index `vcpu`: its APIC ID when the driver asks for
    /// `APIC_ID`, else the index itself (version 1).
    pub fn wire_vcpu(&self, vcpu: u32) -> u32 {
        if self.asks(feature::APIC_ID) {
            self.apic_id(vcpu).unwrap_or(vcpu)
        } else {
            vcpu
        }
    }

    /// Where a target with wire value `wire` is delivered: the APIC ID it names (with
    /// `APIC_ID`), or that of vCPU index `wire` (version 1).
    pub fn delivery_apic_id(&self, wire: u32) -> Option<u32> {
        if self.asks(feature::APIC_ID) {
            Some(wire)
        } else {
            self.apic_id(wire)
        }
    }

    /// The handles of the devices present when the VM is created.
    pub fn initial_devices(&self) -> usize {
        self.devices.iter().filter(|d| !d.hotplug).count()
    }
}

/// A pass-through device (`[[vm.device]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceDecl {
    /// Its name, unique in its VM.
    pub name: String,
    /// PCI requester ID.
    pub requester_id: u16,
    /// IOMMU unit serving it.
    pub unit: u16,
    /// Largest multi-MSI block (0: no MSI).
    pub msi: u16,
    /// MSI-X table size (0: no MSI-X).
    pub msix: u16,
    /// IMS slots (0: no IMS).
    pub ims: u32,
    /// Behind an AMD IOMMU with its own remapping table of this many entries (512 or
    /// 2,048) instead of VT-d unit `unit`.
    pub amd_table: Option<u32>,
    /// The most vectors it may hold at once (spec §3.7); `None`: the VM's quota.
    pub share: Option<u32>,
    /// Which PCI function the guest sees it as (and, for an assignable interface of a
    /// scalable device, its PASID); `None`: the function of `requester_id`.
    pub identity: Option<PciIdentity>,
    /// Not assigned when the VM starts: an `add_device` step plugs it.
    pub hotplug: bool,
}

impl DeviceDecl {
    /// The device as the host describes it.
    pub fn spec(&self) -> DeviceSpec {
        DeviceSpec {
            requester_id: self.requester_id,
            msi_max: self.msi,
            msix_table_size: self.msix,
            ims_slots: self.ims,
            guest_identity: self.identity,
            share: self.share,
        }
    }

    /// Where the modelled host puts it.
    pub fn placement(&self) -> Placement {
        match self.amd_table {
            Some(entries) => Placement::Amd { entries },
            None => Placement::Vtd { unit: self.unit },
        }
    }

    /// The message format its grants have on the modelled host.
    pub fn format(&self) -> MessageFormat {
        match self.amd_table {
            Some(_) => MessageFormat::AmdRemapped,
            None => MessageFormat::VtdRemappable,
        }
    }
}
