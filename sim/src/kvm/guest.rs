//! `KvmGuest`: a real KVM VM whose vCPUs count every interrupt they receive.

use std::mem;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use pvirq_host::kvm::{KvmRouteTable, kvm_msi};
use pvirq_proto::{CompatMsi, DeliveryMode, MsiMessage};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::counts::InterruptCounts;
use super::error::KvmGuestError;
use super::layout::{MAX_MEM_SIZE, MAX_VCPUS, MIN_MEM_SIZE, counter, ready_flag};
use super::program;
use super::vcpu;

/// How long `new` waits for every vCPU to enable its APIC, and `shutdown` for every vCPU
/// to stop. Only a guard against hangs: both normally take well under a millisecond.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// See [`STARTUP_TIMEOUT`].
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two polls of guest memory or thread state.
const POLL_INTERVAL: Duration = Duration::from_micros(200);
/// The TSS area Intel VMX needs for real-mode emulation, outside guest RAM.
const TSS_ADDRESS: usize = 0xFFFB_D000;
/// The only memory slot.
const MEM_SLOT: u32 = 0;
/// Guest RAM starts at 0.
const MEM_START: GuestAddress = GuestAddress(0);

type VcpuThread = JoinHandle<Result<(), KvmGuestError>>;

/// A KVM VM with an in-kernel irqchip whose vCPUs run a tiny program that counts every
/// interrupt by (APIC ID, vector) in guest memory. vCPU `n` has APIC ID `n`.
///
/// Send it interrupts through KVM routes ([`route_table`](Self::route_table) + irqfds) or
/// [`signal_msi`](Self::signal_msi); read the counts with [`count`](Self::count),
/// [`snapshot`](Self::snapshot) and [`wait_until`](Self::wait_until). Dropping it stops and
/// joins the vCPU threads.
#[derive(Debug)]
pub struct KvmGuest {
    vcpus: Vec<Option<VcpuThread>>,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    /// Whether KVM still has a memslot pointing into `mem`.
    slot_registered: bool,
    _kvm: Kvm,
}

impl KvmGuest {
    /// Creates the VM, loads the program, starts `vcpus` vCPU threads and waits until each
    /// has enabled its APIC (so no interrupt sent afterwards is dropped).
    pub fn new(vcpus: usize, mem_size: usize) -> Result<Self, KvmGuestError> {
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(KvmGuestError::VcpuCount {
                requested: vcpus,
                max: MAX_VCPUS,
            });
        }
        if !(MIN_MEM_SIZE..=MAX_MEM_SIZE).contains(&mem_size) || mem_size % 4096 != 0 {
            return Err(KvmGuestError::MemorySize {
                size: mem_size,
                min: MIN_MEM_SIZE,
                max: MAX_MEM_SIZE,
            });
        }
        let kvm = Kvm::new().map_err(KvmGuestError::OpenKvm)?;
        let vm = kvm.create_vm().map_err(KvmGuestError::CreateVm)?;
        let vm_setup = |step| move |source| KvmGuestError::VmSetup { step, source };
        vm.set_tss_address(TSS_ADDRESS)
            .map_err(vm_setup("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(vm_setup("KVM_CREATE_IRQCHIP"))?;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(MEM_START, mem_size)])
            .map_err(KvmGuestError::Memory)?;
        for (addr, bytes) in program::image() {
            mem.write_slice(&bytes, GuestAddress(addr))
                .map_err(KvmGuestError::MemoryAccess)?;
        }

        let mut guest = Self {
            vcpus: Vec::with_capacity(vcpus),
            vm: Arc::new(vm),
            mem,
            slot_registered: false,
            _kvm: kvm,
        };
        guest.register_memory(mem_size)?;
        let fds = (0..vcpus)
            .map(|index| {
                let fd = guest.vm.create_vcpu(index as u64).map_err(|source| {
                    KvmGuestError::CreateVcpu {
                        vcpu: index,
                        source,
                    }
                })?;
                vcpu::configure(&fd, index)?;
                Ok(fd)
            })
            .collect::<Result<Vec<_>, KvmGuestError>>()?;
        for (index, fd) in fds.into_iter().enumerate() {
            // The thread keeps the mapping alive: KVM writes to it while the vCPU runs.
            let mem = guest.mem.clone();
            let thread = thread::Builder::new()
                .name(format!("kvm-vcpu{index}"))
                .spawn(move || {
                    let result = vcpu::run(fd, index);
                    drop(mem);
                    result
                })
                .map_err(|source| KvmGuestError::SpawnVcpu {
                    vcpu: index,
                    source,
                })?;
            guest.vcpus.push(Some(thread));
        }
        guest.wait_ready()?;
        Ok(guest)
    }

    fn register_memory(&mut self, mem_size: usize) -> Result<(), KvmGuestError> {
        let host = self
            .mem
            .get_host_address(MEM_START)
            .map_err(KvmGuestError::MemoryAccess)?;
        let region = kvm_userspace_memory_region {
            slot: MEM_SLOT,
            flags: 0,
            guest_phys_addr: MEM_START.0,
            memory_size: mem_size as u64,
            userspace_addr: host as u64,
        };
        // SAFETY: `host..host + mem_size` is one live anonymous mapping owned by `self.mem`.
        // It stays mapped while KVM may use it: `Drop` deletes the slot once the vCPUs have
        // stopped (and leaks the mapping if it cannot), and every vCPU thread holds a clone.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(KvmGuestError::RegisterMemory)?;
        self.slot_registered = true;
        Ok(())
    }

    /// Waits until every vCPU has set its ready flag; reports a vCPU that died first.
    fn wait_ready(&mut self) -> Result<(), KvmGuestError> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let waiting: Vec<usize> = (0..self.vcpu_count())
                .filter(|&index| self.load(ready_flag(index as u8)) == 0)
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if let Some(index) = self.stopped_vcpu() {
                // Report why it stopped, not just that it did.
                return Err(self
                    .stop()
                    .err()
                    .unwrap_or(KvmGuestError::VcpuStopped { vcpu: index }));
            }
            if Instant::now() >= deadline {
                return Err(KvmGuestError::NotReady {
                    vcpus: waiting,
                    timeout: STARTUP_TIMEOUT,
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }

    /// The VM, for route tables and irqfds.
    pub fn vm_fd(&self) -> Arc<VmFd> {
        Arc::clone(&self.vm)
    }

    /// A route table for this VM (GSIs 24..4096, irqchip routes kept). A VM should have
    /// only one.
    pub fn route_table(&self) -> KvmRouteTable {
        KvmRouteTable::new(self.vm_fd())
    }

    /// APIC ID of vCPU `vcpu` (KVM's default: the vCPU index).
    pub fn apic_id(&self, vcpu: usize) -> Result<u8, KvmGuestError> {
        if vcpu < self.vcpu_count() {
            // MAX_VCPUS < 256, so the index fits.
            Ok(vcpu as u8)
        } else {
            Err(KvmGuestError::NoSuchVcpu {
                vcpu,
                count: self.vcpu_count(),
            })
        }
    }

    /// The MSI message that delivers `vector` to vCPU `vcpu`.
    pub fn msi(&self, vcpu: usize, vector: u8) -> Result<MsiMessage, KvmGuestError> {
        Ok(CompatMsi::fixed(u32::from(self.apic_id(vcpu)?), vector).message())
    }

    /// Injects `vector` into vCPU `vcpu` once with `KVM_SIGNAL_MSI`, without any route.
    pub fn signal_msi(&self, vcpu: usize, vector: u8) -> Result<(), KvmGuestError> {
        let msi = kvm_msi(self.msi(vcpu, vector)?);
        self.vm
            .signal_msi(msi)
            .map(drop)
            .map_err(|source| KvmGuestError::SignalMsi { vcpu, source })
    }

    /// Atomic load of a guest `u32`. Layout addresses lie below `MIN_MEM_SIZE`, so the load
    /// cannot fail; should it, it reads as 0.
    fn load(&self, addr: u64) -> u32 {
        self.mem
            .load::<u32>(GuestAddress(addr), Ordering::Acquire)
            .unwrap_or(0)
    }

    /// Interrupts vCPU `vcpu` has received on `vector` (0 for a vCPU the guest lacks).
    pub fn count(&self, vcpu: usize, vector: u8) -> u64 {
        match self.apic_id(vcpu) {
            Ok(apic_id) => u64::from(self.load(counter(apic_id, vector))),
            Err(_) => 0,
        }
    }

    /// Every nonzero count, read from guest memory now.
    pub fn snapshot(&self) -> InterruptCounts {
        (0..self.vcpu_count())
            .flat_map(|vcpu| (0..=u8::MAX).map(move |vector| (vcpu, vector)))
            .map(|(vcpu, vector)| ((vcpu, vector), self.count(vcpu, vector)))
            .collect()
    }

    /// Polls the counts until `pred` holds and returns them; fails after `timeout`, or as
    /// soon as a vCPU stops running.
    pub fn wait_until(
        &self,
        mut pred: impl FnMut(&InterruptCounts) -> bool,
        timeout: Duration,
    ) -> Result<InterruptCounts, KvmGuestError> {
        let deadline = Instant::now() + timeout;
        loop {
            let counts = self.snapshot();
            if pred(&counts) {
                return Ok(counts);
            }
            if let Some(vcpu) = self.stopped_vcpu() {
                return Err(KvmGuestError::VcpuStopped { vcpu });
            }
            if Instant::now() >= deadline {
                return Err(KvmGuestError::WaitTimeout {
                    timeout,
                    last: counts,
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends `vector` to every vCPU with `KVM_SIGNAL_MSI` and waits until each has counted
    /// it. An interrupt already pending at a higher vector is handled first, so with a low
    /// `vector` (e.g. 0x20) everything delivered before the barrier is counted after it.
    pub fn barrier(&self, vector: u8, timeout: Duration) -> Result<(), KvmGuestError> {
        let before: Vec<u64> = (0..self.vcpu_count())
            .map(|vcpu| self.count(vcpu, vector))
            .collect();
        for vcpu in 0..self.vcpu_count() {
            self.signal_msi(vcpu, vector)?;
        }
        self.wait_until(
            |counts| {
                before
                    .iter()
                    .enumerate()
                    .all(|(vcpu, &was)| counts.get(vcpu, vector) > was)
            },
            timeout,
        )
        .map(drop)
    }

    /// Stops every vCPU, joins the threads and reports the first vCPU that failed.
    pub fn shutdown(mut self) -> Result<(), KvmGuestError> {
        self.stop()
    }

    /// The first vCPU whose thread has ended, if any.
    fn stopped_vcpu(&self) -> Option<usize> {
        self.vcpus
            .iter()
            .position(|thread| thread.as_ref().is_none_or(JoinHandle::is_finished))
    }

    /// Sends each running vCPU an NMI (its handler asks the VMM to stop), waits for the
    /// threads and joins them. Idempotent. A thread still running after the timeout is
    /// detached rather than waited for forever; it keeps its own clone of guest memory.
    fn stop(&mut self) -> Result<(), KvmGuestError> {
        let mut first_error = None;
        for (index, thread) in self.vcpus.iter().enumerate() {
            if thread.as_ref().is_some_and(|t| !t.is_finished()) {
                let nmi = CompatMsi {
                    delivery: DeliveryMode::Nmi,
                    ..CompatMsi::fixed(index as u32, 0)
                };
                // An NMI is latched until taken, even before the vCPU first runs.
                if let Err(source) = self.vm.signal_msi(kvm_msi(nmi.message())) {
                    first_error.get_or_insert(KvmGuestError::SignalMsi {
                        vcpu: index,
                        source,
                    });
                }
            }
        }
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        while self.vcpus.iter().flatten().any(|t| !t.is_finished()) && Instant::now() < deadline {
            thread::sleep(POLL_INTERVAL);
        }
        let mut stuck = Vec::new();
        for (index, slot) in self.vcpus.iter_mut().enumerate() {
            match slot.take() {
                Some(thread) if thread.is_finished() => match thread.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        first_error.get_or_insert(err);
                    }
                    Err(_) => {
                        first_error.get_or_insert(KvmGuestError::VcpuStopped { vcpu: index });
                    }
                },
                Some(thread) => {
                    stuck.push(index);
                    drop(thread);
                }
                None => {}
            }
        }
        if !stuck.is_empty() {
            return Err(KvmGuestError::ShutdownTimeout { vcpus: stuck });
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for KvmGuest {
    fn drop(&mut self) {
        let stopped = !matches!(self.stop(), Err(KvmGuestError::ShutdownTimeout { .. }));
        if self.slot_registered {
            let region = kvm_userspace_memory_region {
                slot: MEM_SLOT,
                ..Default::default()
            };
            // SAFETY: a zero-sized region deletes the slot; KVM stops using the mapping.
            let deleted = stopped && unsafe { self.vm.set_user_memory_region(region) }.is_ok();
            if !deleted {
                // KVM may still reach the mapping (the VM fd can outlive us through
                // `vm_fd()`), so it must never be unmapped and reused.
                mem::forget(mem::take(&mut self.mem));
            }
        }
    }
}
