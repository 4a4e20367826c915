//! `--kvm`: a scenario VM whose every step is done by the guest image in a KVM VM. Each
//! step becomes a mailbox command; its result is what the guest reported. What the VMM
//! does to the VM's pvirq device (quota, shares, devices added and removed, a migration)
//! is done on the device itself, and the guest hears of it as a guest would: on its event
//! queue.

use super::outcome::{AllocOutcome, EventView, GrantView, QueryView, StepError};
use crate::SimError;
use crate::report::FireCounts;
use crate::scenario::{AllocStep, Fallback, VmDecl};
use crate::vmm::bar::{BarConfig, Flow, TableMode};
use crate::vmm::{Command, GUEST_VM_MEM, GuestVm, GuestVmConfig, Report, VmmError};
use pvirq_guest_image_abi::mailbox::{
    DriverError, EVENT_WORDS, GRANT_MODE_MASK, GRANT_PARKED, GRANT_PASID, GRANT_WORDS, INDEX_ANY,
    INDEX_ANY_CONTIGUOUS, INDEX_AT, MAX_LIST_EVENTS, Op, Status, TARGETING_PARKED,
    TARGETING_PER_VECTOR, TARGETING_SPREAD,
};
use pvirq_host::model::ModelHost;
use pvirq_host::snapshot::RestoredGrant;
use pvirq_host::{DeviceSpec, Vm};
use pvirq_proto::{
    DeviceInfoExt, EVENT_LEN, Event, GrantMode, IndexRange, IndexSpec, Kind, MessageFormat,
    MsiMessage, PciIdentity, Refusal, Target, Targeting,
};
use std::time::Duration;

/// How long one command may take (a fire step waits up to 1 s per missing interrupt).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A kind as the mailbox spells it.
pub(crate) fn kind_word(kind: Kind) -> u32 {
    match kind {
        Kind::Msi => 0,
        Kind::MsiX => 1,
        Kind::Ims => 2,
    }
}

/// A malformed report: the run cannot go on.
fn bad_report(what: &'static str) -> StepError {
    StepError::Failed(SimError::GuestReport(what))
}

/// A grant as the guest listed it ([`GRANT_WORDS`] words).
fn grant_view(w: &[u32]) -> Option<GrantView> {
    let [index, lo, hi, data, flags, pasid] = <[u32; GRANT_WORDS]>::try_from(w).ok()?;
    Some(GrantView {
        index,
        message: MsiMessage {
            address: u64::from(lo) | u64::from(hi) << 32,
            data,
        },
        mode: GrantMode::from_wire(u8::try_from(flags & GRANT_MODE_MASK).ok()?)?,
        parked: flags & GRANT_PARKED != 0,
        pasid: (flags & GRANT_PASID != 0).then_some(pasid),
    })
}

/// An event as the guest listed it ([`EVENT_WORDS`] words: the record, then "applied").
fn event_view(w: &[u32]) -> Option<EventView> {
    let (record, applied) = w.split_at_checked(EVENT_WORDS - 1)?;
    let bytes: Vec<u8> = record.iter().flat_map(|w| w.to_le_bytes()).collect();
    if bytes.len() != EVENT_LEN {
        return None;
    }
    Some(EventView {
        event: Event::decode(&bytes).ok()?,
        applied: *applied.first()? == 1,
    })
}

/// QUERY's `INFO` extension from result words 2..15.
fn query_ext(r: &Report) -> Option<DeviceInfoExt> {
    if r.r(2) != 1 {
        return None;
    }
    let narrow = |i: usize| u8::try_from(r.r(i)).ok();
    Some(DeviceInfoExt {
        identity: PciIdentity {
            segment: u16::try_from(r.r(3)).ok()?,
            bus: narrow(4)?,
            devfn: narrow(5)?,
            requester_id: u16::try_from(r.r(6)).ok()?,
            pasid: (r.r(9) == 1).then(|| r.r(10)),
        },
        format: MessageFormat::from_wire(narrow(7)?)?,
        can_post: r.r(8) == 1,
        share: r.r(11),
        msix_free_run: u16::try_from(r.r(12)).ok()?,
        ims_free_run: r.r(13),
        parked_drops: r.r(14),
    })
}

/// One scenario VM in KVM.
pub struct GuestSide {
    vm: GuestVm,
    /// What the guest's driver negotiated.
    features: u64,
}

impl GuestSide {
    /// Builds VM `decl` on `host` (untrapped MSI-X tables: pvirq's grants carry everything,
    /// so the VMM traps no table write; vCPUs with `decl`'s APIC IDs) and brings its channel
    /// up from inside the guest, asking for `decl.features`.
    pub fn new(host: &ModelHost, decl: &VmDecl) -> Result<GuestSide, SimError> {
        let config = decl.config();
        let bars = config
            .devices
            .iter()
            .map(|d| BarConfig {
                requester_id: d.requester_id,
                msix_entries: u32::from(d.msix_table_size),
                ims_slots: d.ims_slots,
                table: TableMode::Memory,
                flow: Flow::Pvirq,
            })
            .collect();
        let vm = GuestVm::new(
            host,
            GuestVmConfig {
                vcpus: usize::try_from(decl.vcpus).unwrap_or(usize::MAX),
                mem_size: GUEST_VM_MEM,
                vm: config,
                bars,
            },
        )?;
        let mut side = GuestSide { vm, features: 0 };
        side.init(decl.features)?;
        Ok(side)
    }

    /// The feature bits the guest's driver negotiated.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The host's view of the VM.
    pub fn vm(&self) -> &Vm {
        self.vm.vm()
    }

    /// The KVM VM.
    pub fn guest(&self) -> &GuestVm {
        &self.vm
    }

    fn run(&mut self, command: Command) -> Result<Report, StepError> {
        let report = self
            .vm
            .command(&command, COMMAND_TIMEOUT)
            .map_err(|e| StepError::Failed(e.into()))?;
        match report.status {
            Status::Ok => Ok(report),
            Status::Refused => match refusal_of(&report) {
                Some(r) => Err(StepError::Refused(r)),
                None => Err(StepError::Failed(SimError::GuestReport(
                    "a refusal with an invalid wire status",
                ))),
            },
            Status::DriverError => Err(StepError::Failed(SimError::GuestDriver(
                DriverError::from_word(report.r(pvirq_guest_image_abi::mailbox::RESULT_WORDS - 1)),
            ))),
            Status::BadCommand => Err(StepError::Failed(SimError::GuestReport(
                "the guest refused the command as malformed",
            ))),
            Status::NotReady => Err(StepError::Failed(SimError::GuestReport(
                "the guest's channel is not up",
            ))),
        }
    }

    fn init(&mut self, features: u64) -> Result<(), SimError> {
        let args = [features as u32, (features >> 32) as u32];
        match self.run(Command::new(Op::Init, &args)) {
            Ok(r) => {
                self.features = r.r64(4);
                Ok(())
            }
            Err(StepError::Failed(e)) => Err(e),
            Err(StepError::Refused(_)) => Err(SimError::GuestReport("init refused")),
        }
    }

    /// ALLOC with the guest's own fallback, in the step's shape: any index, from an index
    /// or any contiguous run; a target per vector, spread over the targets, or parked.
    pub fn alloc(&mut self, a: &AllocStep) -> Result<AllocOutcome, SimError> {
        let (index_word, index) = match a.index {
            IndexSpec::Any => (INDEX_ANY, 0),
            IndexSpec::At(i) => (INDEX_AT, i),
            IndexSpec::AnyContiguous => (INDEX_ANY_CONTIGUOUS, 0),
        };
        let targeting = match a.targeting {
            Targeting::PerVector => TARGETING_PER_VECTOR,
            Targeting::Spread => TARGETING_SPREAD,
            Targeting::Parked => TARGETING_PARKED,
        };
        let list: Vec<u32> = a
            .targets
            .iter()
            .flat_map(|d| [d.vcpu, u32::from(d.vector)])
            .collect();
        let args = [
            a.device as u32,
            kind_word(a.kind),
            index_word,
            index,
            u32::from(a.min),
            u32::from(a.max),
            u32::from(a.pasid.is_some()),
            a.pasid.unwrap_or(0),
            u32::from(a.fallback == Fallback::Linux),
            a.targets.len() as u32,
            targeting,
        ];
        let report = match self.run(Command::new(Op::Alloc, &args).with_list(list)) {
            Ok(report) => report,
            Err(StepError::Failed(e)) => return Err(e),
            Err(StepError::Refused(r)) => {
                return Ok(AllocOutcome {
                    attempts: self.last_attempts(),
                    refused: Some(r),
                    ..AllocOutcome::default()
                });
            }
        };
        let first_refusal = u8::try_from(report.r(2))
            .ok()
            .zip(u8::try_from(report.r(3)).ok())
            .and_then(|(s, d)| Refusal::from_wire(s, d, report.r(4)));
        let grants = report
            .list
            .chunks_exact(GRANT_WORDS)
            .map(grant_view)
            .collect::<Option<Vec<_>>>()
            .ok_or(SimError::GuestReport("a grant record with an unknown mode"))?;
        Ok(AllocOutcome {
            grants,
            attempts: report.r(1),
            first_refusal,
            refused: None,
        })
    }

    /// Attempts the last ALLOC made, as the guest reported them.
    fn last_attempts(&self) -> u32 {
        self.vm.last_report().map_or(1, |r| r.r(1))
    }

    fn range_args(device: usize, range: IndexRange) -> [u32; 4] {
        [
            device as u32,
            kind_word(range.kind),
            range.first,
            u32::from(range.count),
        ]
    }

    /// FREE (a careful guest: masks first).
    pub fn free(&mut self, device: usize, range: IndexRange) -> Result<u32, StepError> {
        let args = Self::range_args(device, range);
        Ok(self.run(Command::new(Op::Free, &args))?.r(0))
    }

    /// RETARGET.
    pub fn retarget(
        &mut self,
        device: usize,
        range: IndexRange,
        targets: &[Target],
    ) -> Result<u32, StepError> {
        let [d, k, f, _] = Self::range_args(device, range);
        let list = targets
            .iter()
            .flat_map(|t| [t.vcpu(), u32::from(t.vector())])
            .collect();
        let args = [d, k, f, targets.len() as u32];
        Ok(self
            .run(Command::new(Op::Retarget, &args).with_list(list))?
            .r(0))
    }

    /// QUERY.
    pub fn query(&mut self, device: usize) -> Result<(u32, u32), StepError> {
        let q = self.query_ext(device)?;
        Ok((q.granted, q.available))
    }

    /// QUERY with what `INFO` adds (identity, message format, share, free runs, parked
    /// drops), when the guest negotiated it.
    pub fn query_ext(&mut self, device: usize) -> Result<QueryView, StepError> {
        let r = self.run(Command::new(Op::Query, &[device as u32]))?;
        let ext = query_ext(&r);
        if r.r(2) == 1 && ext.is_none() {
            return Err(bad_report("a QUERY extension out of range"));
        }
        Ok(QueryView {
            granted: r.r(0),
            available: r.r(1),
            ext,
        })
    }

    /// FREE of the listed indices (in any order): one request with `INDEX_LIST`, one per
    /// run of consecutive indices without it. The guest masks them first. The count freed.
    pub fn free_list(
        &mut self,
        device: usize,
        kind: Kind,
        indices: &[u32],
    ) -> Result<u32, StepError> {
        let args = [device as u32, kind_word(kind), indices.len() as u32, 0];
        let command = Command::new(Op::FreeList, &args).with_list(indices.to_vec());
        Ok(self.run(command)?.r(0))
    }

    /// RETARGET by list; `to = None` parks (PARK), `Some(targets)` moves or activates, one
    /// target per index. The count moved.
    pub fn retarget_list(
        &mut self,
        device: usize,
        kind: Kind,
        indices: &[u32],
        to: Option<&[Target]>,
    ) -> Result<u32, StepError> {
        let mut list = indices.to_vec();
        if let Some(targets) = to {
            if targets.len() != indices.len() {
                return Err(bad_report("a RETARGET list needs one target per index"));
            }
            list.extend(
                targets
                    .iter()
                    .flat_map(|t| [t.vcpu(), u32::from(t.vector())]),
            );
        }
        let args = [
            device as u32,
            kind_word(kind),
            indices.len() as u32,
            u32::from(to.is_some()),
        ];
        Ok(self
            .run(Command::new(Op::RetargetList, &args).with_list(list))?
            .r(0))
    }

    /// The guest polls its event queue, applies each REPROGRAM to its table/slots (mask,
    /// program, unmask, replay as spec §12 / `pvirq_guest::apply_event`) and forgets each
    /// revoked vector, and reports the events it handled, in order.
    pub fn events(&mut self) -> Result<Vec<EventView>, StepError> {
        let mut events = Vec::new();
        loop {
            let r = self.run(Command::new(Op::Events, &[]))?;
            let batch = r
                .list
                .chunks_exact(EVENT_WORDS)
                .map(event_view)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad_report("an event record that does not decode"))?;
            events.extend(batch);
            // A full list may have left events for the next command.
            if (r.r(0) as usize) < MAX_LIST_EVENTS {
                return Ok(events);
            }
        }
    }

    /// Sets the VM's quota (`pvirq_host::PvirqDevice::set_quota`).
    pub fn set_quota(&mut self, quota: u32) {
        self.vm.set_quota(quota);
    }

    /// Sets device `device`'s share, `None` for none.
    pub fn set_device_share(&mut self, device: usize, share: Option<u32>) -> Result<(), SimError> {
        Ok(self.vm.set_device_share(device as u32, share)?)
    }

    /// Hot-adds an assigned device; its handle. The device is attached on the host the VM
    /// runs on now, which `host` is unless the VM migrated (then it is the destination).
    pub fn add_device(&mut self, _host: &ModelHost, spec: DeviceSpec) -> Result<u32, SimError> {
        Ok(self.vm.add_device(spec)?)
    }

    /// Hot-removes assigned device `device`.
    pub fn remove_device(&mut self, device: usize) -> Result<(), SimError> {
        Ok(self.vm.remove_device(device as u32)?)
    }

    /// Other VMs released shared host resources.
    pub fn resources_changed(&mut self) {
        self.vm.resources_changed();
    }

    /// Moves the VM's pvirq state to `dest` (another modelled host): pause, save, restore on
    /// a new pvirq `Vm` of `dest` (the VM's configuration as it is now: its devices, quota
    /// and APIC IDs) with its routes rebuilt on this KVM VM's routing table, re-attach; the
    /// source releases everything only after the destination restored
    /// (`finish_migration`). The KVM VM itself (memory, vCPUs) stays, as a migration's
    /// destination VMM would receive it. Returns each grant's fate; the guest hears of the
    /// reprogrammed and revoked ones at its next [`GuestSide::events`].
    ///
    /// A guest that did not negotiate `EVENTS` cannot be told of a changed grant: the
    /// destination then refuses ([DEV-27], `SimError::Vmm` with the restore's reason) and
    /// the VM carries on at the source.
    pub fn migrate(&mut self, dest: &ModelHost) -> Result<Vec<RestoredGrant>, SimError> {
        Ok(self.vm.migrate(dest)?)
    }

    /// Device RESET.
    pub fn reset_device(&mut self, device: usize) -> Result<u32, StepError> {
        Ok(self
            .run(Command::new(Op::ResetDevice, &[device as u32]))?
            .r(0))
    }

    /// virtio reset from inside the guest.
    pub fn reset_virtio(&mut self) -> Result<u32, SimError> {
        match self.run(Command::new(Op::ResetVirtio, &[])) {
            Ok(r) => Ok(r.r(0)),
            Err(StepError::Failed(e)) => Err(e),
            Err(StepError::Refused(_)) => Err(SimError::GuestReport("virtio reset refused")),
        }
    }

    /// The guest rings every doorbell and reports what arrived: `delivered` is what its
    /// handler counted, `misrouted` what arrived where it expected nothing, `blocked` every
    /// doorbell that produced no interrupt.
    pub fn fire(&mut self, device: usize, include_freed: bool) -> Result<FireCounts, StepError> {
        let r = self.run(Command::new(
            Op::Fire,
            &[device as u32, u32::from(include_freed)],
        ))?;
        let (rung, arrived, unexpected) = (u64::from(r.r(0)), u64::from(r.r(1)), u64::from(r.r(2)));
        let seen = arrived + unexpected;
        Ok(FireCounts {
            fired: rung,
            delivered: seen,
            blocked: rung.saturating_sub(seen),
            misrouted: unexpected,
            observed: Some(seen),
        })
    }
}

/// The refusal a report carries in its last three result words.
fn refusal_of(report: &Report) -> Option<Refusal> {
    use pvirq_guest_image_abi::mailbox::RESULT_WORDS;
    let (s, d, i) = (
        report.r(RESULT_WORDS - 3),
        report.r(RESULT_WORDS - 2),
        report.r(RESULT_WORDS - 1),
    );
    Refusal::from_wire(u8::try_from(s).ok()?, u8::try_from(d).ok()?, i)
}

impl From<VmmError> for SimError {
    fn from(e: VmmError) -> Self {
        SimError::Vmm(Box::new(e))
    }
}
