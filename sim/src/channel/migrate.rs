//! Moving a channel's guest to another host side, the way a VMM snapshots or live-migrates
//! a VM: the device is paused and its state taken ([`Channel::pause_and_save`]); the guest
//! is detached from the source ([`Channel::detach`]); the device is restored on a fresh VM
//! of the destination ([`DetachedGuest::restore`]) and the guest attached to it
//! ([`DetachedGuest::attach`]): its registers now reach the restored device. The source
//! keeps every grant until told the destination runs ([`HostSide::finish_migration`]); if
//! the destination refuses, the guest is attached to the source again, which resumes where
//! it stopped.
//!
//! Guest memory is shared by both sides, as a completed memory copy leaves it: the ring,
//! the requests and the replies are where the guest left them.

use super::{Channel, ChannelDriver, FrontSlot, WriteTap, lock};
use crate::error::SimError;
use pvirq_guest::Options;
use pvirq_host::device::{MmioRegisters, PvirqDeviceState, RestoreParts};
use pvirq_host::snapshot::RestoredGrant;
use pvirq_host::{MmioInterrupt, MmioTransport, NotifyMode, PvirqDevice, Vm};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// What a migration stream carries of a channel's host side: the device with its VM's
/// grants, and the transport's registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    /// The device.
    pub device: PvirqDeviceState,
    /// The virtio-mmio registers.
    pub registers: MmioRegisters,
}

/// A host side the guest is not attached to: the source once the guest left it (paused,
/// holding every grant), or a destination restored and ready.
pub struct HostSide {
    vm: Vm,
    front: MmioTransport,
    interrupt: Arc<MmioInterrupt>,
}

impl HostSide {
    /// Its VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The destination confirmed: the source releases every grant its VM held (its VM
    /// stays, holding nothing, until dropped) and stays paused. Returns how many.
    pub fn finish_migration(&mut self) -> u32 {
        lock(self.front.device()).finish_migration()
    }
}

/// A guest between two host sides: its driver and memory, its registers reaching nothing.
pub struct DetachedGuest {
    front: FrontSlot,
    driver: ChannelDriver,
    mem: GuestMemoryMmap<()>,
    options: Options,
    tap: Option<WriteTap>,
}

impl Channel {
    /// Pauses the device (nothing is in flight once this returns; notifications are
    /// remembered) and takes the state a migration carries.
    pub fn pause_and_save(&self) -> ChannelState {
        let registers = lock(&self.front).as_ref().map(MmioTransport::registers);
        let device = self.with_device(|device| {
            device.pause();
            device.save()
        });
        ChannelState {
            device: device.unwrap_or_default(),
            registers: registers.unwrap_or_default(),
        }
    }

    /// Resumes after [`Channel::pause_and_save`] (a migration abandoned): handles what the
    /// guest sent meanwhile.
    pub fn resume(&self) {
        self.with_device(|device| device.resume());
    }

    /// Takes the guest off its host side: the guest (its registers reach nothing until it
    /// is attached again) and the source, which keeps everything it holds.
    pub fn detach(self) -> (DetachedGuest, HostSide) {
        let Channel {
            vm,
            front,
            interrupt,
            driver,
            mem,
            options,
            tap,
        } = self;
        let source = lock(&front).take();
        let guest = DetachedGuest {
            front,
            driver,
            mem,
            options,
            tap,
        };
        // A Channel always has its front: built with one, only `detach` takes it.
        let front = source.unwrap_or_else(|| unreachable!("a channel without its front"));
        (
            guest,
            HostSide {
                vm,
                front,
                interrupt,
            },
        )
    }
}

impl DetachedGuest {
    /// Restores `state` on `vm` (fresh: its devices attached, no grants) behind a front of
    /// its own, over this guest's memory. Every grant is re-reserved through `vm`'s
    /// backends first; if the destination cannot give each the same message, nothing is
    /// held there.
    pub fn restore(
        &self,
        vm: Vm,
        state: &ChannelState,
    ) -> Result<(HostSide, Vec<RestoredGrant>), SimError> {
        let (front, interrupt, report) = restored_front(vm.clone(), &self.mem, state)?;
        Ok((
            HostSide {
                vm,
                front,
                interrupt,
            },
            report,
        ))
    }

    /// Attaches the guest to `side`: from here on its registers reach that device, which
    /// resumes and looks at the ring once. A notification the device deferred while paused,
    /// or one the source took before the snapshot (not part of the state: Firecracker's
    /// `kick` after a restore), is handled now.
    pub fn attach(self, side: HostSide) -> Channel {
        {
            let mut device = lock(side.front.device());
            device.resume();
            device.process_all();
        }
        *lock(&self.front) = Some(side.front);
        Channel {
            vm: side.vm,
            front: self.front,
            interrupt: side.interrupt,
            driver: self.driver,
            mem: self.mem,
            options: self.options,
            tap: self.tap,
        }
    }
}

/// A front over `vm` whose device is restored from `state`, as the transport's restore
/// does: the transport's eventfds and interrupt go to the restored device, its registers
/// come back.
fn restored_front(
    vm: Vm,
    mem: &GuestMemoryMmap<()>,
    state: &ChannelState,
) -> Result<(MmioTransport, Arc<MmioInterrupt>, Vec<RestoredGrant>), SimError> {
    let interrupt = Arc::new(MmioInterrupt::new());
    // The transport needs a device to be built; the restored one replaces it.
    let placeholder = Arc::new(Mutex::new(PvirqDevice::new(vm.clone())?));
    let mut front = MmioTransport::new(
        placeholder,
        GuestMemoryAtomic::new(mem.clone()),
        Arc::clone(&interrupt),
        NotifyMode::Inline,
    )?;
    let (mem, irq, queue_evts) = front.take_for_restore();
    let parts = RestoreParts {
        mem,
        interrupt: irq,
        queue_evts,
    };
    let (device, report) = PvirqDevice::restore(vm, &state.device, parts)?;
    *lock(front.device()) = device;
    front.restore_registers(state.registers);
    Ok((front, interrupt, report))
}
