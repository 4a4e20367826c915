//! The VM core: one VM's assigned devices (handles scoped to it), quota, negotiated
//! features, guest routes and grants. It owns no host resource itself: each device's
//! [`InterruptBackend`] reserves from the host, the [`GuestRoutes`] route into the guest.

mod config;
mod invariants;
pub mod snapshot;

pub use config::{ApicIds, DeviceSpec, MAX_IMS_SLOTS, MAX_MSIX_TABLE, VmConfig};
pub use snapshot::{DeviceSnapshot, GrantSnapshot, RestoreError, SNAPSHOT_VERSION, VmSnapshot};

use crate::backend::{GuestDest, InterruptBackend};
use crate::error::HostError;
use crate::grants::{DeviceGrants, GrantRecord};
use crate::routes::{GuestRoutes, RouteId, RouteState};
use crate::sync::lock;
use pvirq_proto::{Kind, feature};
use std::sync::{Arc, Mutex};

/// One assigned device: what the VMM said about it, its backend, its grants.
pub(crate) struct DeviceState {
    pub(crate) spec: DeviceSpec,
    pub(crate) backend: Box<dyn InterruptBackend>,
    pub(crate) grants: DeviceGrants,
}

impl DeviceState {
    /// Stops backing every grant of `kind` (their records stay: the caller drops them).
    pub(crate) fn disable_all(&mut self, kind: Kind) {
        let indices: Vec<u32> = self
            .grants
            .table(kind)
            .records
            .iter()
            .map(|(i, _)| i)
            .collect();
        if !indices.is_empty() {
            self.backend.disable(kind, &indices);
        }
    }
}

pub(crate) struct VmState {
    /// Feature bits the driver acknowledged (all defined ones until a driver negotiates).
    pub(crate) features: u64,
    pub(crate) routes: Box<dyn GuestRoutes>,
    pub(crate) devices: Vec<DeviceState>,
    /// Vectors held over all devices.
    pub(crate) held: u32,
}

impl Drop for VmState {
    fn drop(&mut self) {
        // The VM is gone: the host stops backing its vectors before its routes go.
        for dev in &mut self.devices {
            for kind in Kind::ALL {
                dev.disable_all(*kind);
            }
        }
        self.routes.clear();
    }
}

pub(crate) struct VmShared {
    pub(crate) config: VmConfig,
    pub(crate) state: Mutex<VmState>,
}

/// A VM's handle. Cloning shares it; when the last clone goes, every backend stops backing
/// the VM's vectors and its routes are cleared.
#[derive(Clone)]
pub struct Vm {
    pub(crate) shared: Arc<VmShared>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
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
    /// A VM with `config`, one backend per device (in handle order) and its guest routes.
    pub fn new(
        config: VmConfig,
        backends: Vec<Box<dyn InterruptBackend>>,
        routes: Box<dyn GuestRoutes>,
    ) -> Result<Vm, HostError> {
        config.validate()?;
        if backends.len() != config.devices.len() {
            return Err(HostError::BackendCount {
                devices: config.devices.len(),
                backends: backends.len(),
            });
        }
        let devices = config
            .devices
            .iter()
            .zip(backends)
            .map(|(spec, backend)| DeviceState {
                spec: *spec,
                backend,
                grants: DeviceGrants::new([
                    spec.table_size(Kind::Msi),
                    spec.table_size(Kind::MsiX),
                    spec.table_size(Kind::Ims),
                ]),
            })
            .collect();
        Ok(Vm {
            shared: Arc::new(VmShared {
                state: Mutex::new(VmState {
                    features: feature::V1,
                    routes,
                    devices,
                    held: 0,
                }),
                config,
            }),
        })
    }

    /// Its settings.
    pub fn config(&self) -> &VmConfig {
        &self.shared.config
    }

    /// Sets the feature bits the driver negotiated.
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
            per_device: state.devices.iter().map(|d| d.grants.granted()).collect(),
        }
    }

    /// Every grant of device `handle`: `(kind, index, record)`.
    pub fn grants(&self, handle: u32) -> Vec<(Kind, u32, GrantRecord)> {
        let state = lock(&self.shared.state);
        state
            .devices
            .get(handle as usize)
            .map(|d| d.grants.all())
            .unwrap_or_default()
    }

    /// The live state of a guest route.
    pub fn route(&self, route: RouteId) -> Option<RouteState> {
        lock(&self.shared.state).routes.route(route)
    }

    /// Runs `f` on the VM's route layer (to read what a test layer recorded).
    pub fn with_routes<R>(&self, f: impl FnOnce(&dyn GuestRoutes) -> R) -> R {
        f(lock(&self.shared.state).routes.as_ref())
    }

    /// Runs `f` on device `handle`'s backend, if the VM has that device.
    pub fn with_backend<R>(
        &self,
        handle: u32,
        f: impl FnOnce(&dyn InterruptBackend) -> R,
    ) -> Option<R> {
        let state = lock(&self.shared.state);
        state
            .devices
            .get(handle as usize)
            .map(|d| f(d.backend.as_ref()))
    }

    /// The VM's negotiated features and every grant, as a snapshot to restore elsewhere.
    pub fn snapshot(&self) -> VmSnapshot {
        let state = lock(&self.shared.state);
        VmSnapshot {
            version: SNAPSHOT_VERSION,
            features: state.features,
            devices: state
                .devices
                .iter()
                .map(|d| DeviceSnapshot {
                    requester_id: d.spec.requester_id,
                    grants: d
                        .grants
                        .all()
                        .into_iter()
                        .map(|(kind, index, r)| GrantSnapshot {
                            kind: kind.to_wire(),
                            index,
                            dest: r.dest.map(|d| (d.apic_id, d.vector)),
                            address: r.message.address,
                            data: r.message.data,
                            mode: r.mode.to_wire(),
                            pasid: r.pasid,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The destination a version-1 target (a vCPU index) names, if the VM has that vCPU.
    pub fn dest_of_vcpu(&self, vcpu: u32, vector: u8) -> Option<GuestDest> {
        let c = &self.shared.config;
        c.apic_ids
            .of_vcpu(vcpu, c.num_vcpus)
            .map(|apic_id| GuestDest { apic_id, vector })
    }
}
