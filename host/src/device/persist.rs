//! Snapshot and restore of the device, in Firecracker's `persist.rs` shape: a versioned,
//! serde-serialisable state of the device (features, both queues, configuration) and of
//! the VM (grants, pending events and the next sequence number: [`VmSnapshot`]).
//!
//! A state to restore is untrusted input (spec §8): [`PvirqDevice::restore`] validates every
//! field and refuses the first inconsistency with a typed [`PersistError`], holding nothing
//! afterwards. Restoring re-reserves every grant through the destination's backends before
//! the VM runs ([`Vm::restore`]); a grant the destination gives another message, or cannot
//! back, is reported to a driver that negotiated the event queue (REPROGRAM, REVOKE), and
//! refuses the restore for one that did not ([DEV-27]). The source keeps its grants until
//! the VMM calls [`PvirqDevice::finish_migration`] once the destination has confirmed
//! ([DEV-28]).

use super::device::{PvirqDevice, VirtioInterrupt};
use super::error::ActivateError;
use crate::error::HostError;
use crate::snapshot::{RestoreError, Restored, RestoredGrant, VmSnapshot};
use crate::vm::Vm;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::EventFd;

/// The device state layout this crate writes. Version 2 has both queues (version 1's
/// device had the request queue only) and a version-2 [`VmSnapshot`]; this build reads
/// versions 1 and 2.
pub const DEVICE_STATE_VERSION: u32 = 2;

/// The oldest device state layout this crate reads.
pub const DEVICE_STATE_VERSION_MIN: u32 = 1;

/// One queue, as virtio-queue's `QueueState` describes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Its maximum size.
    pub max_size: u16,
    /// The size the driver set.
    pub size: u16,
    /// Whether the driver made it ready.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available entry the device reads.
    pub next_avail: u16,
    /// Next used entry the device writes.
    pub next_used: u16,
    /// Whether the driver stopped it (QueueReady ← 0 while live).
    pub stopped: bool,
}

impl QueueSnapshot {
    fn of(queue: &Queue, stopped: bool) -> Self {
        let s = queue.state();
        QueueSnapshot {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            stopped,
        }
    }

    /// The queue, with the destination device's maximum size (the source's may have been
    /// smaller, never larger).
    fn queue(&self, max_size: u16) -> Option<Queue> {
        if self.max_size > max_size {
            return None;
        }
        Queue::try_from(QueueState {
            max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: false,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .ok()
    }
}

/// The device and its VM's grants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvirqDeviceState {
    /// [`DEVICE_STATE_VERSION`] when written by this crate.
    pub version: u32,
    /// The virtio device ID presented.
    pub device_type: u32,
    /// The features the driver acknowledged.
    pub acked_features: u64,
    /// Whether the device had asked for a reset.
    pub needs_reset: bool,
    /// The queues, if the device was live.
    pub queues: Option<Vec<QueueSnapshot>>,
    /// The VM's grants.
    pub vm: VmSnapshot,
}

/// Why a state cannot be restored. Nothing is held when restore refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PersistError {
    /// A layout this crate does not know.
    #[error(
        "device state version {0}, this build reads {DEVICE_STATE_VERSION_MIN}..={DEVICE_STATE_VERSION}"
    )]
    UnsupportedVersion(u32),
    /// Device ID 0, which no driver binds to.
    #[error("device ID 0")]
    DeviceType,
    /// The state's features are not all offered by the destination's device.
    #[error("features {0:#x} are not offered here")]
    FeaturesNotOffered(u64),
    /// A queue whose fields virtio-queue refuses (size, addresses, alignment).
    #[error("queue {0}: unusable state")]
    Queue(usize),
    /// The queues, as restored, cannot go live.
    #[error(transparent)]
    Activate(#[from] ActivateError),
    /// The grants cannot be restored.
    #[error(transparent)]
    Grants(#[from] RestoreError),
    /// Some grants would change or disappear and the driver did not negotiate the event
    /// queue through which it would be told: restoring here would give it dead interrupts
    /// ([DEV-27]).
    #[error(
        "{reprogrammed} grants would change and {revoked} vanish, and the guest cannot be told"
    )]
    GuestCannotBeTold {
        /// Grants the destination gives a new message.
        reprogrammed: usize,
        /// Grants the destination cannot back.
        revoked: usize,
    },
    /// The device could not be built.
    #[error(transparent)]
    Host(#[from] HostError),
}

/// What the transport gives a restored device: the guest memory, the interrupt and one
/// notification eventfd per queue.
pub struct RestoreParts<M: GuestAddressSpace> {
    /// The guest memory.
    pub mem: M,
    /// The interrupt.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// One eventfd per queue.
    pub queue_evts: Vec<EventFd>,
}

impl<M: GuestAddressSpace> PvirqDevice<M> {
    /// The device's state and its VM's grants. Pause the device first
    /// ([`PvirqDevice::pause`]) so that nothing changes after the state is taken.
    pub fn save(&self) -> PvirqDeviceState {
        PvirqDeviceState {
            version: DEVICE_STATE_VERSION,
            device_type: self.device_type(),
            acked_features: self.acked_features(),
            needs_reset: self.needs_reset,
            queues: self.active.as_ref().map(|a| {
                a.queues
                    .iter()
                    .enumerate()
                    .map(|(i, q)| {
                        QueueSnapshot::of(q, self.stopped.get(i).copied().unwrap_or(false))
                    })
                    .collect()
            }),
            vm: self.vm.snapshot(),
        }
    }

    /// A device over `vm` (fresh, holding nothing) in the state `state`: every field
    /// validated, every grant re-reserved through `vm`'s backends, the device live again
    /// on `parts` if it was. Returns each grant's fate. A driver that negotiated the event
    /// queue is told of each grant that changed (REPROGRAM, REVOKE, after the events that
    /// were pending), written once the device runs ([`PvirqDevice::resume`], a
    /// notification, or [`PvirqDevice::process_all`]); one that did not can only be
    /// restored where every grant keeps its message ([`PersistError::GuestCannotBeTold`]
    /// otherwise, with nothing held).
    pub fn restore(
        vm: Vm,
        state: &PvirqDeviceState,
        parts: RestoreParts<M>,
    ) -> Result<(PvirqDevice<M>, Vec<RestoredGrant>), PersistError> {
        let mut device = Self::unrestored(vm, state)?;
        if state.vm.features != state.acked_features && state.queues.is_some() {
            return Err(PersistError::FeaturesNotOffered(state.vm.features));
        }
        // Everything is checked before anything is reserved.
        let queues = match &state.queues {
            None => None,
            Some(snapshots) => {
                let max_sizes = device.queue_max_sizes();
                if snapshots.len() > max_sizes.len() {
                    return Err(PersistError::Queue(max_sizes.len()));
                }
                let mut queues = Vec::with_capacity(max_sizes.len());
                for (i, (snap, max)) in snapshots.iter().zip(max_sizes).enumerate() {
                    queues.push(snap.queue(*max).ok_or(PersistError::Queue(i))?);
                }
                // A version-1 state has the request queue alone: the event queue the
                // transport has an eventfd for is there, not ready, as a version-1 driver
                // leaves it.
                for max in max_sizes
                    .iter()
                    .take(parts.queue_evts.len())
                    .skip(queues.len())
                {
                    queues.push(Queue::new(*max).map_err(|_| PersistError::Queue(queues.len()))?);
                }
                device.check_activation(&parts.mem, &queues)?;
                Some(queues)
            }
        };
        let report = device.restore_grants(state)?;
        if let Some(queues) = queues {
            let stopped: Vec<bool> = state.queues.iter().flatten().map(|s| s.stopped).collect();
            if let Err(e) = device.activate(parts.mem, parts.interrupt, queues, parts.queue_evts) {
                device.vm.reset_all();
                return Err(e.into());
            }
            for (i, s) in stopped.into_iter().enumerate() {
                if s {
                    device.stop_queue(i);
                }
            }
        }
        device.needs_reset = state.needs_reset;
        Ok((device, report))
    }

    /// As [`PvirqDevice::restore`], leaving the device not live whatever `state` says of
    /// its queues: for a transport that saves the queues itself and activates the device
    /// again with them (cloud-hypervisor's virtio-pci does). The negotiated features, the
    /// device ID, NEEDS_RESET and every grant are restored; which queues the driver had
    /// stopped is not (the transport's queue state says whether each is ready).
    pub fn restore_inactive(
        vm: Vm,
        state: &PvirqDeviceState,
    ) -> Result<(PvirqDevice<M>, Vec<RestoredGrant>), PersistError> {
        let mut device = Self::unrestored(vm, state)?;
        let report = device.restore_grants(state)?;
        device.needs_reset = state.needs_reset;
        Ok((device, report))
    }

    /// A device over `vm` with the state's device ID and features, holding nothing yet.
    fn unrestored(vm: Vm, state: &PvirqDeviceState) -> Result<PvirqDevice<M>, PersistError> {
        if !(DEVICE_STATE_VERSION_MIN..=DEVICE_STATE_VERSION).contains(&state.version) {
            return Err(PersistError::UnsupportedVersion(state.version));
        }
        let mut device = PvirqDevice::new(vm)?;
        device
            .set_device_type(state.device_type)
            .map_err(|_| PersistError::DeviceType)?;
        let offered = device.avail_features();
        if state.acked_features & !offered != 0 {
            return Err(PersistError::FeaturesNotOffered(
                state.acked_features & !offered,
            ));
        }
        // A set FEATURES_OK would have refused ([DEV-23]); none at all is a device saved
        // before FEATURES_OK.
        if state.acked_features != 0 {
            device.check_features(state.acked_features)?;
        }
        // Features are acknowledged before DRIVER_OK: a device saved between FEATURES_OK
        // and DRIVER_OK has them without queues.
        device.ack_features(state.acked_features);
        Ok(device)
    }

    /// Re-reserves the state's grants through the VM's backends. Where a grant changed and
    /// the driver has no event log to be told through (it did not negotiate the event queue),
    /// everything is released and the restore refused, rather than hand the driver dead
    /// interrupts ([DEV-27]).
    fn restore_grants(
        &mut self,
        state: &PvirqDeviceState,
    ) -> Result<Vec<RestoredGrant>, PersistError> {
        let report = self.vm.restore(&state.vm, self.avail_features())?;
        let changed = |f: fn(&Restored) -> bool| report.iter().filter(|r| f(&r.outcome)).count();
        let reprogrammed = changed(|o| matches!(o, Restored::Reprogrammed(_)));
        let revoked = changed(|o| matches!(o, Restored::Revoked(_)));
        if reprogrammed + revoked > 0 && !self.vm.records_events() {
            self.vm.reset_all();
            return Err(PersistError::GuestCannotBeTold {
                reprogrammed,
                revoked,
            });
        }
        Ok(report)
    }

    /// The destination confirmed a migration: the source releases everything its VM held
    /// and stays paused for good. Until this is called the source keeps every grant, so a
    /// failed migration resumes where it stopped ([`PvirqDevice::resume`]).
    pub fn finish_migration(&mut self) -> u32 {
        self.paused = true;
        self.deferred = false;
        self.vm.reset_all()
    }
}
