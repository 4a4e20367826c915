//! `KvmGuest`: a real KVM VM whose vCPUs count every interrupt they receive.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use pvirq_guest_image_abi::layout::Mode;
use pvirq_host::kvm::{KvmRouteTable, kvm_msi};
use pvirq_proto::{CompatMsi, MsiMessage};

use super::counts::InterruptCounts;
use super::error::KvmGuestError;
use crate::vmm::{Machine, MachineBuilder, VmmError};

/// Pause between two polls of guest memory.
const POLL_INTERVAL: Duration = Duration::from_micros(200);

/// A KVM VM with an in-kernel irqchip whose vCPUs run a tiny program that counts every
/// interrupt by (APIC ID, vector) in guest memory. vCPU `n` has APIC ID `n`.
///
/// Send it interrupts through KVM routes ([`route_table`](Self::route_table) + irqfds) or
/// [`signal_msi`](Self::signal_msi); read the counts with [`count`](Self::count),
/// [`snapshot`](Self::snapshot) and [`wait_until`](Self::wait_until). Dropping it stops and
/// joins the vCPU threads.
#[derive(Debug)]
pub struct KvmGuest {
    machine: Machine,
}

impl KvmGuest {
    /// Creates the VM, loads the guest image, starts `vcpus` vCPU threads and waits until
    /// each has enabled its APIC (so no interrupt sent afterwards is dropped).
    pub fn new(vcpus: usize, mem_size: usize) -> Result<Self, KvmGuestError> {
        let builder =
            MachineBuilder::new(vcpus, mem_size, Mode::Counter, &[]).map_err(|e| match e {
                VmmError::VcpuCount { requested, max } => {
                    KvmGuestError::VcpuCount { requested, max }
                }
                VmmError::MemorySize { size, min, max } => {
                    KvmGuestError::MemorySize { size, min, max }
                }
                other => KvmGuestError::Vmm(other),
            })?;
        Ok(KvmGuest {
            machine: builder.start()?,
        })
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.machine.vcpu_count()
    }

    /// The VM, for route tables and irqfds.
    pub fn vm_fd(&self) -> Arc<VmFd> {
        self.machine.vm_fd()
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
        self.machine
            .vm_fd()
            .signal_msi(msi)
            .map(drop)
            .map_err(|source| KvmGuestError::SignalMsi { vcpu, source })
    }

    /// Interrupts vCPU `vcpu` has received on `vector` (0 for a vCPU the guest lacks).
    pub fn count(&self, vcpu: usize, vector: u8) -> u64 {
        self.machine.count(vcpu, vector)
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
            if let Some(vcpu) = self.machine.stopped_vcpu() {
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
        Ok(self.machine.stop()?)
    }
}
