//! Checking an untrusted snapshot against the destination VM's configuration, field by
//! field, before anything is reserved.

use super::{RestoreError, SNAPSHOT_VERSION, VmSnapshot};
use crate::backend::GuestDest;
use crate::config::VmConfig;
use pvirq_proto::{GrantMode, Kind, MAX_MSI_VECTORS, MAX_PASID, MIN_GUEST_VECTOR, MsiMessage};
use std::collections::BTreeSet;

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
    /// device offers; the grants per device, sorted by kind then index.
    pub(crate) fn validate(
        &self,
        config: &VmConfig,
        offered: u64,
    ) -> Result<Vec<Vec<CheckedGrant>>, RestoreError> {
        if self.version != SNAPSHOT_VERSION {
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
