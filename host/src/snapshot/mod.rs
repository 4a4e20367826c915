//! A VM's grants and pending events as a versioned, serde-serialisable state
//! ([`VmSnapshot`], taken by [`crate::Vm::snapshot`]), why one cannot be restored
//! ([`RestoreError`]), and what became of each grant of one that was ([`RestoredGrant`],
//! from [`crate::Vm::restore`]).
//!
//! A snapshot to restore is untrusted input (it may come from another host, or from a
//! file anyone could edit): it is validated (`validate.rs`) against the destination VM's
//! configuration, and the first inconsistency is refused with a typed [`RestoreError`]
//! before anything is reserved. The format on disk or on the wire is the VMM's choice
//! (serde: JSON, bincode, postcard...).

mod validate;

pub(crate) use validate::CheckedGrant;

use crate::backend::GuestDest;
use crate::state::VmState;
use pvirq_proto::{EVENT_LEN, Event, Kind, MsiMessage, Resource};
use serde::{Deserialize, Serialize};

/// The snapshot layout this crate writes. Version 2 added the event log, removed devices,
/// `config_generation` and the quota the driver saw; this build reads versions 1 and 2.
pub const SNAPSHOT_VERSION: u32 = 2;

/// The oldest snapshot layout this crate reads.
pub const SNAPSHOT_VERSION_MIN: u32 = 1;

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

/// A device with an AVAILABLE event armed (spec §12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmedSnapshot {
    /// The device handle.
    pub device: u32,
    /// The count an ALLOC must be able to get before the event is sent.
    pub min_count: u16,
}

/// The pending-event log of a driver that negotiated the event queue (spec §12, §13).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLogSnapshot {
    /// The sequence number the next event written carries.
    pub next_sequence: u32,
    /// The events not yet written, in order, each as its 32-byte record with `sequence`
    /// 0: a number is given when the event is written.
    pub pending: Vec<[u8; EVENT_LEN]>,
    /// The devices with an AVAILABLE armed.
    pub armed: Vec<ArmedSnapshot>,
}

/// A VM's negotiated features, grants and pending events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// [`SNAPSHOT_VERSION`] when written by this crate.
    pub version: u32,
    /// The features the driver negotiated.
    pub features: u64,
    /// The devices, in handle order: the handles the driver can see.
    pub devices: Vec<DeviceSnapshot>,
    /// The event log, when the driver negotiated `PVIRQ_F_EVENTS` and went live
    /// (version 2).
    #[serde(default)]
    pub events: Option<EventLogSnapshot>,
    /// Handles whose device the host removed: they hold nothing and answer NO_DEVICE
    /// (version 2).
    #[serde(default)]
    pub removed: Vec<u32>,
    /// The virtio `config_generation` (version 2).
    #[serde(default)]
    pub config_generation: u32,
    /// The quota in the driver's configuration (version 2): a destination with another
    /// quota moves `config_generation` and reports the change (LIMITS).
    #[serde(default)]
    pub vm_quota: Option<u32>,
}

/// Why a snapshot cannot be restored. Nothing is reserved when restore refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// A layout this crate does not know.
    #[error("snapshot version {0}, this build reads {SNAPSHOT_VERSION_MIN}..={SNAPSHOT_VERSION}")]
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
    /// More grants of one device than its share on the destination (spec §3.7).
    #[error("device {handle}: {grants} grants exceed its share of {share}")]
    OverShare {
        /// The device handle.
        handle: usize,
        /// Its grants in the snapshot.
        grants: u64,
        /// Its share on the destination.
        share: u32,
    },
    /// The destination VM already holds grants: restore needs a fresh VM.
    #[error("the VM already holds {0} vectors")]
    NotFresh(u32),
    /// The route layer refused to commit the restored routes; nothing is held.
    #[error("the guest routes could not be committed")]
    Routes,
    /// An event log, although the driver did not negotiate `PVIRQ_F_EVENTS`.
    #[error("an event log without the event queue negotiated")]
    EventsNotNegotiated,
    /// A pending event record the protocol rejects.
    #[error("pending event {position}: {error}")]
    EventRecord {
        /// Its position in the log.
        position: usize,
        /// Why the record is not an event.
        error: pvirq_proto::Error,
    },
    /// A pending event carrying a sequence number (one is given only when it is written).
    #[error("pending event {position} carries a sequence number")]
    EventSequence {
        /// Its position in the log.
        position: usize,
    },
    /// A pending event about a device, kind or index the destination does not have.
    #[error("pending event {position} names what the VM does not have")]
    EventSubject {
        /// Its position in the log.
        position: usize,
    },
    /// Two pending events about the same thing: a device keeps only the later one (§12).
    #[error("pending event {position} is about the same thing as an earlier one")]
    EventSuperseded {
        /// Its position in the log.
        position: usize,
    },
    /// An AVAILABLE armed for a device the VM does not have, twice, or for a count no
    /// ALLOC asks (0 or above `max_batch`).
    #[error("AVAILABLE armed for device {device} is inconsistent")]
    Armed {
        /// The device handle.
        device: u32,
    },
    /// A removed device the VM does not have, named twice, or holding grants.
    #[error("removed device {handle} is inconsistent")]
    Removed {
        /// The device handle.
        handle: u32,
    },
}

/// What became of one grant of a restored snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restored {
    /// The same message: nothing changes for the guest.
    Kept,
    /// Backed, with a new message the guest must program.
    Reprogrammed(MsiMessage),
    /// Not backed: the host had no room (`resource`), or refused.
    Revoked(Resource),
}

/// One grant's fate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoredGrant {
    /// The device handle.
    pub device: u32,
    /// The kind.
    pub kind: Kind,
    /// The index.
    pub index: u32,
    /// What became of it.
    pub outcome: Restored,
}

/// The snapshot of a VM's state: its negotiated features, every grant of the devices the
/// driver sees, and the pending events.
pub(crate) fn capture(st: &VmState) -> VmSnapshot {
    let visible = st.devices.iter().take(st.devices.visible());
    VmSnapshot {
        version: SNAPSHOT_VERSION,
        features: st.features,
        devices: visible
            .clone()
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
        events: st.events.is_enabled().then(|| EventLogSnapshot {
            next_sequence: st.events.next_sequence(),
            pending: st
                .events
                .pending()
                .filter_map(|body| {
                    let mut record = [0u8; EVENT_LEN];
                    // Fails only for handle 0xFFFF_FFFF, which is never assigned.
                    let event = Event {
                        sequence: 0,
                        body: *body,
                    };
                    event.encode(&mut record).ok().map(|_| record)
                })
                .collect(),
            armed: st
                .events
                .armed()
                .into_iter()
                .map(|(device, min_count)| ArmedSnapshot { device, min_count })
                .collect(),
        }),
        removed: visible
            .enumerate()
            .filter(|(_, d)| d.removed)
            .map(|(h, _)| h as u32)
            .collect(),
        config_generation: st.config_generation,
        vm_quota: Some(st.config.quota),
    }
}
