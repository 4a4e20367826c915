//! `KvmRoutes`: the [`RouteLayer`] that delivers grants into a real KVM guest.
//!
//! Each route is a GSI of the VM's one [`KvmRouteTable`] carrying an MSI entry (compatibility
//! format, destination = the vCPU's APIC ID, data = the vector) and an irqfd. The layer
//! stages on the table across the calls of one request and commits once: one
//! `KVM_SET_GSI_ROUTING` per request, however many vectors it grants, frees or moves.
//!
//! The layer keeps the eventfd of every route so [`RouteLayer::fire`] can write it (the
//! table holds its own duplicate for `KVM_IRQFD`). The eventfds of a batch's new routes are
//! held with the batch and dropped if it is aborted; those of removed routes are dropped
//! when the removal is committed.
//!
//! Measured on this project's nested KVM host, whole requests through the in-process
//! channel (median of 15): ALLOC of 8 vectors 16–31 µs, of 256 0.35–0.7 ms (an eventfd and a
//! `KVM_IRQFD` per vector plus one commit); FREE of 256 about 2.1 ms, dominated by
//! `KVM_IRQFD` deassign (~8 µs each). A device's fire reaches the guest's handler in
//! ~4.4 µs (median; p99 50–90 µs).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::error::KvmRouteError;
use super::msi::Gsi;
use super::table::KvmRouteTable;
use crate::error::LayerError;
use crate::layers::{GuestDest, RouteId, RouteLayer};
use pvirq_proto::{CompatMsi, MsiMessage, Resource};

/// How a vCPU index becomes the APIC ID a message is addressed to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ApicIds {
    /// vCPU `n` has APIC ID `n` (KVM's default when the VMM does not set one).
    #[default]
    Identity,
    /// vCPU `n` has APIC ID `ids[n]`; vCPUs beyond the list have none.
    Table(Vec<u32>),
}

impl ApicIds {
    /// The APIC ID of `vcpu`, if it has one.
    pub fn get(&self, vcpu: u32) -> Option<u32> {
        match self {
            ApicIds::Identity => Some(vcpu),
            ApicIds::Table(ids) => ids.get(vcpu as usize).copied(),
        }
    }
}

/// Counters of a [`KvmRoutes`], readable after the layer was handed to a VM.
#[derive(Debug, Default)]
pub struct KvmRouteCounters {
    commits: AtomicU64,
    failed_commits: AtomicU64,
    aborts: AtomicU64,
    fired: AtomicU64,
    detach_failures: AtomicU64,
}

impl KvmRouteCounters {
    /// Successful commits of staged changes: one `KVM_SET_GSI_ROUTING` each (none when a
    /// batch only attached irqfds, which no request does).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Commits KVM refused; each was rolled back.
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits.load(Ordering::Relaxed)
    }

    /// Batches discarded without commit (including failed commits).
    pub fn aborts(&self) -> u64 {
        self.aborts.load(Ordering::Relaxed)
    }

    /// Interrupts raised through a route's irqfd.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::Relaxed)
    }

    /// Committed removals whose irqfd KVM refused to detach (the table withholds the GSI
    /// and retries on drop).
    pub fn detach_failures(&self) -> u64 {
        self.detach_failures.load(Ordering::Relaxed)
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A live route: where it delivers and the eventfd that raises it.
#[derive(Debug)]
struct LiveRoute {
    dest: GuestDest,
    fd: EventFd,
}

/// A change staged on the table, as the layer must apply it to its live view on commit.
#[derive(Debug)]
enum Staged {
    Add(Gsi, GuestDest, EventFd),
    Update(Gsi, GuestDest),
    Remove(Gsi),
}

/// A VM's guest routes on KVM: GSI routes with irqfds, committed once per request.
///
/// Give a VM exactly one: it owns the VM's [`KvmRouteTable`], and each commit replaces
/// KVM's whole routing table. Route ids are GSI numbers. Routes the table already held
/// when the layer was built keep their GSIs and are never updated or removed by it.
#[derive(Debug)]
pub struct KvmRoutes {
    table: KvmRouteTable,
    apic_ids: ApicIds,
    live: HashMap<Gsi, LiveRoute>,
    staged: Vec<Staged>,
    /// A staging call failed after it had changed the table: only an abort may follow.
    poisoned: bool,
    counters: Arc<KvmRouteCounters>,
}

fn failed(err: &KvmRouteError) -> LayerError {
    LayerError::Failed {
        resource: Resource::GuestRoute,
        reason: err.to_string(),
    }
}

/// The layer error for a table error met while staging.
fn staging_error(err: KvmRouteError) -> LayerError {
    match err {
        KvmRouteError::Exhausted { .. } => LayerError::Exhausted(Resource::GuestRoute),
        KvmRouteError::UnknownGsi(_) => LayerError::NoEntry(Resource::GuestRoute),
        other => failed(&other),
    }
}

impl KvmRoutes {
    /// A layer over `table` (the VM's only one), vCPU `n` at APIC ID `n`.
    pub fn new(table: KvmRouteTable) -> Self {
        Self::with_apic_ids(table, ApicIds::Identity)
    }

    /// A layer over `table` with the VMM's vCPU → APIC ID assignment.
    pub fn with_apic_ids(table: KvmRouteTable, apic_ids: ApicIds) -> Self {
        Self {
            table,
            apic_ids,
            live: HashMap::new(),
            staged: Vec::new(),
            poisoned: false,
            counters: Arc::default(),
        }
    }

    /// The route table (routes as staged, GSI range, KVM's view).
    pub fn table(&self) -> &KvmRouteTable {
        &self.table
    }

    /// The layer's counters; the handle stays valid after the layer is boxed into a VM.
    pub fn counters(&self) -> Arc<KvmRouteCounters> {
        Arc::clone(&self.counters)
    }

    /// Eventfds the layer holds: one per live route, plus one per route the open batch adds.
    pub fn eventfds(&self) -> usize {
        let staged = self
            .staged
            .iter()
            .filter(|s| matches!(s, Staged::Add(..)))
            .count();
        self.live.len() + staged
    }

    /// The message that delivers to `dest`.
    fn message(&self, dest: GuestDest) -> Result<MsiMessage, LayerError> {
        let apic_id = self
            .apic_ids
            .get(dest.vcpu)
            .ok_or_else(|| LayerError::Failed {
                resource: Resource::GuestRoute,
                reason: format!("vCPU {} has no APIC ID", dest.vcpu),
            })?;
        Ok(CompatMsi::fixed(apic_id, dest.vector).message())
    }

    /// Stages the route and attaches its irqfd; on error the table may hold part of it.
    fn stage_route(&mut self, msi: MsiMessage, fd: &EventFd) -> Result<Gsi, KvmRouteError> {
        let gsi = self.table.stage_add(msi)?;
        if let Err(err) = self.table.stage_irqfd(gsi, fd) {
            // The GSI is staged without its irqfd; only an abort undoes that.
            self.poisoned = true;
            return Err(err);
        }
        Ok(gsi)
    }
}

impl RouteLayer for KvmRoutes {
    fn available(&self) -> u32 {
        u32::try_from(self.table.available()).unwrap_or(u32::MAX)
    }

    fn stage_add(&mut self, dest: GuestDest) -> Result<RouteId, LayerError> {
        let msi = self.message(dest)?;
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|err| LayerError::Failed {
            resource: Resource::GuestRoute,
            reason: format!("eventfd: {err}"),
        })?;
        let gsi = self.stage_route(msi, &fd).map_err(staging_error)?;
        self.staged.push(Staged::Add(gsi, dest, fd));
        Ok(gsi.raw())
    }

    fn stage_update(&mut self, id: RouteId, dest: GuestDest) -> Result<(), LayerError> {
        let gsi = Gsi::new(id);
        let added = self
            .staged
            .iter()
            .any(|s| matches!(s, Staged::Add(a, ..) if *a == gsi));
        // Only this layer's routes: a route the table held before is not ours to move.
        if !self.live.contains_key(&gsi) && !added {
            return Err(LayerError::NoEntry(Resource::GuestRoute));
        }
        let msi = self.message(dest)?;
        self.table.stage_update(gsi, msi).map_err(staging_error)?;
        self.staged.push(Staged::Update(gsi, dest));
        Ok(())
    }

    fn stage_remove(&mut self, id: RouteId) -> Result<(), LayerError> {
        let gsi = Gsi::new(id);
        // Only live routes: a route added by this batch is dropped by aborting it.
        if !self.live.contains_key(&gsi) {
            return Err(LayerError::NoEntry(Resource::GuestRoute));
        }
        self.table.stage_remove(gsi).map_err(staging_error)?;
        self.staged.push(Staged::Remove(gsi));
        Ok(())
    }

    fn commit(&mut self) -> Result<(), LayerError> {
        if self.poisoned {
            self.abort();
            return Err(LayerError::Failed {
                resource: Resource::GuestRoute,
                reason: "a staged route could not be completed; batch rolled back".into(),
            });
        }
        match self.table.commit() {
            Ok(()) => {}
            // The new table is live; only detaching an old irqfd failed.
            Err(KvmRouteError::IrqfdUnregister { .. }) => {
                KvmRouteCounters::bump(&self.counters.detach_failures);
            }
            Err(err) => {
                // The table rolled itself back; drop the batch's eventfds with it.
                self.abort();
                KvmRouteCounters::bump(&self.counters.failed_commits);
                return Err(failed(&err));
            }
        }
        for change in std::mem::take(&mut self.staged) {
            match change {
                Staged::Add(gsi, dest, fd) => {
                    self.live.insert(gsi, LiveRoute { dest, fd });
                }
                Staged::Update(gsi, dest) => {
                    if let Some(route) = self.live.get_mut(&gsi) {
                        route.dest = dest;
                    }
                }
                Staged::Remove(gsi) => {
                    self.live.remove(&gsi);
                }
            }
        }
        KvmRouteCounters::bump(&self.counters.commits);
        Ok(())
    }

    fn abort(&mut self) {
        let open = self.table.has_staged() || !self.staged.is_empty() || self.poisoned;
        self.table.abort();
        self.staged.clear();
        self.poisoned = false;
        if open {
            KvmRouteCounters::bump(&self.counters.aborts);
        }
    }

    fn route(&self, id: RouteId) -> Option<GuestDest> {
        self.live.get(&Gsi::new(id)).map(|route| route.dest)
    }

    fn live(&self) -> u32 {
        u32::try_from(self.live.len()).unwrap_or(u32::MAX)
    }

    fn fire(&mut self, id: RouteId) -> Result<(), LayerError> {
        let route = self
            .live
            .get(&Gsi::new(id))
            .ok_or(LayerError::NoEntry(Resource::GuestRoute))?;
        route.fd.write(1).map_err(|err| LayerError::Failed {
            resource: Resource::GuestRoute,
            reason: format!("irqfd write: {err}"),
        })?;
        KvmRouteCounters::bump(&self.counters.fired);
        Ok(())
    }
}
