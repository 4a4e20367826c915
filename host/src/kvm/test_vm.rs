//! Test support: a VM whose vCPUs never run, but whose local APICs accept interrupts, so a
//! test can see which (vCPU, vector) an MSI reached by reading the APIC's IRR.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VcpuFd, VmFd};

/// Offset of the spurious-interrupt vector register in the APIC page.
const APIC_SVR: usize = 0xF0;
/// Offset of the first of the eight 32-bit IRR registers, 16 bytes apart.
const APIC_IRR: usize = 0x200;

/// A set of (vCPU, vector) pairs, as [`LapicVm::wait_pending`] compares them.
pub(crate) fn set(items: &[(usize, u8)]) -> BTreeSet<(usize, u8)> {
    items.iter().copied().collect()
}

pub(crate) struct LapicVm {
    pub(crate) vm: Arc<VmFd>,
    vcpus: Vec<VcpuFd>,
    _kvm: Kvm,
}

fn read_u32(regs: &[std::os::raw::c_char], offset: usize) -> u32 {
    let bytes: Vec<u8> = regs[offset..offset + 4].iter().map(|&b| b as u8).collect();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

impl LapicVm {
    /// A VM with an in-kernel irqchip and `vcpus` vCPUs (APIC ID = index) whose APICs are
    /// software-enabled, so fixed interrupts are accepted into the IRR.
    pub(crate) fn new(vcpus: u64) -> Self {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpus = (0..vcpus)
            .map(|id| {
                let vcpu = vm.create_vcpu(id).unwrap();
                let mut lapic = vcpu.get_lapic().unwrap();
                for (i, b) in 0x1FFu32.to_le_bytes().iter().enumerate() {
                    lapic.regs[APIC_SVR + i] = *b as std::os::raw::c_char;
                }
                vcpu.set_lapic(&lapic).unwrap();
                vcpu
            })
            .collect();
        Self {
            vm: Arc::new(vm),
            vcpus,
            _kvm: kvm,
        }
    }

    /// Every (vCPU, vector) pending in an IRR.
    pub(crate) fn pending(&self) -> BTreeSet<(usize, u8)> {
        let mut pending = BTreeSet::new();
        for (cpu, vcpu) in self.vcpus.iter().enumerate() {
            let lapic = vcpu.get_lapic().unwrap();
            for word in 0..8 {
                let bits = read_u32(&lapic.regs, APIC_IRR + word * 0x10);
                for bit in 0..32 {
                    if bits & (1 << bit) != 0 {
                        pending.insert((cpu, (word * 32 + bit) as u8));
                    }
                }
            }
        }
        pending
    }

    /// Waits (up to 5 s, against hangs) until the pending set is `expected`; returns the last
    /// pending set seen.
    pub(crate) fn wait_pending(&self, expected: &BTreeSet<(usize, u8)>) -> BTreeSet<(usize, u8)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pending = self.pending();
            if &pending == expected || Instant::now() >= deadline {
                return pending;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}
