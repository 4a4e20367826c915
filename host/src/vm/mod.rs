//! The VM handle: every public operation on one VM's core is a method of [`Vm`], here.
//!
//! The core owns no host resource itself: each device's [`InterruptBackend`] reserves
//! from the host, the [`GuestRoutes`] route into the guest. What the handle guards is the
//! VM's state (the crate's `state` module); requests and restores are transactions over
//! it ([`crate::transaction`]), and `state::release_all` is the one path by which
//! everything goes back (a virtio reset, and the last clone of the handle going away).

mod changes;
#[cfg(any(test, feature = "test-utils"))]
mod invariants;
mod restore;

#[cfg(any(test, feature = "test-utils"))]
pub use invariants::VmViolation;
#[cfg(any(test, feature = "test-utils"))]
pub(crate) use invariants::violations;

use crate::backend::{GuestDest, InterruptBackend};
use crate::config::{ApicIdSet, VmConfig};
use crate::error::HostError;
use crate::grants::GrantRecord;
use crate::routes::{GuestRoutes, RouteId, RouteState};
use crate::snapshot::VmSnapshot;
use crate::state::{DeviceState, Devices, EventLog, VmState, release_all};
use crate::sync::lock;
use crate::transaction::{self, Handled, ReplySink};
use pvirq_proto::{Event, Kind, feature};
use std::sync::{Arc, Mutex, MutexGuard};

/// What a [`Vm`] handle shares between its clones.
pub(crate) struct VmShared {
    pub(crate) state: Mutex<VmState>,
}

/// A VM's handle. Cloning shares it; when the last clone goes, every backend stops backing
/// the VM's vectors and its routes are removed.
#[derive(Clone)]
pub struct Vm {
    pub(crate) shared: Arc<VmShared>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("config", &self.config())
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
            .map(|(spec, backend)| DeviceState::new(*spec, backend))
            .collect();
        let apic_ids = ApicIdSet::of(&config);
        Ok(Vm {
            shared: Arc::new(VmShared {
                state: Mutex::new(VmState {
                    config: Arc::new(config),
                    config_generation: 0,
                    staged_quota: None,
                    held_over_quota: 0,
                    features: feature::V1,
                    live: false,
                    routes,
                    devices: Devices::new(devices),
                    held: 0,
                    apic_ids,
                    events: EventLog::default(),
                }),
            }),
        })
    }

    /// Handles one request (`request` = the readable bytes) and writes the reply to `sink`:
    /// one transaction ([`crate::transaction`]), all or nothing.
    pub fn handle(&self, request: &[u8], sink: &mut dyn ReplySink) -> Handled {
        let mut st = self.state();
        let config = Arc::clone(&st.config);
        transaction::handle(&config, &mut st, request, sink)
    }

    /// Encodes `request`, handles it with a buffer as large as its largest reply, and
    /// returns the reply bytes (empty if nothing was written).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn call(&self, request: &pvirq_proto::Request<'_>) -> Vec<u8> {
        let mut bytes = vec![0u8; request.encoded_len()];
        let Ok(len) = request.encode(&mut bytes) else {
            return Vec::new();
        };
        let mut sink = transaction::BufferSink::new(request.max_response_len(self.features()));
        let handled = self.handle(bytes.get(..len).unwrap_or_default(), &mut sink);
        if handled.used_len == 0 {
            Vec::new()
        } else {
            sink.bytes().to_vec()
        }
    }

    /// Device reset ([DEV-1]): frees every grant of every device and returns how many,
    /// discards every pending event, and applies the configuration changes the driver
    /// could not be told about while live (a quota, devices added: spec §2.4). It cannot
    /// fail: if the route layer refuses to commit the removals, the backends stop backing
    /// the vectors anyway and the routes are cleared.
    pub fn reset_all(&self) -> u32 {
        let mut st = self.state();
        let count = release_all(&mut st);
        st.live = false;
        st.held_over_quota = 0;
        st.events.discard();
        let quota = st.staged_quota.take();
        let added: Vec<_> = st.devices.show_all().iter().map(|d| d.spec).collect();
        if quota.is_some_and(|q| q != st.config.quota) || !added.is_empty() {
            let mut config = (*st.config).clone();
            config.quota = quota.unwrap_or(config.quota);
            config.devices.extend(added);
            st.set_config(config);
        }
        count
    }

    /// The configuration the driver sees now (the VMM's, with the changes made since).
    pub fn config(&self) -> Arc<VmConfig> {
        Arc::clone(&self.state().config)
    }

    /// The virtio `config_generation`: moves each time the configuration does.
    pub fn config_generation(&self) -> u32 {
        self.state().config_generation
    }

    /// Sets the feature bits the driver negotiated.
    pub fn set_features(&self, features: u64) {
        self.state().features = features;
    }

    /// The driver set DRIVER_OK with `features`: they take effect, and with
    /// `PVIRQ_F_EVENTS` the VM starts recording events (numbered from 1), unless a restored
    /// snapshot already gave it its pending events.
    pub fn go_live(&self, features: u64) {
        let mut st = self.state();
        st.features = features;
        st.live = true;
        if features & feature::EVENTS != 0 {
            st.events.enable();
        }
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.state().features
    }

    /// Events queued for the driver and not yet written (spec §12).
    pub fn pending_events(&self) -> usize {
        self.state().events.len()
    }

    /// Hands the next event to write, with its sequence number, to `write`, and takes it
    /// off the log if `write` says it was written; `None` if no event waits. One lock for
    /// both, so no change made meanwhile can supersede the event being written.
    pub(crate) fn write_front_event(&self, write: impl FnOnce(&Event) -> bool) -> Option<bool> {
        let mut st = self.state();
        let event = st.events.front()?;
        let written = write(&event);
        if written {
            st.events.pop();
        }
        Some(written)
    }

    /// Whether any assigned device's backend can post interrupts.
    pub fn can_post(&self) -> bool {
        let st = self.state();
        st.devices
            .iter()
            .any(|d| !d.removed && d.backend.can_post())
    }

    /// What the VM holds now.
    pub fn occupancy(&self) -> VmOccupancy {
        let state = self.state();
        VmOccupancy {
            held: state.held,
            quota: state.config.quota,
            routes: state.routes.live(),
            per_device: state.devices.iter().map(|d| d.grants.granted()).collect(),
        }
    }

    /// Every grant of device `handle`: `(kind, index, record)`.
    pub fn grants(&self, handle: u32) -> Vec<(Kind, u32, GrantRecord)> {
        self.state()
            .devices
            .get(handle as usize)
            .map(|d| d.grants.all())
            .unwrap_or_default()
    }

    /// The live state of a guest route.
    pub fn route(&self, route: RouteId) -> Option<RouteState> {
        self.state().routes.route(route)
    }

    /// Runs `f` on the VM's route layer (to read what a test layer recorded).
    pub fn with_routes<R>(&self, f: impl FnOnce(&dyn GuestRoutes) -> R) -> R {
        f(self.state().routes.as_ref())
    }

    /// Runs `f` on device `handle`'s backend, if the VM has that device.
    pub fn with_backend<R>(
        &self,
        handle: u32,
        f: impl FnOnce(&dyn InterruptBackend) -> R,
    ) -> Option<R> {
        self.state()
            .devices
            .get(handle as usize)
            .map(|d| f(d.backend.as_ref()))
    }

    /// The destination a version-1 target (a vCPU index) names, if the VM has that vCPU.
    pub fn dest_of_vcpu(&self, vcpu: u32, vector: u8) -> Option<GuestDest> {
        let c = self.config();
        c.apic_ids
            .of_vcpu(vcpu, c.num_vcpus)
            .map(|apic_id| GuestDest { apic_id, vector })
    }

    /// The VM's negotiated features and every grant, as a snapshot to restore elsewhere.
    pub fn snapshot(&self) -> VmSnapshot {
        crate::snapshot::capture(&self.state())
    }

    /// Checks the core's invariants (records, quota, routes, destinations: see
    /// [`VmViolation`]); every violation found, if any. Call it when no request is in
    /// flight. For tests, the simulator and the fuzzer (feature `test-utils`).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn check_invariants(&self) -> Result<(), Vec<VmViolation>> {
        let st = self.state();
        let violations = invariants::violations(&st.config, &st);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }

    /// The VM's state, locked.
    pub(crate) fn state(&self) -> MutexGuard<'_, VmState> {
        lock(&self.shared.state)
    }
}
