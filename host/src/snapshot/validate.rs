//! Checking an untrusted snapshot against the destination VM's configuration, field by
//! field, before anything is reserved.

use super::{EventLogSnapshot, RestoreError, SNAPSHOT_VERSION, SNAPSHOT_VERSION_MIN, VmSnapshot};
use crate::backend::GuestDest;
use crate::config::VmConfig;
use crate::state::EventLog;
use pvirq_proto::{
    Event, EventBody, GrantMode, Kind, MAX_MSI_VECTORS, MAX_PASID, MIN_GUEST_VECTOR, MsiMessage,
    feature,
};
use std::collections::BTreeSet;

/// A validated snapshot: what restoring it builds, nothing reserved yet.
#[derive(Debug)]
pub(crate) struct CheckedSnapshot {
    /// The grants per device, sorted by kind then index.
    pub(crate) grants: Vec<Vec<CheckedGrant>>,
    /// The event log, recording, with the pending events in order and what is armed.
    pub(crate) events: Option<EventLog>,
    /// Handles whose device was removed.
    pub(crate) removed: Vec<u32>,
}

/// A grant of a validated snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CheckedGrant {
    pub(crate) kind: Kind,
    pub(crate) index: u32,
    pub(crate) dest: Option<GuestDest>,
    pub(crate) message: MsiMessage,
    pub(crate) mode: GrantMode,
    pub(crate) pasid: Option<u32>,
}

impl VmSnapshot {
    /// Checks every field against the destination VM's `config` and the features its
    /// device offers.
    pub(crate) fn validate(
        &self,
        config: &VmConfig,
        offered: u64,
    ) -> Result<CheckedSnapshot, RestoreError> {
        let grants = self.validate_grants(config, offered)?;
        let mut removed = Vec::with_capacity(self.removed.len());
        for handle in self.removed.iter().copied() {
            let holds = self.devices.get(handle as usize).map(|d| d.grants.len());
            if holds != Some(0) || removed.contains(&handle) {
                return Err(RestoreError::Removed { handle });
            }
            removed.push(handle);
        }
        let events = match &self.events {
            None => None,
            Some(_) if self.features & feature::EVENTS == 0 => {
                return Err(RestoreError::EventsNotNegotiated);
            }
            Some(log) => Some(validate_events(log, config)?),
        };
        Ok(CheckedSnapshot {
            grants,
            events,
            removed,
        })
    }

    /// The grants per device, sorted by kind then index.
    fn validate_grants(
        &self,
        config: &VmConfig,
        offered: u64,
    ) -> Result<Vec<Vec<CheckedGrant>>, RestoreError> {
        if !(SNAPSHOT_VERSION_MIN..=SNAPSHOT_VERSION).contains(&self.version) {
            return Err(RestoreError::UnsupportedVersion(self.version));
        }
        if self.features & !offered != 0 {
            return Err(RestoreError::FeaturesNotOffered(self.features & !offered));
        }
        if self.devices.len() != config.devices.len() {
            return Err(RestoreError::DeviceCount {
                snapshot: self.devices.len(),
                config: config.devices.len(),
            });
        }
        let total: u64 = self.devices.iter().map(|d| d.grants.len() as u64).sum();
        if total > u64::from(config.quota) {
            return Err(RestoreError::OverQuota {
                grants: total,
                quota: config.quota,
            });
        }
        let pasid_allowed = self.features & pvirq_proto::feature::PASID != 0;
        let mut out = Vec::with_capacity(self.devices.len());
        for (handle, (dev, spec)) in self.devices.iter().zip(&config.devices).enumerate() {
            let share = spec.effective_share(config.quota);
            if dev.grants.len() as u64 > u64::from(share) {
                return Err(RestoreError::OverShare {
                    handle,
                    grants: dev.grants.len() as u64,
                    share,
                });
            }
            let mut seen = BTreeSet::new();
            let mut grants = Vec::with_capacity(dev.grants.len());
            for g in &dev.grants {
                let kind = Kind::from_wire(g.kind)
                    .filter(|k| spec.supports(*k))
                    .ok_or(RestoreError::Kind {
                        handle,
                        kind: g.kind,
                    })?;
                if g.index >= spec.table_size(kind) {
                    return Err(RestoreError::IndexOutOfRange {
                        handle,
                        kind,
                        index: g.index,
                    });
                }
                if !seen.insert((kind, g.index)) {
                    return Err(RestoreError::DuplicateIndex {
                        handle,
                        kind,
                        index: g.index,
                    });
                }
                let dest = g.guest_dest();
                if let Some(d) = dest
                    && (!config.apic_ids.contains(d.apic_id, config.num_vcpus)
                        || d.vector < MIN_GUEST_VECTOR)
                {
                    return Err(RestoreError::Destination {
                        handle,
                        kind,
                        index: g.index,
                    });
                }
                let mode = GrantMode::from_wire(g.mode).ok_or(RestoreError::Mode {
                    handle,
                    mode: g.mode,
                })?;
                if let Some(p) = g.pasid
                    && (kind != Kind::Ims || p > MAX_PASID || !pasid_allowed)
                {
                    return Err(RestoreError::Pasid { handle });
                }
                grants.push(CheckedGrant {
                    kind,
                    index: g.index,
                    dest,
                    message: g.message(),
                    mode,
                    pasid: g.pasid,
                });
            }
            grants.sort_by_key(|g| (g.kind, g.index));
            let msi = grants.iter().filter(|g| g.kind == Kind::Msi).count() as u32;
            let block_ok = msi == 0
                || (msi.is_power_of_two()
                    && msi <= u32::from(MAX_MSI_VECTORS)
                    && grants
                        .iter()
                        .filter(|g| g.kind == Kind::Msi)
                        .all(|g| g.index < msi));
            if !block_ok {
                return Err(RestoreError::MsiBlock { handle });
            }
            out.push(grants);
        }
        Ok(out)
    }
}

/// Whether `body` names only what a VM configured by `config` has: a device handle (or the
/// VM, for LIMITS) and, for REPROGRAM and REVOKE, a kind of that device and an index
/// inside its table.
fn names_what_the_vm_has(body: &EventBody, config: &VmConfig) -> bool {
    let device = |handle: u32| config.devices.get(handle as usize);
    match *body {
        EventBody::Reprogram {
            device: handle,
            kind,
            index,
            ..
        }
        | EventBody::Revoke {
            device: handle,
            kind,
            index,
            ..
        } => device(handle).is_some_and(|d| d.supports(kind) && index < d.table_size(kind)),
        EventBody::Limits { device: None, .. } => true,
        EventBody::Limits {
            device: Some(handle),
            ..
        }
        | EventBody::Available { device: handle, .. }
        | EventBody::DeviceAdded { device: handle }
        | EventBody::DeviceRemoved { device: handle } => device(handle).is_some(),
    }
}

/// The log `log` describes, recording, each record decoded and checked as the protocol
/// checks it, then against the VM, then against the coalescing a device keeps (one pending
/// event per subject).
fn validate_events(log: &EventLogSnapshot, config: &VmConfig) -> Result<EventLog, RestoreError> {
    let mut out = EventLog::default();
    out.enable();
    out.set_next_sequence(log.next_sequence);
    for (position, record) in log.pending.iter().enumerate() {
        let event =
            Event::decode(record).map_err(|error| RestoreError::EventRecord { position, error })?;
        if event.sequence != 0 {
            return Err(RestoreError::EventSequence { position });
        }
        if !names_what_the_vm_has(&event.body, config) {
            return Err(RestoreError::EventSubject { position });
        }
        out.restore_pending(event.body)
            .map_err(|_| RestoreError::EventSuperseded { position })?;
    }
    let mut seen = BTreeSet::new();
    for armed in &log.armed {
        let ok = (armed.device as usize) < config.devices.len()
            && (1..=config.max_batch).contains(&armed.min_count)
            && seen.insert(armed.device);
        if !ok {
            return Err(RestoreError::Armed {
                device: armed.device,
            });
        }
        out.arm(armed.device, armed.min_count);
    }
    Ok(out)
}
