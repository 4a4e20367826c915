//! The in-process guest side of one scenario VM: the guest driver (`pvirq-guest`) over an
//! in-process channel, the assigned devices' tables it programs ([`GuestDevice`]), and
//! the VMM's part (quota, shares, hotplug, migration) on the channel's host device.

use super::guest_tables::{GuestDevice, Programmer};
use super::outcome::{AllocOutcome, EventView, GrantView, QueryView, StepError};
use crate::scenario::{AllocStep, Fallback, VmDecl};
use crate::{Channel, SimError};
use pvirq_guest::{Options, index_list};
use pvirq_host::model::ModelHost;
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::snapshot::RestoredGrant;
use pvirq_host::{DeviceSpec, Vm, VmConfig};
use pvirq_proto::{
    Alloc, EventBody, Grant, GrantInfo, IndexRange, Indices, Kind, Le32, Refusal, Target, Targeting,
};

/// How many requests one ALLOC step may send under a fallback policy.
const MAX_ATTEMPTS: u32 = 4;

/// One VM's in-process guest.
pub struct ChannelSide {
    /// The channel; `None` only inside [`ChannelSide::migrate`].
    channel: Option<Channel>,
    /// The assigned devices, by handle.
    devices: Vec<GuestDevice>,
    /// Each device's share as the VMM last set it (the destination of a migration is
    /// configured with them: shares are the VMM's, not part of the device state).
    shares: Vec<Option<u32>>,
}

impl std::fmt::Debug for ChannelSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSide")
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

/// `indices` as the little-endian entries an index list carries.
fn le(indices: &[u32]) -> Vec<Le32> {
    indices.iter().map(|i| Le32::new(*i)).collect()
}

impl ChannelSide {
    /// VM `decl` on `host` (routes recorded in memory, with KVM's limits), its driver
    /// negotiating `decl.features`.
    pub fn new(host: &ModelHost, decl: &VmDecl) -> Result<ChannelSide, SimError> {
        let options = Options {
            features: decl.features,
            ..Options::default()
        };
        let config = decl.config();
        let channel = Channel::new(
            host,
            config.clone(),
            Box::new(MemoryRoutes::kvm_like()),
            options,
        )?;
        let devices = config
            .devices
            .iter()
            .map(|d| GuestDevice::new(d.requester_id, d.msix_table_size, d.ims_slots))
            .collect::<Result<_, _>>()?;
        Ok(ChannelSide {
            channel: Some(channel),
            devices,
            shares: config.devices.iter().map(|d| d.share).collect(),
        })
    }

    fn channel(&mut self) -> Result<&mut Channel, SimError> {
        self.channel.as_mut().ok_or(SimError::Detached)
    }

    fn device(&mut self, device: usize) -> Result<&mut GuestDevice, SimError> {
        self.devices.get_mut(device).ok_or(SimError::GuestReport(
            "a step names a device the guest never saw",
        ))
    }

    /// The host's view of the VM.
    pub fn vm(&self) -> Option<&Vm> {
        self.channel.as_ref().map(Channel::vm)
    }

    /// The channel.
    pub fn channel_ref(&self) -> Option<&Channel> {
        self.channel.as_ref()
    }

    /// The guest's devices (their tables and what it holds), by handle.
    pub(super) fn devices(&self) -> &[GuestDevice] {
        &self.devices
    }

    /// ALLOC as the step asks it, with its fallback policy (Linux's: on NO_SPACE ask again
    /// for what the host said it has); each grant is programmed into the device's table,
    /// masked if parked.
    pub fn alloc(&mut self, a: &AllocStep) -> Result<AllocOutcome, SimError> {
        let (mut min, mut max) = (a.min, a.max);
        let mut out = AllocOutcome {
            attempts: 1,
            ..AllocOutcome::default()
        };
        let wire = a.wire_targets();
        loop {
            let targets: &[Target] = match a.targeting {
                Targeting::PerVector => wire.get(..usize::from(max)).unwrap_or(&wire),
                Targeting::Spread => &wire,
                Targeting::Parked => &[],
            };
            let blank = GrantInfo::from_grant(Grant::new(0, Default::default()));
            let mut grants = vec![blank; usize::from(max)];
            let alloc = Alloc {
                kind: a.kind,
                index: a.index,
                min,
                max,
                pasid: a.pasid,
                targets,
                targeting: a.targeting,
            };
            let answer = self
                .channel()?
                .driver()
                .alloc(a.device as u32, alloc, &mut grants)
                .map(|got| got.grants.iter().map(|g| GrantView::from(*g)).collect());
            match answer {
                Ok(granted) => {
                    out.grants = granted;
                    break;
                }
                Err(e) => {
                    let refusal = match StepError::from(e) {
                        StepError::Refused(r) => r,
                        StepError::Failed(e) => return Err(e),
                    };
                    let retry = match refusal {
                        Refusal::NoSpace { available, .. }
                            if a.fallback == Fallback::Linux
                                && available >= 1
                                && available < u32::from(max)
                                && out.attempts < MAX_ATTEMPTS =>
                        {
                            u16::try_from(available).ok()
                        }
                        _ => None,
                    };
                    match retry {
                        Some(n) => {
                            out.first_refusal.get_or_insert(refusal);
                            out.attempts += 1;
                            (min, max) = (n, n);
                        }
                        None => {
                            out.refused = Some(refusal);
                            return Ok(out);
                        }
                    }
                }
            }
        }
        let device = self.device(a.device)?;
        for g in &out.grants {
            let pasid = g.pasid.or(a.pasid);
            device.program(a.kind, g.index, g.message, pasid, g.parked)?;
        }
        Ok(out)
    }

    /// FREE of `indices` (a run when `run`, else a list): a careful guest masks them
    /// first, and forgets them once freed.
    pub fn free(
        &mut self,
        device: usize,
        kind: Kind,
        indices: &[u32],
        run: bool,
    ) -> Result<u32, StepError> {
        let masked = self.device(device)?.mask(kind, indices)?;
        let entries = le(indices);
        let sel = self.selection(kind, indices, &entries, run)?;
        let freed = self.channel()?.driver().free_indices(device as u32, sel);
        let dev = self.device(device)?;
        match freed {
            Ok(done) => {
                dev.forget(kind, indices);
                Ok(done.count)
            }
            Err(e) => {
                dev.unmask(&masked)?;
                Err(e.into())
            }
        }
    }

    /// A run or a list, as the step named it.
    fn selection<'e>(
        &self,
        kind: Kind,
        indices: &[u32],
        entries: &'e [Le32],
        run: bool,
    ) -> Result<Indices<'e>, StepError> {
        if run {
            let first = indices.first().copied().unwrap_or(0);
            let count = u16::try_from(indices.len()).unwrap_or(u16::MAX);
            return Ok(Indices::Run(IndexRange { kind, first, count }));
        }
        Ok(index_list(kind, entries)?)
    }

    /// RETARGET of `indices` to `to` (one target per index: moves active grants,
    /// activates parked ones, whose slots the guest then unmasks), or with `to = None`
    /// RETARGET `PARK` (the guest masks them first).
    pub fn retarget(
        &mut self,
        device: usize,
        kind: Kind,
        indices: &[u32],
        run: bool,
        to: Option<&[Target]>,
    ) -> Result<u32, StepError> {
        let entries = le(indices);
        let sel = self.selection(kind, indices, &entries, run)?;
        match to {
            Some(targets) => {
                let done = self
                    .channel()?
                    .driver()
                    .activate(device as u32, sel, targets)?;
                self.device(device)?.activate(kind, indices)?;
                Ok(done.count)
            }
            None => {
                let masked = self.device(device)?.mask(kind, indices)?;
                let parked = self.channel()?.driver().deactivate(device as u32, sel);
                match parked {
                    Ok(done) => Ok(done.count),
                    Err(e) => {
                        self.device(device)?.unmask(&masked)?;
                        Err(e.into())
                    }
                }
            }
        }
    }

    /// QUERY (with `INFO` when negotiated).
    pub fn query(&mut self, device: usize) -> Result<QueryView, StepError> {
        let q = self.channel()?.driver().query(device as u32)?;
        Ok(QueryView {
            granted: q.info.granted,
            available: q.info.available,
            ext: q.info.ext,
        })
    }

    /// Device RESET: the guest masks the device's vectors, and forgets them once freed.
    pub fn reset_device(&mut self, device: usize) -> Result<u32, StepError> {
        let done = self.channel()?.driver().reset_device(device as u32)?;
        self.device(device)?.forget_all()?;
        Ok(done.count)
    }

    /// virtio reset: the driver goes away (the host frees everything) and comes back.
    pub fn reset_virtio(&mut self) -> Result<(), SimError> {
        let channel = self.channel.take().ok_or(SimError::Detached)?;
        self.channel = Some(channel.reset_virtio()?);
        for device in &mut self.devices {
            device.forget_all()?;
        }
        Ok(())
    }

    /// The guest reads every event the device has written, in order, and applies each:
    /// REPROGRAM and REVOKE to the device's table ([`pvirq_guest::apply_event`]: mask,
    /// program, unmask, replay; or mask and forget), DEVICE_REMOVED by forgetting the
    /// device's vectors. A configuration change is read first.
    pub fn events(&mut self) -> Result<Vec<EventView>, StepError> {
        let channel = self.channel.as_mut().ok_or(SimError::Detached)?;
        let driver = channel.driver();
        driver.handle_interrupt()?;
        let mut seen = Vec::new();
        while let Some(event) = driver.next_event()? {
            let applied = match event.body {
                EventBody::Reprogram {
                    device,
                    kind,
                    index,
                    ..
                }
                | EventBody::Revoke {
                    device,
                    kind,
                    index,
                    ..
                } => {
                    let holds = self
                        .devices
                        .get(device as usize)
                        .is_some_and(|d| d.held.contains_key(&(kind, index)));
                    if holds {
                        let mut programmer = Programmer {
                            devices: &mut self.devices,
                            replays: 0,
                            error: None,
                        };
                        pvirq_guest::apply_event(&mut programmer, &event);
                        if let Some(e) = programmer.error {
                            return Err(e.into());
                        }
                    }
                    holds
                }
                EventBody::DeviceRemoved { device } => {
                    if let Some(d) = self.devices.get_mut(device as usize) {
                        d.forget_all()?;
                    }
                    false
                }
                _ => false,
            };
            seen.push(EventView { event, applied });
        }
        Ok(seen)
    }

    /// The VMM sets the VM's quota.
    pub fn set_quota(&mut self, quota: u32) {
        if let Some(channel) = &self.channel {
            channel.set_quota(quota);
        }
    }

    /// The VMM sets device `device`'s share.
    pub fn set_device_share(&mut self, device: usize, share: Option<u32>) -> Result<(), SimError> {
        self.channel()?.set_device_share(device as u32, share)?;
        if let Some(s) = self.shares.get_mut(device) {
            *s = share;
        }
        Ok(())
    }

    /// The VMM assigns the device `spec` describes (placed on `host` already) and the
    /// guest gets its tables; returns its handle.
    pub fn add_device(&mut self, host: &ModelHost, spec: DeviceSpec) -> Result<u32, SimError> {
        let channel = self.channel.as_ref().ok_or(SimError::Detached)?;
        let vm = host
            .vm_id(channel.vm())
            .ok_or(SimError::GuestReport("the VM is not on this host"))?;
        let backend = host.attach(vm, spec.requester_id)?;
        let handle = channel.add_device(spec, Box::new(backend))?;
        self.devices.push(GuestDevice::new(
            spec.requester_id,
            spec.msix_table_size,
            spec.ims_slots,
        )?);
        self.shares.push(spec.share);
        Ok(handle)
    }

    /// The VMM takes device `device` away (the guest learns it from DEVICE_REMOVED).
    pub fn remove_device(&mut self, device: usize) -> Result<(), SimError> {
        // Dropping the backend gives its requester ID back to the host.
        drop(self.channel()?.remove_device(device as u32)?);
        Ok(())
    }

    /// The VMM says other VMs released shared resources.
    pub fn resources_changed(&mut self) {
        if let Some(channel) = &self.channel {
            channel.resources_changed();
        }
    }

    /// The configuration a destination VM gets: the source's now (devices plugged since
    /// included, the quota as last set) with the shares the VMM gave.
    fn destination_config(&self) -> Result<VmConfig, SimError> {
        let vm = self.vm().ok_or(SimError::Detached)?;
        let mut config = (*vm.config()).clone();
        for (spec, share) in config.devices.iter_mut().zip(&self.shares) {
            spec.share = *share;
        }
        Ok(config)
    }

    /// Live migration to `dest`: the device is paused and saved, the guest detached, the
    /// device restored on a fresh VM of `dest` (every grant re-reserved there first), the
    /// guest attached to it, and only then the source releases everything. If `dest`
    /// refuses, the guest goes back to the source, which resumes; the error says why.
    /// Returns each grant's fate.
    pub fn migrate(&mut self, dest: &ModelHost) -> Result<Vec<RestoredGrant>, SimError> {
        let config = self.destination_config()?;
        let channel = self.channel.take().ok_or(SimError::Detached)?;
        let state = channel.pause_and_save();
        let (guest, mut source) = channel.detach();
        let restored = dest
            .create_vm(config, Box::new(MemoryRoutes::kvm_like()))
            .map_err(SimError::from)
            .and_then(|vm| guest.restore(vm, &state));
        match restored {
            Ok((side, report)) => {
                self.channel = Some(guest.attach(side));
                source.finish_migration();
                Ok(report)
            }
            Err(e) => {
                self.channel = Some(guest.attach(source));
                Err(e)
            }
        }
    }
}
