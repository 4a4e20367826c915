//! The host pool: IRTEs and host vectors shared by every VM on the host, behind one lock.
//!
//! The lock is taken briefly: once to count what is free and reserve a whole request's
//! IRTEs and vectors (one section, so no other VM takes what was counted), once to make
//! them grants (or to release them). QUERY counts on its own (its figure is advisory).
//! Lock order
//! is always VM state, then host state; [`Host::fire`] takes them one after the other,
//! never nested.

use crate::error::{HostError, LayerError};
use crate::layers::{
    HostVector, IrteDest, RemapConfig, RemapFault, RemapLayer, RemapUnits, RouteId, VectorConfig,
    VectorLayer, VectorMatrix,
};
use crate::vm::{Vm, VmConfig, VmShared};
use pvirq_proto::MsiMessage;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

/// A VM's host-wide identity (never 0).
pub type VmId = u32;

/// Locks a mutex, recovering the data if another thread panicked while holding it: the
/// state behind our locks is updated so that every early return leaves it consistent.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Shape of the shipped host layers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// Remapping units.
    pub remap: RemapConfig,
    /// Host CPU vectors.
    pub vectors: VectorConfig,
}

/// Who a granted host vector belongs to: the VM and the guest route it feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) vm: VmId,
    pub(crate) route: RouteId,
}

/// Why an interrupt fired by a device was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReason {
    /// The remapping unit refused it.
    Remap(RemapFault),
    /// The IRTE resolved to a host vector that is not granted (reserved by a request in
    /// flight, or being released).
    NotGranted,
    /// The guest route vanished while the interrupt was on its way.
    StaleRoute,
}

/// A recorded fault: who sent what, and why it went nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The sender's requester ID.
    pub source_id: u16,
    /// The message it sent.
    pub message: MsiMessage,
    /// Why it was dropped.
    pub reason: FaultReason,
}

/// Where a fired interrupt arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The VM.
    pub vm: VmId,
    /// The guest route it went through (`None` for a posted IRTE).
    pub route: Option<RouteId>,
    /// The vCPU.
    pub vcpu: u32,
    /// The guest vector.
    pub vector: u8,
}

/// How many recent faults are kept.
const FAULT_LOG: usize = 16;

/// Fault count and the most recent faults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultReport {
    /// Faults since the host was created.
    pub count: u64,
    /// The last few faults, oldest first.
    pub recent: Vec<Fault>,
}

/// Occupancy of one remapping unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitOccupancy {
    /// Table size.
    pub capacity: u32,
    /// Entries in use (granted or reserved).
    pub used: u32,
}

/// Occupancy of the host pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostOccupancy {
    /// Per remapping unit.
    pub units: Vec<UnitOccupancy>,
    /// Host vectors in use.
    pub vectors_used: u32,
    /// Host vectors still free.
    pub vectors_free: u32,
    /// Live VMs.
    pub vms: u32,
}

/// Owner of each granted host vector: a dense table indexed by (CPU, vector), so a grant
/// costs no heap here (256 slots of 12 bytes per host CPU, allocated once).
pub(crate) struct OwnerTable {
    slots: Vec<Option<Owner>>,
    count: usize,
}

impl OwnerTable {
    fn new(cpus: u32) -> Self {
        OwnerTable {
            slots: vec![None; cpus as usize * 256],
            count: 0,
        }
    }

    fn slot(hv: &HostVector) -> usize {
        hv.cpu as usize * 256 + usize::from(hv.vector)
    }

    pub(crate) fn get(&self, hv: &HostVector) -> Option<&Owner> {
        self.slots.get(Self::slot(hv))?.as_ref()
    }

    pub(crate) fn insert(&mut self, hv: HostVector, owner: Owner) {
        if let Some(slot) = self.slots.get_mut(Self::slot(&hv)) {
            if slot.is_none() {
                self.count += 1;
            }
            *slot = Some(owner);
        }
    }

    pub(crate) fn remove(&mut self, hv: &HostVector) {
        if let Some(slot) = self.slots.get_mut(Self::slot(hv))
            && slot.take().is_some()
        {
            self.count -= 1;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }
}

pub(crate) struct HostState {
    pub(crate) remap: Box<dyn RemapLayer>,
    pub(crate) vectors: Box<dyn VectorLayer>,
    /// Owner of each granted host vector.
    pub(crate) owners: OwnerTable,
    /// Requester ID → (unit, VM) of every registered device.
    pub(crate) sources: HashMap<u16, (u16, VmId)>,
    pub(crate) vms: HashMap<VmId, Weak<VmShared>>,
    fault_count: u64,
    faults: VecDeque<Fault>,
}

impl HostState {
    fn record(&mut self, fault: Fault) {
        self.fault_count += 1;
        if self.faults.len() == FAULT_LOG {
            self.faults.pop_front();
        }
        self.faults.push_back(fault);
    }

    /// Releases IRTEs and vectors, and forgets their owners.
    pub(crate) fn release(
        &mut self,
        unit: u16,
        items: impl IntoIterator<Item = (u16, HostVector)>,
    ) {
        for (irte, hv) in items {
            self.remap.free(unit, irte);
            self.vectors.free(hv);
            self.owners.remove(&hv);
        }
    }
}

pub(crate) struct HostShared {
    pub(crate) state: Mutex<HostState>,
    next_vm: AtomicU32,
}

/// IRTEs and host vectors reserved for one request: released on drop unless committed.
pub(crate) struct HostReservation {
    host: Arc<HostShared>,
    pub(crate) unit: u16,
    /// `(irte, host vector)` of each vector, in grant order.
    pub(crate) items: Vec<(u16, HostVector)>,
}

impl HostReservation {
    /// Makes the reservation permanent: records who owns each host vector.
    pub(crate) fn commit(mut self, vm: VmId, routes: &[RouteId]) {
        let items = std::mem::take(&mut self.items);
        let mut state = lock(&self.host.state);
        for ((_, hv), route) in items.iter().zip(routes) {
            state.owners.insert(*hv, Owner { vm, route: *route });
        }
    }
}

impl Drop for HostReservation {
    fn drop(&mut self) {
        if !self.items.is_empty() {
            lock(&self.host.state).release(self.unit, self.items.iter().copied());
        }
    }
}

/// A reservation failure: the layer's error and how many vectors it had supplied.
pub(crate) type ReserveError = (LayerError, u32);

/// What the pool has free on one unit, read under the lock that then reserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolFree {
    /// Free IRTEs of the unit.
    pub(crate) irte: u32,
    /// Largest free naturally aligned IRTE block (≤ 32).
    pub(crate) irte_block: u32,
    /// Free host vectors.
    pub(crate) vectors: u32,
}

/// Why a sized reservation did not happen: the sizing refused (`R`), or a layer failed.
#[derive(Debug)]
pub(crate) enum SizedError<R> {
    /// The sizing function refused, given what was free.
    Refused(R),
    /// A layer failed while reserving.
    Layer(ReserveError),
}

impl HostShared {
    /// Counts what `unit` has free, lets `size` choose how many vectors to reserve from
    /// that (or refuse), then reserves them, all in one critical section: another VM
    /// cannot take the IRTEs or vectors counted before they are reserved. Reserves `n`
    /// IRTEs for `source_id` (an aligned block if `block`), then `n` host vectors, and
    /// programs each IRTE with its vector. All or nothing.
    pub(crate) fn reserve_sized<R>(
        self: &Arc<Self>,
        unit: u16,
        source_id: u16,
        block: bool,
        size: impl FnOnce(PoolFree) -> Result<u32, R>,
    ) -> Result<HostReservation, SizedError<R>> {
        let mut state = lock(&self.state);
        let free = PoolFree {
            irte: state.remap.free_entries(unit),
            irte_block: state.remap.largest_block(unit, 32),
            vectors: state.vectors.available(),
        };
        let n = size(free).map_err(SizedError::Refused)?;
        // One list for the whole reservation: IRTEs first, each vector filled in after.
        let mut items: Vec<(u16, HostVector)> = Vec::with_capacity(n as usize);
        let mut vectors = 0;
        let result = Self::reserve_locked(
            &mut state,
            unit,
            source_id,
            n,
            block,
            &mut items,
            &mut vectors,
        );
        if let Err(e) = result {
            for (irte, _) in &items {
                state.remap.free(unit, *irte);
            }
            for (_, hv) in items.iter().take(vectors) {
                state.vectors.free(*hv);
            }
            return Err(SizedError::Layer(e));
        }
        Ok(HostReservation {
            host: Arc::clone(self),
            unit,
            items,
        })
    }

    /// Fills `items` with `n` IRTEs, then gives each its host vector (counting them in
    /// `vectors`) and programs it. On error `items` and `vectors` say what to undo.
    fn reserve_locked(
        state: &mut HostState,
        unit: u16,
        source_id: u16,
        n: u32,
        block: bool,
        items: &mut Vec<(u16, HostVector)>,
        vectors: &mut usize,
    ) -> Result<(), ReserveError> {
        const UNSET: HostVector = HostVector { cpu: 0, vector: 0 };
        if block {
            let base = state
                .remap
                .alloc_block(unit, n, source_id)
                .map_err(|e| (e, 0))?;
            items.extend((0..n).map(|i| (base.wrapping_add(i as u16), UNSET)));
        } else {
            for i in 0..n {
                let irte = state.remap.alloc(unit, source_id).map_err(|e| (e, i))?;
                items.push((irte, UNSET));
            }
        }
        for (i, (_, hv)) in items.iter_mut().enumerate() {
            *hv = state.vectors.alloc().map_err(|e| (e, i as u32))?;
            *vectors += 1;
        }
        for (irte, hv) in items.iter() {
            state
                .remap
                .program(unit, *irte, IrteDest::Remapped(*hv))
                .map_err(|e| match e {
                    // Programming an entry is not a shortage of anything.
                    LayerError::Exhausted(r) => (
                        LayerError::Failed {
                            resource: r,
                            reason: "program refused".into(),
                        },
                        0,
                    ),
                    e => (e, 0),
                })?;
        }
        Ok(())
    }

    pub(crate) fn release(&self, unit: u16, items: impl IntoIterator<Item = (u16, HostVector)>) {
        let mut items = items.into_iter().peekable();
        if items.peek().is_some() {
            lock(&self.state).release(unit, items);
        }
    }

    pub(crate) fn next_vm_id(&self) -> VmId {
        self.next_vm.fetch_add(1, Ordering::Relaxed)
    }
}

/// The host: the shared pool of IRTEs and host vectors, and the VMs drawing on it.
/// Cloning shares it.
#[derive(Clone)]
pub struct Host {
    pub(crate) shared: Arc<HostShared>,
}

impl Host {
    /// A host with the shipped layers shaped by `config`.
    pub fn new(config: &HostConfig) -> Result<Host, HostError> {
        Ok(Self::with_layers(
            Box::new(RemapUnits::new(config.remap)?),
            Box::new(VectorMatrix::new(&config.vectors)?),
        ))
    }

    /// A host over a VMM's own layers (or wrapped ones, see [`crate::layers::Faulty`]).
    pub fn with_layers(remap: Box<dyn RemapLayer>, vectors: Box<dyn VectorLayer>) -> Host {
        Host {
            shared: Arc::new(HostShared {
                state: Mutex::new(HostState {
                    owners: OwnerTable::new(vectors.cpus()),
                    remap,
                    vectors,
                    sources: HashMap::new(),
                    vms: HashMap::new(),
                    fault_count: 0,
                    faults: VecDeque::new(),
                }),
                next_vm: AtomicU32::new(1),
            }),
        }
    }

    /// Creates a VM with its devices, quota and guest-route layer.
    pub fn create_vm(
        &self,
        config: VmConfig,
        routes: Box<dyn crate::layers::RouteLayer>,
    ) -> Result<Vm, HostError> {
        Vm::create(self, config, routes)
    }

    /// Delivers an interrupt a device sends: `source_id` is its requester ID, `message`
    /// what it wrote. The path is the hardware's: the device's remapping unit checks and
    /// resolves the IRTE, the host vector leads to its grant's guest route, the route
    /// delivers into the guest. Anything else is a recorded [`Fault`].
    pub fn fire(&self, source_id: u16, message: MsiMessage) -> Result<Delivery, Fault> {
        let fault = |reason| Fault {
            source_id,
            message,
            reason,
        };
        let (vm_id, route, vm) = {
            let mut state = lock(&self.shared.state);
            let resolved = match state.sources.get(&source_id) {
                None => Err(fault(FaultReason::Remap(RemapFault::UnknownSource))),
                Some((unit, _)) => state
                    .remap
                    .deliver(*unit, source_id, message)
                    .map_err(|r| fault(FaultReason::Remap(r))),
            };
            let owner = match resolved {
                Ok(IrteDest::Posted { vm, vcpu, vector }) => {
                    return Ok(Delivery {
                        vm,
                        route: None,
                        vcpu,
                        vector,
                    });
                }
                Ok(IrteDest::Remapped(hv)) => state
                    .owners
                    .get(&hv)
                    .copied()
                    .ok_or(fault(FaultReason::NotGranted)),
                Err(f) => Err(f),
            };
            let owner = match owner {
                Ok(o) => o,
                Err(f) => {
                    state.record(f);
                    return Err(f);
                }
            };
            let vm = state.vms.get(&owner.vm).and_then(Weak::upgrade);
            (owner.vm, owner.route, vm)
        };
        let delivered = vm.and_then(|vm| vm.fire_route(route));
        match delivered {
            Some(dest) => Ok(Delivery {
                vm: vm_id,
                route: Some(route),
                vcpu: dest.vcpu,
                vector: dest.vector,
            }),
            None => {
                let f = fault(FaultReason::StaleRoute);
                lock(&self.shared.state).record(f);
                Err(f)
            }
        }
    }

    /// Faults recorded so far.
    pub fn faults(&self) -> FaultReport {
        let state = lock(&self.shared.state);
        FaultReport {
            count: state.fault_count,
            recent: state.faults.iter().copied().collect(),
        }
    }

    /// What the pool holds now.
    pub fn occupancy(&self) -> HostOccupancy {
        let state = lock(&self.shared.state);
        HostOccupancy {
            units: (0..state.remap.units())
                .map(|u| {
                    let capacity = state.remap.capacity(u);
                    UnitOccupancy {
                        capacity,
                        used: capacity - state.remap.free_entries(u).min(capacity),
                    }
                })
                .collect(),
            vectors_used: state.vectors.allocated(),
            vectors_free: state.vectors.available(),
            vms: state.vms.values().filter(|w| w.strong_count() > 0).count() as u32,
        }
    }
}
