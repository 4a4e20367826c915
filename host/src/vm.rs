//! A VM on the host: its devices (handles scoped to it), quota, negotiated features, guest
//! routes and grants.

use crate::error::{HostError, LayerError};
use crate::grants::DeviceGrants;
use crate::layers::{GuestDest, RouteId, RouteLayer};
use crate::pool::{Host, HostShared, VmId, lock};
use pvirq_proto::{Config, Kind, Le16, Le32, MAX_BATCH_LIMIT, PROTOCOL_VERSION, feature};
use std::sync::{Arc, Mutex};

/// Most IMS slots one device may declare (keeps a device's slot bitmap ≤ 128 KiB).
pub const MAX_IMS_SLOTS: u32 = 1 << 20;
/// Largest MSI-X table (PCI).
pub const MAX_MSIX_TABLE: u16 = 2048;

/// A pass-through device behind the channel, as the VMM describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// PCI requester ID (the source-id its IRTEs must carry).
    pub requester_id: u16,
    /// The remapping unit serving it.
    pub unit: u16,
    /// Largest multi-MSI block: 0 (no MSI) or a power of two up to 32.
    pub msi_max: u16,
    /// MSI-X table size: 0 (no MSI-X) up to 2048.
    pub msix_table_size: u16,
    /// IMS slots: 0 (no IMS) up to [`MAX_IMS_SLOTS`].
    pub ims_slots: u32,
}

impl DeviceSpec {
    /// Whether the device has `kind` at all.
    pub fn supports(&self, kind: Kind) -> bool {
        match kind {
            Kind::Msi => self.msi_max > 0,
            Kind::MsiX => self.msix_table_size > 0,
            Kind::Ims => self.ims_slots > 0,
        }
    }
}

/// A VM's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Vectors the VM may hold at once, over all its devices.
    pub quota: u32,
    /// vCPUs; targets must name `0..num_vcpus`.
    pub num_vcpus: u32,
    /// Largest count in one request (1..=4096).
    pub max_batch: u16,
    /// The devices; handle `i` is `devices[i]`.
    pub devices: Vec<DeviceSpec>,
}

impl VmConfig {
    fn validate(&self, units: u16) -> Result<(), HostError> {
        if self.num_vcpus == 0 {
            return Err(HostError::InvalidConfig("a VM needs at least one vCPU"));
        }
        if self.max_batch == 0 || self.max_batch > MAX_BATCH_LIMIT {
            return Err(HostError::InvalidConfig("max_batch must be 1..=4096"));
        }
        for (i, d) in self.devices.iter().enumerate() {
            if d.msi_max != 0 && (!d.msi_max.is_power_of_two() || d.msi_max > 32) {
                return Err(HostError::InvalidConfig(
                    "msi_max must be 0 or a power of two ≤ 32",
                ));
            }
            if d.msix_table_size > MAX_MSIX_TABLE {
                return Err(HostError::InvalidConfig("MSI-X table larger than 2048"));
            }
            if d.ims_slots > MAX_IMS_SLOTS {
                return Err(HostError::InvalidConfig("too many IMS slots"));
            }
            if d.unit >= units {
                return Err(HostError::NoSuchUnit {
                    unit: d.unit,
                    units,
                });
            }
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

pub(crate) struct VmState {
    /// Feature bits the driver acknowledged (all defined ones until a driver negotiates).
    pub(crate) features: u64,
    pub(crate) routes: Box<dyn RouteLayer>,
    pub(crate) devices: Vec<DeviceGrants>,
    /// Vectors held over all devices.
    pub(crate) held: u32,
}

pub(crate) struct VmShared {
    pub(crate) id: VmId,
    pub(crate) host: Arc<HostShared>,
    pub(crate) config: VmConfig,
    pub(crate) state: Mutex<VmState>,
}

impl VmShared {
    /// Fires a live route; its destination, or `None` if it is gone.
    pub(crate) fn fire_route(&self, route: RouteId) -> Option<GuestDest> {
        let mut state = lock(&self.state);
        let dest = state.routes.route(route)?;
        state.routes.fire(route).ok()?;
        Some(dest)
    }
}

impl Drop for VmShared {
    fn drop(&mut self) {
        // The VM is gone: its routes go with its route layer; give the host back every
        // IRTE and vector it held, and its requester IDs.
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut host = lock(&self.host.state);
        for dev in &state.devices {
            let items: Vec<_> = dev
                .all()
                .into_iter()
                .map(|(_, _, r)| (r.irte, r.host_vector()))
                .collect();
            host.release(dev.spec.unit, items);
            host.sources.remove(&dev.spec.requester_id);
        }
        host.vms.remove(&self.id);
    }
}

/// A VM's handle on the host. Cloning shares it; when the last clone goes, everything the
/// VM held returns to the host.
#[derive(Clone)]
pub struct Vm {
    pub(crate) shared: Arc<VmShared>,
}

/// What a VM holds, for the VMM's metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmOccupancy {
    /// Vectors held.
    pub held: u32,
    /// The quota.
    pub quota: u32,
    /// Live guest routes.
    pub routes: u32,
    /// Vectors held per device handle.
    pub per_device: Vec<u32>,
}

impl Vm {
    pub(crate) fn create(
        host: &Host,
        config: VmConfig,
        routes: Box<dyn RouteLayer>,
    ) -> Result<Vm, HostError> {
        let mut hs = lock(&host.shared.state);
        config.validate(hs.remap.units())?;
        if let Some(d) = config
            .devices
            .iter()
            .find(|d| hs.sources.contains_key(&d.requester_id))
        {
            return Err(HostError::SourceIdInUse(d.requester_id));
        }
        let id = host.shared.next_vm_id();
        for d in &config.devices {
            hs.sources.insert(d.requester_id, (d.unit, id));
        }
        let shared = Arc::new(VmShared {
            id,
            host: Arc::clone(&host.shared),
            state: Mutex::new(VmState {
                features: feature::ALL,
                routes,
                devices: config
                    .devices
                    .iter()
                    .copied()
                    .map(DeviceGrants::new)
                    .collect(),
                held: 0,
            }),
            config,
        });
        hs.vms.insert(id, Arc::downgrade(&shared));
        Ok(Vm { shared })
    }

    /// The VM's host-wide id.
    pub fn id(&self) -> VmId {
        self.shared.id
    }

    /// Its settings.
    pub fn config(&self) -> &VmConfig {
        &self.shared.config
    }

    /// Sets the feature bits the driver negotiated (kinds, PASID, RETARGET).
    pub fn set_features(&self, features: u64) {
        lock(&self.shared.state).features = features;
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        lock(&self.shared.state).features
    }

    /// What the VM holds now.
    pub fn occupancy(&self) -> VmOccupancy {
        let state = lock(&self.shared.state);
        VmOccupancy {
            held: state.held,
            quota: self.shared.config.quota,
            routes: state.routes.live(),
            per_device: state.devices.iter().map(DeviceGrants::granted).collect(),
        }
    }

    /// Every grant of device `handle`: `(kind, index, record)`.
    pub fn grants(&self, handle: u32) -> Vec<(Kind, u32, crate::grants::GrantRecord)> {
        let state = lock(&self.shared.state);
        state
            .devices
            .get(handle as usize)
            .map(DeviceGrants::all)
            .unwrap_or_default()
    }

    /// The live destination of a guest route.
    pub fn route(&self, route: RouteId) -> Option<GuestDest> {
        lock(&self.shared.state).routes.route(route)
    }

    /// Runs `f` on the VM's route layer (to read what a test layer recorded).
    pub fn with_routes<R>(&self, f: impl FnOnce(&dyn RouteLayer) -> R) -> R {
        f(lock(&self.shared.state).routes.as_ref())
    }

    /// Frees every grant of every device (virtio device reset). All or nothing: if the
    /// route layer cannot commit the removals, nothing is freed and the error is returned.
    pub fn reset_all(&self) -> Result<u32, LayerError> {
        let mut state = lock(&self.shared.state);
        crate::transaction::release_all(&self.shared, &mut state)
    }
}
