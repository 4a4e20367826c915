//! Benchmarks 1 and 2: the protocol's cost.
//!
//! 1. One-vector ALLOC + FREE through the full path (guest driver → ring in guest memory →
//!    virtio-mmio → host device → reply → guest) against the host layers called directly
//!    for the same work (IRTE, host vector, route staged and committed, then released).
//!    Target: full path ≤ 3× direct.
//! 2. Batch ALLOC of 1, 16 and 256 vectors through the full path: cost per vector, against
//!    the single-vector ALLOC of the same run. Target: ≤ 150 ns per vector at 256.

mod common;

use common::{channel, host, interleaved, keep, median_of, report};
use criterion::{Criterion, criterion_group};
use pvirq_host::GuestDest;
use pvirq_host::backend::{EnableRequest, Enabled, InterruptBackend, VectorSetup};
use pvirq_host::model::{ModelBackend, ModelHost};
use pvirq_host::routes::{GuestRoutes, MemoryRoutes};
use pvirq_proto::{Grant, IndexRange, IndexSpec, Kind, MsiMessage, Target};
use pvirq_sim::Channel;
use std::time::{Duration, Instant};

const TARGET: Target = Target::new(1, 0x40);
/// The requester ID of the device the direct baseline backs.
const DIRECT_SOURCE: u16 = 0x0200;

/// The host-side work of one grant and its release, with no protocol around it: the
/// device's backend on the modelled host and the VM's routes, called directly.
struct DirectLayers {
    backend: ModelBackend,
    routes: MemoryRoutes,
    enabled: Vec<Enabled>,
}

impl DirectLayers {
    fn new(host: &ModelHost) -> Self {
        let vm = host.new_vm_id();
        DirectLayers {
            backend: host.attach(vm, DIRECT_SOURCE).expect("backend"),
            routes: MemoryRoutes::kvm_like(),
            enabled: Vec::with_capacity(1),
        }
    }

    fn alloc_free(&mut self) {
        let dest = Some(GuestDest {
            apic_id: 1,
            vector: 0x40,
        });
        let route = self.routes.stage_add(dest).expect("route");
        let vectors = [VectorSetup {
            index: 0,
            trigger: route.trigger,
            dest,
            previous: None,
        }];
        let request = EnableRequest {
            kind: Kind::MsiX,
            vectors: &vectors,
            min: 1,
            pasid: None,
            allow_posted: false,
        };
        self.enabled.clear();
        self.backend
            .enable(&request, &mut self.enabled)
            .expect("enable");
        self.routes.commit().expect("commit");
        keep(self.enabled.first().map(|e| e.message));
        self.routes.stage_remove(route.id).expect("remove");
        self.routes.commit().expect("commit");
        self.backend.disable(Kind::MsiX, &[0]);
    }
}

fn full_alloc_free(channel: &mut Channel) {
    let driver = channel.driver();
    let grant = driver
        .alloc_irq_at(0, Kind::MsiX, IndexSpec::Any, TARGET, None)
        .expect("grant");
    let range = IndexRange {
        kind: Kind::MsiX,
        first: grant.index(),
        count: 1,
    };
    driver.free(0, range).expect("free");
}

/// Time of one ALLOC of `n` MSI-X vectors through the full path; the FREE is not timed.
fn timed_batch_alloc(channel: &mut Channel, targets: &[Target], grants: &mut [Grant]) -> Duration {
    let driver = channel.driver();
    let start = Instant::now();
    let granted = driver
        .alloc_irq_vectors(0, Kind::MsiX, targets.len() as u16, targets, grants)
        .expect("batch grant")
        .grants
        .len();
    let elapsed = start.elapsed();
    let range = IndexRange {
        kind: Kind::MsiX,
        first: 0,
        count: granted as u16,
    };
    driver.free(0, range).expect("free");
    elapsed
}

fn protocol_cost(c: &mut Criterion) {
    let host = host(2);
    let mut full = channel(&host, 4096);
    let mut direct = DirectLayers::new(&host);

    // Benchmark 1, as a ratio of interleaved medians.
    let (full_ns, direct_ns) = interleaved(
        41,
        2000,
        || full_alloc_free(&mut full),
        || direct.alloc_free(),
    );
    println!("bench1 full path ALLOC+FREE: {full_ns:.0} ns; direct layers: {direct_ns:.0} ns");
    let ratio = full_ns / direct_ns;
    report("bench1 full/direct", ratio, "x", "<= 3", ratio <= 3.0);

    // Where the full path's time goes: a QUERY is a round trip through the same ring,
    // registers, decode and encode with no reservation, so two of them are what ALLOC+FREE
    // pays for the protocol alone.
    let (query_ns, direct_again) = interleaved(
        41,
        2000,
        || {
            keep(full.driver().query(0).expect("query"));
        },
        || direct.alloc_free(),
    );
    println!(
        "bench1 breakdown: one QUERY round trip {query_ns:.0} ns, so two round trips are \
         {:.1}x direct ({direct_again:.0} ns) before any reservation work",
        2.0 * query_ns / direct_again
    );

    // Benchmark 2: per-vector cost of a batch, against the single-vector request.
    let mut grants = vec![Grant::new(0, MsiMessage::default()); 256];
    let mut per_vector = Vec::new();
    for n in [1usize, 16, 256] {
        let targets: Vec<Target> = (0..n)
            .map(|i| Target::new(i as u32 % 2, 0x40 + (i % 0xA0) as u8))
            .collect();
        let ns = median_of(301, || timed_batch_alloc(&mut full, &targets, &mut grants)) / n as f64;
        println!("bench2 ALLOC of {n}: {ns:.1} ns per vector");
        per_vector.push((n, ns));
    }
    if let (Some(&(_, single)), Some(&(_, batch))) = (per_vector.first(), per_vector.last()) {
        println!(
            "bench2 single-vector request / per-vector in a 256 batch: {:.1}x",
            single / batch
        );
        report(
            "bench2 per vector at 256",
            batch,
            "ns",
            "<= 150",
            batch <= 150.0,
        );
    }

    let mut group = c.benchmark_group("protocol");
    group.bench_function("alloc_free_full_path", |b| {
        b.iter(|| full_alloc_free(&mut full))
    });
    group.bench_function("alloc_free_direct_layers", |b| {
        b.iter(|| direct.alloc_free())
    });
    for n in [1usize, 16, 256] {
        let targets: Vec<Target> = (0..n)
            .map(|i| Target::new(i as u32 % 2, 0x40 + (i % 0xA0) as u8))
            .collect();
        group.bench_function(format!("batch_alloc_{n}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| timed_batch_alloc(&mut full, &targets, &mut grants))
                    .sum()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(2));
    targets = protocol_cost
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
