//! What every benchmark shares: the fixtures they measure and an interleaved ratio.
//!
//! Each benchmark reports a ratio against a baseline measured in the same process. The two
//! are timed in alternating rounds, so that load from elsewhere on the machine hits both
//! alike, and the ratio of medians is printed next to its target.

#![allow(dead_code)] // each bench binary uses a different part of this module

use pvirq_guest::Options;
use pvirq_host::model::{ModelConfig, ModelHost};
use pvirq_host::model::{RemapConfig, VectorConfig};
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::{DeviceSpec, Vm, VmConfig};
use pvirq_sim::Channel;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Requester ID of the device the benchmarks allocate for.
pub const SOURCE_ID: u16 = 0x0100;

/// A host of `units` × 65,536 IRTEs and `cpus` CPUs with Linux's usable vector range.
pub fn host(cpus: u32) -> ModelHost {
    let config = ModelConfig {
        remap: RemapConfig {
            units: 1,
            entries_per_unit: 65_536,
        },
        vectors: VectorConfig {
            cpus,
            ..VectorConfig::default()
        },
        ..ModelConfig::default()
    };
    ModelHost::new(&config).expect("benchmark host")
}

/// A VM with one device that has a full MSI-X table and `ims_slots` IMS slots.
pub fn vm_config(quota: u32, ims_slots: u32, source: u16) -> VmConfig {
    VmConfig {
        quota,
        num_vcpus: 2,
        max_batch: 4096,
        devices: vec![DeviceSpec {
            requester_id: source,
            msi_max: 32,
            msix_table_size: 2048,
            ims_slots,
            ..DeviceSpec::default()
        }],
        ..VmConfig::default()
    }
}

/// A route layer large enough for every IRTE of a unit.
pub fn big_routes() -> Box<MemoryRoutes> {
    Box::new(MemoryRoutes::with_range(0, 65_536).expect("route range"))
}

/// A VM on `host` reached directly through [`Vm::call`].
pub fn direct_vm(host: &ModelHost, quota: u32, ims_slots: u32, source: u16) -> Vm {
    host.create_vm(vm_config(quota, ims_slots, source), big_routes())
        .expect("benchmark VM")
}

/// A channel (guest driver ↔ ring ↔ virtio-mmio ↔ host device) on `host`.
pub fn channel(host: &ModelHost, quota: u32) -> Channel {
    let routes = Box::new(MemoryRoutes::kvm_like());
    Channel::new(
        host,
        vm_config(quota, 4096, SOURCE_ID),
        routes,
        Options::default(),
    )
    .expect("benchmark channel")
}

/// Median nanoseconds per call of `a` and of `b`, timed in `rounds` alternating rounds of
/// `per_round` calls each.
pub fn interleaved(
    rounds: usize,
    per_round: u32,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
) -> (f64, f64) {
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..per_round {
            f();
        }
        start.elapsed().as_nanos() as f64 / f64::from(per_round)
    };
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    // One untimed round each warms caches and allocators.
    time(&mut a);
    time(&mut b);
    for _ in 0..rounds {
        ta.push(time(&mut a));
        tb.push(time(&mut b));
    }
    (median(&mut ta), median(&mut tb))
}

/// Median nanoseconds of the time `measure` reports for `rounds` runs.
pub fn median_of(rounds: usize, mut measure: impl FnMut() -> Duration) -> f64 {
    let mut samples: Vec<f64> = (0..rounds).map(|_| measure().as_nanos() as f64).collect();
    median(&mut samples)
}

pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Prints one result line: `name: figure ... (target ...) MET|MISSED`.
pub fn report(name: &str, figure: f64, unit: &str, target: &str, met: bool) {
    let verdict = if met { "MET" } else { "MISSED" };
    println!("RESULT {name}: {figure:.2} {unit} (target {target}) {verdict}");
}

/// Keeps a value alive and opaque to the optimiser.
pub fn keep<T>(value: T) -> T {
    black_box(value)
}
