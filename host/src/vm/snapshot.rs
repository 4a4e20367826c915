//! A VM's grants as a versioned, serde-serialisable state, and its validation.
//!
//! A snapshot to restore is untrusted input (it may come from another host, or from a
//! file anyone could edit): [`VmSnapshot::validate`] checks every field against the
//! destination VM's configuration and refuses the first inconsistency with a typed
//! [`RestoreError`] before anything is reserved. The format on disk or on the wire is the
//! VMM's choice (serde: JSON, bincode, postcard...).

use super::VmConfig;
use crate::backend::GuestDest;
use pvirq_proto::{GrantMode, Kind, MAX_MSI_VECTORS, MAX_PASID, MIN_GUEST_VECTOR, MsiMessage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The snapshot layout this crate writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// One grant as a snapshot holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantSnapshot {
    /// The kind's wire value (1 MSI, 2 MSI-X, 3 IMS).
    pub kind: u8,
    /// Its index in the device's table.
    pub index: u32,
    /// `(APIC ID, vector)` it delivers to; `None` while parked.
    pub dest: Option<(u32, u8)>,
    /// The message's address.
    pub address: u64,
    /// The message's data.
    pub data: u32,
    /// The grant mode's wire value (0 remapped, 1 posted).
    pub mode: u8,
    /// The PASID it was granted for.
    pub pasid: Option<u32>,
}

impl GrantSnapshot {
    /// The message the guest programmed.
    pub fn message(&self) -> MsiMessage {
        MsiMessage {
            address: self.address,
            data: self.data,
        }
    }

    /// Where it delivers, if anywhere.
    pub fn guest_dest(&self) -> Option<GuestDest> {
        self.dest
            .map(|(apic_id, vector)| GuestDest { apic_id, vector })
    }
}

/// One assigned device's grants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    /// The requester ID it had on the source host (informational: the destination's may
    /// differ).
    pub requester_id: u16,
    /// Its grants, in any order.
    pub grants: Vec<GrantSnapshot>,
}

/// A VM's negotiated features and grants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// [`SNAPSHOT_VERSION`] when written by this crate.
    pub version: u32,
    /// The features the driver negotiated.
    pub features: u64,
    /// The devices, in handle order.
    pub devices: Vec<DeviceSnapshot>,
}

/// Why a snapshot cannot be restored. Nothing is reserved when restore refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// A layout this crate does not know.
    #[error("snapshot version {0}, this build reads {SNAPSHOT_VERSION}")]
    UnsupportedVersion(u32),
    /// The snapshot names feature bits this device does not offer.
    #[error("features {0:#x} are not offered here")]
    FeaturesNotOffered(u64),
    /// Not as many devices as the destination VM has.
    #[error("snapshot has {snapshot} devices, the VM {config}")]
    DeviceCount {
        /// In the snapshot.
        snapshot: usize,
        /// In the destination's configuration.
        config: usize,
    },
    /// A kind byte that is not a kind, or one the device does not have.
    #[error("device {handle}: kind {kind} unknown or not offered")]
    Kind {
        /// The device handle.
        handle: usize,
        /// The wire value.
        kind: u8,
    },
    /// An index outside the device's table.
    #[error("device {handle}: {kind} index {index} outside the table")]
    IndexOutOfRange {
        /// The device handle.
        handle: usize,
        /// The kind.
        kind: Kind,
        /// The index.
        index: u32,
    },
    /// The same index granted twice.
    #[error("device {handle}: {kind} index {index} appears twice")]
    DuplicateIndex {
        /// The device handle.
        handle: usize,
        /// The kind.
        kind: Kind,
        /// The index.
        index: u32,
    },
    /// An MSI block that is not `0..n` with n a power of two ≤ 32.
    #[error("device {handle}: the MSI grants are not one block 0..n")]
    MsiBlock {
        /// The device handle.
        handle: usize,
    },
    /// A destination that is not one of the VM's APIC IDs, or a vector below 0x20.
    #[error("device {handle}: {kind} index {index} targets no valid destination")]
    Destination {
        /// The device handle.
        handle: usize,
        /// The kind.
        kind: Kind,
        /// The index.
        index: u32,
    },
    /// A mode byte that is not a mode.
    #[error("device {handle}: grant mode {mode} unknown")]
    Mode {
        /// The device handle.
        handle: usize,
        /// The wire value.
        mode: u8,
    },
    /// A PASID on a non-IMS grant, wider than 20 bits, or without the PASID feature.
    #[error("device {handle}: a PASID where none can be")]
    Pasid {
        /// The device handle.
        handle: usize,
    },
    /// More grants than the destination VM's quota.
    #[error("{grants} grants exceed the quota of {quota}")]
    OverQuota {
        /// Grants in the snapshot.
        grants: u64,
        /// The destination's quota.
        quota: u32,
    },
    /// The destination VM already holds grants: restore needs a fresh VM.
    #[error("the VM already holds {0} vectors")]
    NotFresh(u32),
    /// The route layer refused to commit the restored routes; nothing is held.
    #[error("the guest routes could not be committed")]
    Routes,
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
