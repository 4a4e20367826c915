//! The guest (its driver, devices and mailbox) and the version-1 commands: bring-up,
//! QUERY, FREE and RETARGET of a run, the resets, the pending-bit check. ALLOC in all its
//! shapes is in `alloc`, the list commands in `lists`, the event queue in `events`, the
//! fire step in `fire`.

use crate::cpu;
use crate::devices::{Device, Slot};
use crate::hal::{DmaHal, HAL};
use crate::mailbox::Mailbox;
use crate::state::{Held, MAX_GUEST_DEVICES, records};
use crate::topology::apic_of_target;
use pvirq_guest::proto::{
    CompatMsi, DeviceInfoExt, Grant, GrantInfo, IndexRange, Kind, Le32, MsiMessage, Refusal, Target,
};
use pvirq_guest::{Driver, Error, MmioTransport, Options, VolatileMmio};
use pvirq_guest_image_abi::layout::{PVIRQ_MMIO, PVIRQ_MMIO_SIZE};
use pvirq_guest_image_abi::mailbox::DriverError;

/// The driver as this guest builds it.
pub type GuestDriver = Driver<&'static DmaHal, MmioTransport<VolatileMmio>>;

/// The most targets (and grants) one command carries: as many as a report can list.
pub const MAX_TARGETS: usize = pvirq_guest_image_abi::mailbox::MAX_LIST_GRANTS;
/// How long a step waits for one expected interrupt.
pub const ARRIVAL_MS: u64 = 1000;
/// How long a step waits for interrupts it expects none of (freed or foreign messages), to
/// see that none comes.
pub const SILENCE_MS: u64 = 50;

/// How a command ended.
pub enum Outcome {
    /// Done.
    Ok,
    /// The device refused.
    Refused(Refusal),
    /// The driver failed otherwise.
    Driver(DriverError),
    /// The command made no sense.
    Bad,
    /// No channel.
    NotReady,
}

impl From<Error> for Outcome {
    fn from(e: Error) -> Self {
        if let Some(r) = e.refusal() {
            return Outcome::Refused(r);
        }
        Outcome::Driver(match e {
            _ if e.is_device_fault() => DriverError::DeviceFault,
            Error::DmaAlloc { .. } => DriverError::DmaAlloc,
            Error::Timeout => DriverError::Timeout,
            Error::BadMagic(_)
            | Error::UnsupportedMmioVersion(_)
            | Error::NoDevice
            | Error::NotModern(_)
            | Error::FeaturesRejected(_)
            | Error::UnsupportedVersion(_)
            | Error::BadConfig { .. }
            | Error::QueueUnavailable(_)
            | Error::QueueInUse
            | Error::ResetTimeout => DriverError::Init,
            _ => DriverError::Other,
        })
    }
}

/// Scratch buffers too large for the stack's comfort.
pub struct Scratch {
    /// Targets of the current request (in index order for a list).
    pub targets: [Target; MAX_TARGETS],
    /// Grants of the current request.
    pub grants: [GrantInfo; MAX_TARGETS],
    /// A list command's (index, target) pairs as the VMM gave them.
    pub pairs: [(u32, Target); MAX_TARGETS],
    /// A list command's indices, sorted.
    pub indices: [u32; MAX_TARGETS],
    /// The same as they travel in a FREE or RETARGET list.
    pub list: [Le32; MAX_TARGETS],
}

/// The scratch buffers; [`crate::dispatch::run`] takes the only reference.
pub static mut SCRATCH: Scratch = Scratch {
    targets: [Target::new(0, 0); MAX_TARGETS],
    grants: [GrantInfo::from_grant(Grant::new(
        0,
        MsiMessage {
            address: 0,
            data: 0,
        },
    )); MAX_TARGETS],
    pairs: [(0, Target::new(0, 0)); MAX_TARGETS],
    indices: [0; MAX_TARGETS],
    list: [Le32::new(0); MAX_TARGETS],
};

/// The guest: its driver (once the channel is up), its devices and the mailbox.
pub struct Guest {
    /// The pvirq driver.
    pub driver: Option<GuestDriver>,
    /// The pass-through devices (as many as the channel has).
    pub devices: [Option<Device>; MAX_GUEST_DEVICES],
    /// Features the last `Init` asked for.
    pub features: u64,
    /// The mailbox.
    pub mb: Mailbox,
    /// Scratch buffers.
    pub scratch: &'static mut Scratch,
}

/// A kind on the mailbox: 0 MSI, 1 MSI-X, 2 IMS.
pub fn kind(word: u32) -> Option<Kind> {
    match word {
        0 => Some(Kind::Msi),
        1 => Some(Kind::MsiX),
        2 => Some(Kind::Ims),
        _ => None,
    }
}

impl Guest {
    /// The driver, or why there is none.
    pub fn driver(&mut self) -> Result<&mut GuestDriver, Outcome> {
        self.driver.as_mut().ok_or(Outcome::NotReady)
    }

    /// Device `index`.
    pub fn device(&self, index: u32) -> Result<Device, Outcome> {
        self.devices
            .get(index as usize)
            .copied()
            .flatten()
            .ok_or(Outcome::Bad)
    }

    /// Device `index`, also when pvirq does not know it (the benchmark's device of the
    /// trapped flow, which no grant covers).
    pub fn device_or_raw(&self, index: u32) -> Result<Device, Outcome> {
        match self.device(index) {
            Ok(d) => Ok(d),
            Err(_) => Device::open(index as usize).ok_or(Outcome::Bad),
        }
    }

    fn bring_up(&mut self) -> Result<(), Outcome> {
        // SAFETY: PVIRQ_MMIO maps the pvirq device's registers (uncached, user-accessible)
        // for the guest's lifetime, and only this driver drives it.
        let regs = unsafe {
            VolatileMmio::new(
                core::ptr::NonNull::new(PVIRQ_MMIO as *mut u8).ok_or(Outcome::Bad)?,
                PVIRQ_MMIO_SIZE as usize,
            )
        };
        let transport = MmioTransport::new(regs)?;
        let options = Options {
            features: self.features,
            // Bounded: a device that never answers becomes an error, not a hung vCPU.
            spin_limit: Some(1 << 32),
            ..Options::default()
        };
        let driver = GuestDriver::new(&HAL, transport, options)?;
        let config = driver.config();
        for (index, slot) in self.devices.iter_mut().enumerate() {
            *slot = if (index as u32) < config.num_devices {
                Device::open(index)
            } else {
                None
            };
        }
        self.driver = Some(driver);
        Ok(())
    }

    /// The `init` command.
    pub fn init(&mut self) -> Outcome {
        self.features = u64::from(self.mb.arg(0)) | u64::from(self.mb.arg(1)) << 32;
        if self.features == 0 {
            self.features = pvirq_guest::proto::feature::V1;
        }
        self.driver = None;
        if let Err(e) = self.bring_up() {
            return e;
        }
        let Ok(driver) = self.driver() else {
            return Outcome::NotReady;
        };
        let config = driver.config();
        let features = driver.features();
        let max_batch = driver.max_batch();
        self.mb.result(0, config.num_devices);
        self.mb.result(1, config.vm_quota);
        self.mb.result(2, config.num_vcpus);
        self.mb.result(3, u32::from(max_batch));
        self.mb.result64(4, features);
        Outcome::Ok
    }

    /// The `query` command.
    pub fn query(&mut self) -> Outcome {
        let device = self.mb.arg(0);
        let driver = match self.driver() {
            Ok(d) => d,
            Err(e) => return e,
        };
        match driver.query(device) {
            Ok(q) => {
                self.mb.result(0, q.info.granted);
                self.mb.result(1, q.info.available);
                if let Some(ext) = q.info.ext {
                    self.report_ext(&ext);
                }
                Outcome::Ok
            }
            Err(e) => e.into(),
        }
    }

    /// What QUERY's `INFO` extension said, in result words 2..15.
    fn report_ext(&self, ext: &DeviceInfoExt) {
        let id = ext.identity;
        let words = [
            1,
            u32::from(id.segment),
            u32::from(id.bus),
            u32::from(id.devfn),
            u32::from(id.requester_id),
            u32::from(ext.format.to_wire()),
            u32::from(ext.can_post),
            u32::from(id.pasid.is_some()),
            id.pasid.unwrap_or(0),
            ext.share,
            u32::from(ext.msix_free_run),
            ext.ims_free_run,
            ext.parked_drops,
        ];
        for (i, w) in words.into_iter().enumerate() {
            self.mb.result(2 + i, w);
        }
    }

    /// Reads `n` targets from the input list into the scratch buffer.
    pub fn read_targets(&mut self, n: usize) -> Result<usize, Outcome> {
        if n > MAX_TARGETS {
            return Err(Outcome::Bad);
        }
        for (i, t) in self.scratch.targets.iter_mut().take(n).enumerate() {
            let vector = u8::try_from(self.mb.input(2 * i + 1)).map_err(|_| Outcome::Bad)?;
            *t = Target::new(self.mb.input(2 * i), vector);
        }
        Ok(n)
    }

    fn range(&self) -> Option<IndexRange> {
        Some(IndexRange {
            kind: kind(self.mb.arg(1))?,
            first: self.mb.arg(2),
            count: u16::try_from(self.mb.arg(3)).ok()?,
        })
    }

    /// The `free` command.
    pub fn free(&mut self) -> Outcome {
        let device = self.mb.arg(0);
        let careless = self.mb.arg(4) == 1;
        let Some(range) = self.range() else {
            return Outcome::Bad;
        };
        let dev = self.device(device).ok();
        if !careless && let Some(dev) = dev {
            range
                .indices()
                .filter_map(|i| Slot::of(range.kind, i))
                .for_each(|slot| {
                    dev.set_masked(slot, true);
                });
        }
        let driver = match self.driver() {
            Ok(d) => d,
            Err(e) => return e,
        };
        match driver.free(device, range) {
            Ok(done) => {
                if let Some(recs) = records(device as usize) {
                    for slot in range.indices().filter_map(|i| Slot::of(range.kind, i)) {
                        if let Some(r) = recs.get_mut(slot)
                            && r.held == Held::Live
                        {
                            r.held = Held::Freed;
                        }
                    }
                }
                self.mb.result(0, done.count);
                Outcome::Ok
            }
            Err(e) => e.into(),
        }
    }

    /// The `retarget` command.
    pub fn retarget(&mut self) -> Outcome {
        let device = self.mb.arg(0);
        let n = self.mb.arg(3) as usize;
        let (Some(kind), Ok(count)) = (kind(self.mb.arg(1)), u16::try_from(n)) else {
            return Outcome::Bad;
        };
        if let Err(e) = self.read_targets(n) {
            return e;
        }
        let range = IndexRange {
            kind,
            first: self.mb.arg(2),
            count,
        };
        let Some(driver) = self.driver.as_mut() else {
            return Outcome::NotReady;
        };
        let apic_ids = driver.targets_name_apic_ids();
        let targets = self.scratch.targets.get(..n).unwrap_or_default();
        match driver.retarget(device, range, targets) {
            Ok(done) => {
                if let Some(recs) = records(device as usize) {
                    for (i, t) in range.indices().zip(targets) {
                        if let Some(r) = Slot::of(kind, i).and_then(|s| recs.get_mut(s)) {
                            r.vcpu = t.vcpu();
                            r.apic = apic_of_target(t.vcpu(), apic_ids);
                            r.vector = t.vector();
                            r.parked = false;
                        }
                    }
                }
                self.mb.result(0, done.count);
                Outcome::Ok
            }
            Err(e) => e.into(),
        }
    }

    fn mask_all(&self, device: u32) {
        let (Ok(dev), Some(recs)) = (self.device(device), records(device as usize)) else {
            return;
        };
        for (slot, r) in recs.iter() {
            if r.held == Held::Live {
                dev.set_masked(slot, true);
            }
        }
    }

    /// The `reset_device` command.
    pub fn reset_device(&mut self) -> Outcome {
        let device = self.mb.arg(0);
        self.mask_all(device);
        let driver = match self.driver() {
            Ok(d) => d,
            Err(e) => return e,
        };
        match driver.reset_device(device) {
            Ok(done) => {
                if let Some(recs) = records(device as usize) {
                    recs.retire_all();
                }
                self.mb.result(0, done.count);
                Outcome::Ok
            }
            Err(e) => e.into(),
        }
    }

    /// The `reset_virtio` command.
    pub fn reset_virtio(&mut self) -> Outcome {
        let mut held = 0u32;
        for device in 0..MAX_GUEST_DEVICES as u32 {
            if let Some(recs) = records(device as usize) {
                held += recs.iter().filter(|(_, r)| r.held == Held::Live).count() as u32;
            }
            self.mask_all(device);
        }
        // Dropping the driver resets the device (status 0): the host frees everything.
        self.driver = None;
        for device in 0..MAX_GUEST_DEVICES {
            if let Some(recs) = records(device) {
                recs.retire_all();
            }
        }
        if let Err(e) = self.bring_up() {
            return e;
        }
        self.mb.result(0, held);
        Outcome::Ok
    }

    /// The `fire_ungranted` command.
    pub fn fire_ungranted(&mut self) -> Outcome {
        let Ok(dev) = self.device(self.mb.arg(0)) else {
            return Outcome::Bad;
        };
        let slot = if self.mb.arg(1) == 1 {
            Slot::Ims(self.mb.arg(2))
        } else {
            Slot::MsiX(self.mb.arg(2))
        };
        let (vcpu, Ok(vector)) = (self.mb.arg(3), u8::try_from(self.mb.arg(4))) else {
            return Outcome::Bad;
        };
        let before = cpu::count(vcpu as u8, vector);
        // A message of the guest's own making: compatibility format, straight to the vCPU.
        let message = CompatMsi::fixed(vcpu, vector).message();
        if !dev.program(slot, message, None) {
            return Outcome::Bad;
        }
        dev.ring(slot);
        cpu::spin_until(SILENCE_MS, || false);
        dev.set_masked(slot, true);
        self.mb
            .result(0, cpu::count(vcpu as u8, vector).wrapping_sub(before));
        Outcome::Ok
    }

    /// The `pending` command.
    pub fn pending(&mut self) -> Outcome {
        let device = self.mb.arg(0);
        let (Some(kind), index, rings) = (kind(self.mb.arg(1)), self.mb.arg(2), self.mb.arg(3))
        else {
            return Outcome::Bad;
        };
        let (Ok(dev), Some(recs)) = (self.device(device), records(device as usize)) else {
            return Outcome::Bad;
        };
        let Some(slot) = Slot::of(kind, index) else {
            return Outcome::Bad;
        };
        let Some(r) = recs.get_mut(slot).filter(|r| r.active()).copied() else {
            return Outcome::Bad;
        };
        let (vcpu, vector) = (r.apic, r.vector);
        let start = cpu::count(vcpu, vector);
        dev.set_masked(slot, true);
        for _ in 0..rings {
            dev.ring(slot);
        }
        cpu::spin_until(SILENCE_MS, || false);
        let masked = cpu::count(vcpu, vector).wrapping_sub(start);
        let pba = matches!(slot, Slot::MsiX(i) if dev.pending(i));
        dev.set_masked(slot, false);
        cpu::spin_until(ARRIVAL_MS, || {
            cpu::count(vcpu, vector) > start.wrapping_add(masked)
        });
        cpu::spin_until(SILENCE_MS, || false);
        let at_unmask = cpu::count(vcpu, vector).wrapping_sub(start) - masked;
        let mid = cpu::count(vcpu, vector);
        dev.ring(slot);
        cpu::spin_until(ARRIVAL_MS, || cpu::count(vcpu, vector) > mid);
        cpu::spin_until(SILENCE_MS, || false);
        self.mb.result(0, masked);
        self.mb.result(1, at_unmask);
        self.mb
            .result(2, cpu::count(vcpu, vector).wrapping_sub(mid));
        self.mb.result(3, u32::from(pba));
        Outcome::Ok
    }
}
