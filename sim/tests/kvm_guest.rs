//! The KVM guest itself: it starts, counts exactly what `KVM_SIGNAL_MSI` sends it, and stops.

use std::time::Duration;

use pvirq_sim::kvm::{
    InterruptCounts, KvmGuest, KvmGuestError, MAX_VCPUS, MIN_MEM_SIZE, require_kvm_or_skip,
};

/// Guard against hangs only; delivery normally takes microseconds.
const TIMEOUT: Duration = Duration::from_secs(5);
const MEM: usize = 1 << 20;

fn counts(items: &[((usize, u8), u64)]) -> InterruptCounts {
    items.iter().copied().collect()
}

#[test]
fn counts_signalled_msis_per_vcpu_and_vector() {
    if !require_kvm_or_skip() {
        return;
    }
    let guest = KvmGuest::new(2, MEM).unwrap();
    assert!(guest.snapshot().is_empty());
    guest.signal_msi(0, 0x20).unwrap();
    guest.signal_msi(1, 0xFE).unwrap();
    let expected = counts(&[((0, 0x20), 1), ((1, 0xFE), 1)]);
    assert_eq!(
        guest.wait_until(|c| *c == expected, TIMEOUT).unwrap(),
        expected
    );
    // A second interrupt on a vector counts again once the first was taken (while one is
    // still pending in the IRR, a second on the same vector merges with it).
    guest.signal_msi(1, 0xFE).unwrap();
    let expected = counts(&[((0, 0x20), 1), ((1, 0xFE), 2)]);
    assert_eq!(
        guest.wait_until(|c| *c == expected, TIMEOUT).unwrap(),
        expected
    );
    assert_eq!(guest.count(1, 0xFE), 2);
    assert_eq!(guest.count(7, 0xFE), 0, "no such vCPU");
    guest.shutdown().unwrap();
}

#[test]
fn every_vcpu_of_a_larger_guest_counts_under_its_own_apic_id() {
    if !require_kvm_or_skip() {
        return;
    }
    let guest = KvmGuest::new(4, MEM).unwrap();
    for vcpu in 0..4 {
        assert_eq!(guest.apic_id(vcpu).unwrap(), vcpu as u8);
        guest.signal_msi(vcpu, 0x30 + vcpu as u8).unwrap();
    }
    let expected: InterruptCounts = (0..4).map(|v| ((v, 0x30 + v as u8), 1)).collect();
    assert_eq!(
        guest.wait_until(|c| *c == expected, TIMEOUT).unwrap(),
        expected
    );
    assert!(matches!(
        guest.apic_id(4),
        Err(KvmGuestError::NoSuchVcpu { vcpu: 4, count: 4 })
    ));
    guest.shutdown().unwrap();
}

#[test]
fn barrier_waits_for_every_vcpu() {
    if !require_kvm_or_skip() {
        return;
    }
    let guest = KvmGuest::new(2, MEM).unwrap();
    guest.barrier(0x20, TIMEOUT).unwrap();
    guest.barrier(0x20, TIMEOUT).unwrap();
    assert_eq!(guest.snapshot(), counts(&[((0, 0x20), 2), ((1, 0x20), 2)]));
    guest.shutdown().unwrap();
}

#[test]
fn wait_until_times_out_with_the_last_counts() {
    if !require_kvm_or_skip() {
        return;
    }
    let guest = KvmGuest::new(1, MEM).unwrap();
    guest.signal_msi(0, 0x40).unwrap();
    guest.wait_until(|c| c.get(0, 0x40) == 1, TIMEOUT).unwrap();
    let err = guest
        .wait_until(|c| c.get(0, 0x41) == 1, Duration::from_millis(50))
        .unwrap_err();
    assert!(
        matches!(&err, KvmGuestError::WaitTimeout { last, .. } if *last == counts(&[((0, 0x40), 1)])),
        "{err:?}"
    );
    // Dropping (not shutting down) must stop and join the vCPUs too.
    drop(guest);
}

#[test]
fn invalid_sizes_are_typed_errors() {
    // Checked before /dev/kvm is opened, so this runs everywhere.
    for vcpus in [0, MAX_VCPUS + 1] {
        assert!(matches!(
            KvmGuest::new(vcpus, MEM),
            Err(KvmGuestError::VcpuCount { requested, .. }) if requested == vcpus
        ));
    }
    for size in [MIN_MEM_SIZE - 4096, MEM + 1] {
        assert!(matches!(
            KvmGuest::new(1, size),
            Err(KvmGuestError::MemorySize { size: s, .. }) if s == size
        ));
    }
}
