//! The TSC's rate, calibrated against the host's monotonic clock once per process. KVM
//! runs the guest's TSC at the host's rate here (no TSC scaling), so guest cycles convert
//! with the same figure.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn rdtsc() -> u64 {
    // SAFETY: reads the time-stamp counter; no memory is touched.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC ticks per millisecond (kHz), measured over 50 ms of the host clock.
pub fn tsc_khz() -> u64 {
    static KHZ: OnceLock<u64> = OnceLock::new();
    *KHZ.get_or_init(|| {
        let (t0, c0) = (Instant::now(), rdtsc());
        while t0.elapsed() < Duration::from_millis(50) {
            std::hint::spin_loop();
        }
        let (elapsed, cycles) = (t0.elapsed(), rdtsc().wrapping_sub(c0));
        let khz = cycles as f64 / (elapsed.as_secs_f64() * 1000.0);
        (khz as u64).max(1)
    })
}

/// `cycles` in microseconds.
pub fn micros(cycles: u64) -> f64 {
    cycles as f64 * 1000.0 / tsc_khz() as f64
}
