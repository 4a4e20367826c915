//! The guest side of one scenario VM: either the driver in this process over an in-process
//! channel ([`Side::Channel`]), or the guest image in a real KVM VM doing every step itself
//! ([`Side::Guest`], `--kvm`). The runner asks the same questions of both; each arm calls
//! its side's method of the same name.

use super::channel_side::ChannelSide;
use super::fire::fire_in_process;
use super::guest_side::GuestSide;
use super::outcome::{AllocOutcome, EventView, QueryView, StepError};
use super::view::DeviceView;
use crate::SimError;
use crate::report::FireCounts;
use crate::scenario::{AllocStep, IndexSel};
use pvirq_host::model::ModelHost;
use pvirq_host::snapshot::RestoredGrant;
use pvirq_host::{DeviceSpec, Vm};
use pvirq_proto::{IndexRange, Kind, Target};

/// One VM's guest side.
pub enum Side {
    /// The driver in this process.
    Channel(Box<ChannelSide>),
    /// The guest image in a KVM VM.
    Guest(Box<GuestSide>),
}

/// A run of indices as version 1 names it, if `sel` is one.
fn run_of(kind: Kind, sel: &IndexSel) -> Option<IndexRange> {
    match sel {
        IndexSel::Run { first, count } => Some(IndexRange {
            kind,
            first: *first,
            count: *count,
        }),
        IndexSel::List(_) => None,
    }
}

impl Side {
    /// The host's view of the VM (none only while a migration moves it).
    pub fn vm(&self) -> Option<&Vm> {
        match self {
            Side::Channel(c) => c.vm(),
            Side::Guest(g) => Some(g.vm()),
        }
    }

    /// ALLOC as the step asks it (index form, targeting), with its fallback policy.
    pub fn alloc(&mut self, a: &AllocStep) -> Result<AllocOutcome, SimError> {
        match self {
            Side::Channel(c) => c.alloc(a),
            Side::Guest(g) => g.alloc(a),
        }
    }

    /// FREE of a run or a list; the count freed.
    pub fn free(&mut self, device: usize, kind: Kind, sel: &IndexSel) -> Result<u32, StepError> {
        match (self, run_of(kind, sel)) {
            (Side::Channel(c), run) => c.free(device, kind, &sel.indices(), run.is_some()),
            (Side::Guest(g), Some(range)) => g.free(device, range),
            (Side::Guest(g), None) => g.free_list(device, kind, &sel.indices()),
        }
    }

    /// RETARGET of a run or a list to `to` (one target per index), or with `to = None`
    /// RETARGET `PARK`; the count moved.
    pub fn retarget(
        &mut self,
        device: usize,
        kind: Kind,
        sel: &IndexSel,
        to: Option<&[Target]>,
    ) -> Result<u32, StepError> {
        match (self, run_of(kind, sel), to) {
            (Side::Channel(c), run, to) => {
                c.retarget(device, kind, &sel.indices(), run.is_some(), to)
            }
            // One path for every guest RETARGET: it unmasks what it activates (a parked
            // grant's slot stays masked until then), and without INDEX_LIST it sends runs,
            // version 1's bytes.
            (Side::Guest(g), _, to) => g.retarget_list(device, kind, &sel.indices(), to),
        }
    }

    /// QUERY; with `info` (the VM negotiated `INFO`) the extended answer.
    pub fn query(&mut self, device: usize, info: bool) -> Result<QueryView, StepError> {
        match self {
            Side::Channel(c) => c.query(device),
            Side::Guest(g) if info => g.query_ext(device),
            Side::Guest(g) => g.query(device).map(|(granted, available)| QueryView {
                granted,
                available,
                ext: None,
            }),
        }
    }

    /// Device RESET; the count freed.
    pub fn reset_device(&mut self, device: usize) -> Result<u32, StepError> {
        match self {
            Side::Channel(c) => c.reset_device(device),
            Side::Guest(g) => g.reset_device(device),
        }
    }

    /// virtio reset: the driver goes away and comes back.
    pub fn reset_virtio(&mut self) -> Result<(), SimError> {
        match self {
            Side::Channel(c) => c.reset_virtio(),
            Side::Guest(g) => g.reset_virtio().map(|_| ()),
        }
    }

    /// The guest polls its event queue, applies what it reads, and says what it handled.
    pub fn events(&mut self) -> Result<Vec<EventView>, StepError> {
        match self {
            Side::Channel(c) => c.events(),
            Side::Guest(g) => g.events(),
        }
    }

    /// The VMM sets the VM's quota.
    pub fn set_quota(&mut self, quota: u32) {
        match self {
            Side::Channel(c) => c.set_quota(quota),
            Side::Guest(g) => g.set_quota(quota),
        }
    }

    /// The VMM sets a device's share.
    pub fn set_device_share(&mut self, device: usize, share: Option<u32>) -> Result<(), SimError> {
        match self {
            Side::Channel(c) => c.set_device_share(device, share),
            Side::Guest(g) => g.set_device_share(device, share),
        }
    }

    /// The VMM assigns a device (placed on `host`); its handle.
    pub fn add_device(&mut self, host: &ModelHost, spec: DeviceSpec) -> Result<u32, SimError> {
        match self {
            Side::Channel(c) => c.add_device(host, spec),
            Side::Guest(g) => g.add_device(host, spec),
        }
    }

    /// The VMM takes a device away.
    pub fn remove_device(&mut self, device: usize) -> Result<(), SimError> {
        match self {
            Side::Channel(c) => c.remove_device(device),
            Side::Guest(g) => g.remove_device(device),
        }
    }

    /// The VMM says other VMs released shared resources.
    pub fn resources_changed(&mut self) {
        match self {
            Side::Channel(c) => c.resources_changed(),
            Side::Guest(g) => g.resources_changed(),
        }
    }

    /// The VMM migrates the VM to `dest`; each grant's fate.
    pub fn migrate(&mut self, dest: &ModelHost) -> Result<Vec<RestoredGrant>, SimError> {
        match self {
            Side::Channel(c) => c.migrate(dest),
            Side::Guest(g) => g.migrate(dest),
        }
    }

    /// Fires every vector `view` holds on `device` (and, with `include_freed`, the
    /// messages it gave back). In-process: the device reads each message from its table
    /// (as the guest programmed it) and writes it to `host`, the host the VM is on; a
    /// masked slot (a parked grant) sends nothing. In a KVM VM: the guest rings each
    /// doorbell and counts what its handler saw, and that is what is reported.
    pub(super) fn fire(
        &mut self,
        host: &ModelHost,
        device: usize,
        view: &DeviceView,
        include_freed: bool,
    ) -> Result<FireCounts, StepError> {
        match self {
            Side::Channel(c) => fire_in_process(c.devices(), host, device, view, include_freed),
            Side::Guest(g) => g.fire(device, include_freed),
        }
    }
}
