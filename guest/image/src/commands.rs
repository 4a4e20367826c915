//! The command loop: every scenario step the VMM asks for, done by the guest driver.

use crate::cpu;
use crate::devices::{Device, Slot};
use crate::hal::{DmaHal, HAL};
use crate::mailbox::Mailbox;
use crate::state::{Held, MAX_GUEST_DEVICES, records};
use pvirq_guest::proto::{
    Alloc, CompatMsi, Grant, IndexRange, IndexSpec, Kind, MsiMessage, Refusal, Target, Targeting,
};
use pvirq_guest::{Driver, Error, MmioTransport, Options, VolatileMmio};
use pvirq_guest_image_abi::layout::{
    PLAIN_IRQFD_VECTOR, PVIRQ_MMIO, PVIRQ_MMIO_SIZE, PVIRQ_VECTOR,
};
use pvirq_guest_image_abi::mailbox::DriverError;

/// The driver as this guest builds it.
pub type GuestDriver = Driver<&'static DmaHal, MmioTransport<VolatileMmio>>;

/// The most targets (and grants) one command carries: as many as a report can list.
pub const MAX_TARGETS: usize = pvirq_guest_image_abi::mailbox::MAX_LIST_GRANTS;
/// How long a fire step waits for one expected interrupt.
const ARRIVAL_MS: u64 = 1000;
/// How long a fire step waits for interrupts it expects none of (freed or foreign
/// messages), to see that none comes.
const SILENCE_MS: u64 = 50;
/// How many allocation attempts a Linux-style fallback makes.
const MAX_ATTEMPTS: u32 = 4;

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
    /// Targets of the current request.
    pub targets: [Target; MAX_TARGETS],
    /// Grants of the current request.
    pub grants: [Grant; MAX_TARGETS],
}

/// The scratch buffers; [`crate::dispatch::run`] takes the only reference.
pub static mut SCRATCH: Scratch = Scratch {
    targets: [Target::new(0, 0); MAX_TARGETS],
    grants: [Grant::new(
        0,
        MsiMessage {
            address: 0,
            data: 0,
        },
    ); MAX_TARGETS],
};

/// The guest: its driver (once the channel is up), its devices and the mailbox.
pub struct Guest {
    /// The pvirq driver.
    pub driver: Option<GuestDriver>,
    /// The VM's vCPU count (from the device configuration).
    pub vcpus: u32,
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
        self.vcpus = config.num_vcpus;
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
                Outcome::Ok
            }
            Err(e) => e.into(),
        }
    }

    /// Reads `n` targets from the input list into the scratch buffer.
    fn read_targets(&mut self, n: usize) -> Result<usize, Outcome> {
        if n > MAX_TARGETS {
            return Err(Outcome::Bad);
        }
        for (i, t) in self.scratch.targets.iter_mut().take(n).enumerate() {
            let vector = u8::try_from(self.mb.input(2 * i + 1)).map_err(|_| Outcome::Bad)?;
            *t = Target::new(self.mb.input(2 * i), vector);
        }
        Ok(n)
    }

    /// Sends one ALLOC; on success programs and unmasks every grant, records it and
    /// returns how many.
    pub fn alloc_and_program(
        &mut self,
        device: u32,
        alloc_kind: Kind,
        index: IndexSpec,
        (min, max): (u16, u16),
        pasid: Option<u32>,
    ) -> Result<usize, Error> {
        let targets = self
            .scratch
            .targets
            .get(..usize::from(max))
            .unwrap_or_default();
        let alloc = Alloc {
            kind: alloc_kind,
            index,
            min,
            max,
            pasid,
            targeting: Targeting::PerVector,
            targets,
        };
        let Some(driver) = self.driver.as_mut() else {
            return Err(Error::NoDevice);
        };
        let allocation = driver.alloc(device, alloc, &mut self.scratch.grants)?;
        let count = allocation.grants.len();
        let dev = self.devices.get(device as usize).copied().flatten();
        let recs = records(device as usize);
        if let (Some(dev), Some(recs)) = (dev, recs) {
            for (grant, target) in allocation.grants.iter().zip(targets) {
                let Some(slot) = Slot::of(alloc_kind, grant.index()) else {
                    continue;
                };
                dev.program(slot, grant.message(), pasid);
                if let Some(r) = recs.get_mut(slot) {
                    r.held = Held::Live;
                    r.message = grant.message();
                    r.vcpu = target.vcpu();
                    r.vector = target.vector();
                }
            }
        }
        Ok(count)
    }

    /// The `alloc` command.
    pub fn alloc(&mut self) -> Outcome {
        let device = self.mb.arg(0);
        let Some(alloc_kind) = kind(self.mb.arg(1)) else {
            return Outcome::Bad;
        };
        let index = if self.mb.arg(2) == 1 {
            IndexSpec::At(self.mb.arg(3))
        } else {
            IndexSpec::Any
        };
        let (Ok(min), Ok(max)) = (u16::try_from(self.mb.arg(4)), u16::try_from(self.mb.arg(5)))
        else {
            return Outcome::Bad;
        };
        let pasid = (self.mb.arg(6) == 1).then(|| self.mb.arg(7));
        let linux_fallback = self.mb.arg(8) == 1;
        if let Err(e) = self.read_targets(self.mb.arg(9) as usize) {
            return e;
        }
        if usize::from(max) > MAX_TARGETS {
            return Outcome::Bad;
        }
        let (mut min, mut max) = (min, max);
        let mut attempts = 1;
        let mut first_refusal: Option<Refusal> = None;
        loop {
            match self.alloc_and_program(device, alloc_kind, index, (min, max), pasid) {
                Ok(count) => {
                    self.mb.result(0, count as u32);
                    self.mb.result(1, attempts);
                    if let Some(r) = first_refusal {
                        let (s, d, i) = r.to_wire();
                        self.mb.result(2, u32::from(s));
                        self.mb.result(3, u32::from(d));
                        self.mb.result(4, i);
                    }
                    for (i, g) in self.scratch.grants.iter().take(count).enumerate() {
                        self.mb.output(4 * i, g.index());
                        self.mb.output(4 * i + 1, g.message().address as u32);
                        self.mb
                            .output(4 * i + 2, (g.message().address >> 32) as u32);
                        self.mb.output(4 * i + 3, g.message().data);
                    }
                    return Outcome::Ok;
                }
                Err(e) => {
                    // Linux's pci_alloc_irq_vectors fallback: ask again for what the host
                    // said it can give, within the caller's range.
                    let retry = match e.refusal() {
                        Some(Refusal::NoSpace { available, .. })
                            if linux_fallback
                                && available >= 1
                                && available < u32::from(max)
                                && attempts < MAX_ATTEMPTS =>
                        {
                            u16::try_from(available).ok()
                        }
                        _ => None,
                    };
                    match (retry, e.refusal()) {
                        (Some(n), Some(r)) => {
                            first_refusal.get_or_insert(r);
                            attempts += 1;
                            (min, max) = (n, n);
                        }
                        _ => {
                            self.mb.result(1, attempts);
                            return e.into();
                        }
                    }
                }
            }
        }
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
        let targets = self.scratch.targets.get(..n).unwrap_or_default();
        match driver.retarget(device, range, targets) {
            Ok(done) => {
                if let Some(recs) = records(device as usize) {
                    for (i, t) in range.indices().zip(targets) {
                        if let Some(r) = Slot::of(kind, i).and_then(|s| recs.get_mut(s)) {
                            r.vcpu = t.vcpu();
                            r.vector = t.vector();
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

    /// Every counter of this VM's vCPUs, copied: the "before" of a fire step.
    fn snapshot(&self, out: &mut [u32; 256 * 8]) -> usize {
        let vcpus = (self.vcpus as usize).min(8);
        for vcpu in 0..vcpus {
            for vector in 0..=255u8 {
                if let Some(c) = out.get_mut(vcpu * 256 + usize::from(vector)) {
                    *c = cpu::count(vcpu as u8, vector);
                }
            }
        }
        vcpus
    }

    /// The `fire` command.
    pub fn fire(&mut self) -> Outcome {
        let device = self.mb.arg(0);
        let include_freed = self.mb.arg(1) == 1;
        let (Ok(dev), Some(recs)) = (self.device(device), records(device as usize)) else {
            return Outcome::Bad;
        };
        let mut before = [0u32; 256 * 8];
        let vcpus = self.snapshot(&mut before);
        let mut expected = [0u32; 256 * 8];
        let (mut rung, mut missing) = (0u32, 0u32);
        // Live slots one at a time: ring, then wait for that interrupt, so that two
        // interrupts to one (vCPU, vector) never merge in the APIC's request register.
        for (slot, r) in recs.iter().filter(|(_, r)| r.held == Held::Live) {
            let key = r.vcpu as usize * 256 + usize::from(r.vector);
            let Some(e) = expected.get_mut(key) else {
                continue;
            };
            *e += 1;
            let want = before.get(key).copied().unwrap_or(0).wrapping_add(*e);
            dev.ring(slot);
            rung += 1;
            let (vcpu, vector) = (r.vcpu as u8, r.vector);
            if !cpu::spin_until(ARRIVAL_MS, || cpu::count(vcpu, vector) >= want) {
                missing += 1;
            }
        }
        if include_freed {
            // A careless guest: the freed slot's old message written back, unmasked, rung.
            for (slot, r) in recs.iter().filter(|(_, r)| r.held == Held::Freed) {
                dev.program(slot, r.message, None);
                dev.ring(slot);
                dev.set_masked(slot, true);
                rung += 1;
            }
        }
        // Whatever else is coming (a duplicate, a misroute, a freed message delivered).
        cpu::spin_until(SILENCE_MS, || false);
        let (mut arrived, mut unexpected, mut listed) = (0u32, 0u32, 0usize);
        for vcpu in 0..vcpus {
            for vector in 0..=255u8 {
                if vector == PVIRQ_VECTOR || vector == PLAIN_IRQFD_VECTOR {
                    continue;
                }
                let key = vcpu * 256 + usize::from(vector);
                let was = before.get(key).copied().unwrap_or(0);
                let delta = cpu::count(vcpu as u8, vector).wrapping_sub(was);
                if delta == 0 {
                    continue;
                }
                let want = expected.get(key).copied().unwrap_or(0);
                arrived += delta.min(want);
                unexpected += delta.saturating_sub(want);
                let fits = self.mb.output(3 * listed, vcpu as u32)
                    && self.mb.output(3 * listed + 1, u32::from(vector))
                    && self.mb.output(3 * listed + 2, delta);
                if fits {
                    listed += 1;
                }
            }
        }
        self.mb.result(0, rung);
        self.mb.result(1, arrived);
        self.mb.result(2, unexpected);
        self.mb.result(3, missing);
        self.mb.result(4, listed as u32);
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
        let Some(r) = recs.get_mut(slot).filter(|r| r.held == Held::Live).copied() else {
            return Outcome::Bad;
        };
        let (vcpu, vector) = (r.vcpu as u8, r.vector);
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
