//! `Machine`: a small real VMM. One KVM VM with an in-kernel irqchip, the guest image
//! loaded with linux-loader, one thread per vCPU, MMIO exits dispatched on a rust-vmm
//! `vm-device` bus, and the mailbox through which vCPU 0's guest code takes commands.

use super::error::VmmError;
use super::exits::{ExitCounters, ExitSnapshot};
use super::mailbox::{self, Command, MailboxSync, Report};
use super::{image, tsc, vcpu};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use pvirq_guest_image_abi::layout::{
    self, BOOT_MODE, KERNEL_STACK_SIZE, KERNEL_STACKS, MAX_APIC_ID, MAX_MEM_SIZE, MAX_VCPUS,
    MIN_MEM_SIZE, Mode, TSC_KHZ, VCPU_COUNT, vcpu_apic_id,
};
use pvirq_guest_image_abi::mailbox::{Op, RESULT_WORDS};
use std::mem;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use vm_device::DeviceMmio;
use vm_device::bus::{MmioAddress, MmioRange};
use vm_device::device_manager::{IoManager, MmioManager};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// How long `start` waits for the vCPUs to come up (the ring-0 boot is a few dozen
/// interpreted instructions; the guard is against hangs).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a vCPU may take to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_micros(200);
/// The TSS area Intel VMX wants, outside RAM.
const TSS_ADDRESS: usize = 0xFFFB_D000;

type VcpuThread = JoinHandle<Result<(), VmmError>>;

/// A VM being put together: memory and image in place, devices being plugged in.
pub struct MachineBuilder {
    kvm: Kvm,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    header: layout::BootHeader,
    vcpus: usize,
    /// vCPU `i`'s APIC ID (and KVM vcpu id).
    apic_ids: Vec<u32>,
    mode: Mode,
    bus: IoManager,
    slots: u32,
}

impl std::fmt::Debug for MachineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineBuilder")
            .field("vcpus", &self.vcpus)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl MachineBuilder {
    /// A VM with `vcpus` vCPUs, `mem_size` bytes of RAM from 0 and, in `extra`, memory
    /// regions that are device memory the guest reaches without exits (an untrapped MSI-X
    /// table). The image is loaded; nothing runs yet.
    pub fn new(
        vcpus: usize,
        mem_size: usize,
        mode: Mode,
        extra: &[(GuestAddress, usize)],
    ) -> Result<Self, VmmError> {
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(VmmError::VcpuCount {
                requested: vcpus,
                max: MAX_VCPUS,
            });
        }
        let min = match mode {
            Mode::Counter => MIN_MEM_SIZE,
            Mode::Driver => layout::DRIVER_MIN_MEM_SIZE,
        };
        if !(min..=MAX_MEM_SIZE).contains(&mem_size) || !mem_size.is_multiple_of(4096) {
            return Err(VmmError::MemorySize {
                size: mem_size,
                min,
                max: MAX_MEM_SIZE,
            });
        }
        let kvm = Kvm::new().map_err(VmmError::OpenKvm)?;
        let vm = kvm.create_vm().map_err(|source| VmmError::Kvm {
            step: "KVM_CREATE_VM",
            source,
        })?;
        vm.set_tss_address(TSS_ADDRESS)
            .map_err(|source| VmmError::Kvm {
                step: "KVM_SET_TSS_ADDR",
                source,
            })?;
        vm.create_irq_chip().map_err(|source| VmmError::Kvm {
            step: "KVM_CREATE_IRQCHIP",
            source,
        })?;
        let mut ranges = vec![(GuestAddress(0), mem_size)];
        ranges.extend_from_slice(extra);
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(VmmError::Memory)?;
        let header = image::load(&mem)?;
        mem.write_obj(mode as u32, GuestAddress(BOOT_MODE))
            .map_err(VmmError::MemoryAccess)?;
        let khz = u32::try_from(tsc::tsc_khz()).unwrap_or(u32::MAX);
        mem.write_obj(khz, GuestAddress(TSC_KHZ))
            .map_err(VmmError::MemoryAccess)?;
        let mut builder = MachineBuilder {
            kvm,
            vm: Arc::new(vm),
            mem,
            header,
            vcpus,
            apic_ids: Vec::new(),
            mode,
            bus: IoManager::new(),
            slots: 0,
        };
        builder.set_apic_ids(&(0..vcpus as u32).collect::<Vec<_>>())?;
        builder.register_memory()?;
        Ok(builder)
    }

    /// Gives vCPU `i` the APIC ID `ids[i]` (default: `i`), as a VMM that numbers vCPUs by
    /// topology does (KVM's vcpu id is the APIC ID): one per vCPU, distinct, at most
    /// [`MAX_APIC_ID`] (the guest runs its APIC in xAPIC mode). The guest finds the table
    /// in its memory, as a kernel finds its MADT.
    pub fn set_apic_ids(&mut self, ids: &[u32]) -> Result<(), VmmError> {
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let bad = ids.len() != self.vcpus
            || sorted.len() != ids.len()
            || ids.iter().any(|id| *id > MAX_APIC_ID);
        if bad {
            return Err(VmmError::ApicIds {
                ids: ids.to_vec(),
                vcpus: self.vcpus,
                max: MAX_APIC_ID,
            });
        }
        let w = |value: u64, addr: u64, wide: bool| {
            if wide {
                self.mem.write_obj(value, GuestAddress(addr))
            } else {
                self.mem.write_obj(value as u32, GuestAddress(addr))
            }
            .map_err(VmmError::MemoryAccess)
        };
        w(self.vcpus as u64, VCPU_COUNT, false)?;
        for (index, id) in ids.iter().enumerate() {
            // The handler finds its APIC ID at the bottom of its kernel stack.
            let base = KERNEL_STACKS + index as u64 * KERNEL_STACK_SIZE;
            w(u64::from(*id), base, true)?;
            w(u64::from(*id), vcpu_apic_id(index), false)?;
        }
        self.apic_ids = ids.to_vec();
        Ok(())
    }

    fn register_memory(&mut self) -> Result<(), VmmError> {
        let regions: Vec<(u64, u64)> = self
            .mem
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect();
        for (start, len) in regions {
            let host = self
                .mem
                .get_host_address(GuestAddress(start))
                .map_err(VmmError::MemoryAccess)?;
            let region = kvm_userspace_memory_region {
                slot: self.slots,
                flags: 0,
                guest_phys_addr: start,
                memory_size: len,
                userspace_addr: host as u64,
            };
            // SAFETY: `host..host + len` is one live mapping owned by `self.mem`; it stays
            // mapped while KVM may use it (`Machine`'s `Drop` deletes the slots after the
            // vCPUs stopped, or leaks the mapping), and every vCPU thread holds a clone.
            unsafe { self.vm.set_user_memory_region(region) }.map_err(|source| VmmError::Kvm {
                step: "KVM_SET_USER_MEMORY_REGION",
                source,
            })?;
            self.slots += 1;
        }
        Ok(())
    }

    /// The VM (for routes and irqfds).
    pub fn vm_fd(&self) -> Arc<VmFd> {
        Arc::clone(&self.vm)
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Puts `device` on the MMIO bus at `base..base + size`.
    pub fn add_mmio(
        &mut self,
        base: u64,
        size: u64,
        device: Arc<dyn DeviceMmio + Send + Sync>,
    ) -> Result<(), VmmError> {
        let range = MmioRange::new(MmioAddress(base), size).map_err(VmmError::Bus)?;
        self.bus.register_mmio(range, device).map_err(VmmError::Bus)
    }

    /// Creates the vCPUs, starts their threads and waits until every vCPU has its APIC on
    /// (and, in driver mode, until the guest's first report).
    pub fn start(self) -> Result<Machine, VmmError> {
        let cpuid = vcpu::supported_cpuid(&self.kvm)?;
        let fds = self
            .apic_ids
            .iter()
            .enumerate()
            .map(|(index, id)| {
                let fd = self
                    .vm
                    .create_vcpu(u64::from(*id))
                    .map_err(|source| VmmError::Vcpu {
                        vcpu: index,
                        step: "KVM_CREATE_VCPU",
                        source,
                    })?;
                vcpu::configure(&fd, index, *id, &self.header, &cpuid)?;
                Ok(fd)
            })
            .collect::<Result<Vec<_>, VmmError>>()?;
        let mut machine = Machine {
            vcpus: Vec::with_capacity(self.vcpus),
            vm: self.vm,
            mem: self.mem,
            exits: Arc::new(ExitCounters::default()),
            mailbox: Arc::new(MailboxSync::default()),
            apic_ids: self.apic_ids,
            mode: self.mode,
            seq: 0,
            slots: self.slots,
            _kvm: self.kvm,
        };
        let bus = Arc::new(self.bus);
        for (index, fd) in fds.into_iter().enumerate() {
            let mem = machine.mem.clone();
            let ctx = vcpu::VcpuContext {
                bus: Arc::clone(&bus),
                exits: Arc::clone(&machine.exits),
                mailbox: Arc::clone(&machine.mailbox),
                mem: machine.mem.clone(),
            };
            let thread = thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    let result = vcpu::run(fd, index, ctx);
                    drop(mem);
                    result
                })
                .map_err(VmmError::Spawn)?;
            machine.vcpus.push(Some(thread));
        }
        machine.wait_ready()?;
        Ok(machine)
    }
}

/// A running VM.
pub struct Machine {
    vcpus: Vec<Option<VcpuThread>>,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    exits: Arc<ExitCounters>,
    mailbox: Arc<MailboxSync>,
    apic_ids: Vec<u32>,
    mode: Mode,
    seq: u32,
    slots: u32,
    _kvm: Kvm,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("vcpus", &self.vcpus.len())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Machine {
    fn load(&self, addr: u64) -> u32 {
        self.mem
            .load::<u32>(GuestAddress(addr), Ordering::Acquire)
            .unwrap_or(0)
    }

    fn wait_ready(&mut self) -> Result<(), VmmError> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let waiting: Vec<usize> = (0..self.vcpu_count())
                .filter(|&i| self.load(layout::ready_flag(self.apic_id(i))) == 0)
                .collect();
            if waiting.is_empty() {
                break;
            }
            if let Some(index) = self.stopped_vcpu() {
                return Err(self
                    .stop()
                    .err()
                    .unwrap_or(VmmError::VcpuStopped { vcpu: index }));
            }
            if Instant::now() >= deadline {
                return Err(VmmError::NotReady {
                    vcpus: waiting,
                    timeout: STARTUP_TIMEOUT,
                });
            }
            thread::sleep(POLL);
        }
        if self.mode == Mode::Driver {
            let left = deadline.saturating_duration_since(Instant::now());
            self.await_report(Op::Boot, left)?;
        }
        Ok(())
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }

    /// The APIC ID of vCPU `index` (at most [`MAX_APIC_ID`], so it fits a byte; 0 past the
    /// last vCPU).
    pub fn apic_id(&self, index: usize) -> u8 {
        self.apic_ids
            .get(index)
            .and_then(|id| u8::try_from(*id).ok())
            .unwrap_or(0)
    }

    /// The VM.
    pub fn vm_fd(&self) -> Arc<VmFd> {
        Arc::clone(&self.vm)
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Exits handled so far.
    pub fn exits(&self) -> ExitSnapshot {
        self.exits.snapshot()
    }

    /// Interrupts the guest counted on vCPU index `vcpu`, `vector` (its handler's counter).
    pub fn count(&self, vcpu: usize, vector: u8) -> u64 {
        if vcpu < self.vcpu_count() {
            u64::from(self.load(layout::counter(self.apic_id(vcpu), vector)))
        } else {
            0
        }
    }

    fn await_report(&mut self, op: Op, timeout: Duration) -> Result<(), VmmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            if self.mailbox.wait_report(slice) {
                return Ok(());
            }
            if let Some(vcpu) = self.stopped_vcpu() {
                return Err(self.stop().err().unwrap_or(VmmError::VcpuStopped { vcpu }));
            }
            if Instant::now() >= deadline {
                return Err(VmmError::CommandTimeout {
                    op: format!("{op:?}"),
                    timeout,
                });
            }
        }
    }

    /// Runs `command` in the guest and returns its report; `list_words` says how much of
    /// the output list to read for the results.
    pub fn command(
        &mut self,
        command: &Command,
        timeout: Duration,
        list_words: impl Fn(&[u32; RESULT_WORDS]) -> usize,
    ) -> Result<Report, VmmError> {
        self.seq = self.seq.wrapping_add(1);
        mailbox::post(&self.mem, self.seq, command)?;
        self.mailbox.resume_guest();
        self.await_report(command.op, timeout)?;
        mailbox::read(&self.mem, self.seq, list_words)
    }

    /// The first vCPU whose thread has ended, if any.
    pub fn stopped_vcpu(&self) -> Option<usize> {
        self.vcpus
            .iter()
            .position(|t| t.as_ref().is_none_or(JoinHandle::is_finished))
    }

    /// Stops every vCPU (an NMI each, which the guest answers on the stop port; the
    /// mailbox releases vCPU 0 if it waits there), joins them and reports the first
    /// failure. Idempotent.
    pub fn stop(&mut self) -> Result<(), VmmError> {
        self.mailbox.close();
        let mut first_error = None;
        for (index, thread) in self.vcpus.iter().enumerate() {
            if thread.as_ref().is_some_and(|t| !t.is_finished()) {
                let nmi = pvirq_proto::CompatMsi {
                    delivery: pvirq_proto::DeliveryMode::Nmi,
                    ..pvirq_proto::CompatMsi::fixed(u32::from(self.apic_id(index)), 0)
                };
                if let Err(source) = self.vm.signal_msi(pvirq_host::kvm::kvm_msi(nmi.message())) {
                    first_error.get_or_insert(VmmError::Vcpu {
                        vcpu: index,
                        step: "KVM_SIGNAL_MSI",
                        source,
                    });
                }
            }
        }
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        while self.vcpus.iter().flatten().any(|t| !t.is_finished()) && Instant::now() < deadline {
            thread::sleep(POLL);
        }
        let mut stuck = Vec::new();
        for (index, slot) in self.vcpus.iter_mut().enumerate() {
            match slot.take() {
                Some(t) if t.is_finished() => match t.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        first_error.get_or_insert(e);
                    }
                    Err(_) => {
                        first_error.get_or_insert(VmmError::VcpuStopped { vcpu: index });
                    }
                },
                Some(t) => {
                    stuck.push(index);
                    drop(t);
                }
                None => {}
            }
        }
        if !stuck.is_empty() {
            return Err(VmmError::ShutdownTimeout { vcpus: stuck });
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let stopped = !matches!(self.stop(), Err(VmmError::ShutdownTimeout { .. }));
        let mut deleted = stopped;
        for slot in 0..self.slots {
            let region = kvm_userspace_memory_region {
                slot,
                ..Default::default()
            };
            // SAFETY: a zero-sized region deletes the slot; KVM stops using the mapping.
            deleted &= stopped && unsafe { self.vm.set_user_memory_region(region) }.is_ok();
        }
        if !deleted {
            // KVM may still reach the mapping (the VM fd can outlive us), so it must never
            // be unmapped and reused.
            mem::forget(mem::take(&mut self.mem));
        }
    }
}
