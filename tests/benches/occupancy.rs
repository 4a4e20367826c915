//! Benchmark 3: one allocation's cost as the host pool fills.
//!
//! A host of 65,536 IRTEs and 256 CPUs × 203 usable vectors (0x20..0xEC minus 0x80) is
//! filled to 1%, 50%, 90% and 99% of its host vectors (each grant also holds an IRTE and a
//! route) by a filler VM. A probe VM then allocates and frees one MSI-X vector through the
//! host transaction (`Vm::call`: decode, checks, reservation, reply). Vectors run out
//! before IRTEs in that shape, so the allocators are also measured alone, each table
//! filled to the percentage of its own capacity. Target: cost at 99% ≤ 1.5× cost at 1%.

mod common;

use common::{direct_vm, host, keep, median, report};
use criterion::{Criterion, criterion_group};
use pvirq_host::model::ModelHost;
use pvirq_host::model::{RemapConfig, RemapUnits, VectorConfig, VectorMatrix};
use pvirq_proto::{
    Alloc, IndexRange, IndexSpec, Kind, Operation, Outcome, Request, Response, Target, Targeting,
    feature,
};
use std::time::{Duration, Instant};

const CPUS: u32 = 256;
const FILLS: [u32; 4] = [1, 50, 90, 99];
const PROBE_SOURCE: u16 = 0x0200;

fn alloc_request<'a>(kind: Kind, count: u16, targets: &'a [Target]) -> Request<'a> {
    Request {
        device: 0,
        tag: 0,
        op: Operation::Alloc(Alloc {
            kind,
            index: IndexSpec::Any,
            min: count,
            max: count,
            pasid: None,
            targets,
            targeting: Targeting::PerVector,
        }),
    }
}

/// A host whose vectors are `percent` % taken by a filler VM, and a probe VM.
struct Filled {
    percent: u32,
    host: ModelHost,
    _filler: pvirq_host::Vm,
    probe: pvirq_host::Vm,
}

fn filled(percent: u32) -> Filled {
    let host = host(CPUS);
    let total = host.occupancy().vectors_free;
    let goal = total * percent / 100;
    let filler = direct_vm(&host, total, 65_536, 0x0100);
    let targets = vec![Target::new(0, 0x40); 4096];
    let mut held = 0;
    while held < goal {
        let n = (goal - held).min(4096) as u16;
        let reply = filler.call(&alloc_request(Kind::Ims, n, &targets[..usize::from(n)]));
        match Response::decode(&reply, feature::V1)
            .expect("filler reply")
            .outcome
        {
            Outcome::Allocated { grants, .. } => held += grants.len() as u32,
            other => panic!("filling to {percent}% stopped at {held}: {other:?}"),
        }
    }
    let probe = direct_vm(&host, 16, 0, PROBE_SOURCE);
    Filled {
        percent,
        host,
        _filler: filler,
        probe,
    }
}

impl Filled {
    /// One ALLOC of one MSI-X vector and its FREE, through the host transaction.
    fn alloc_free(&self) {
        let target = [Target::new(1, 0x41)];
        let reply = self.probe.call(&alloc_request(Kind::MsiX, 1, &target));
        let index = match Response::decode(&reply, feature::V1)
            .expect("probe reply")
            .outcome
        {
            Outcome::Allocated { grants, .. } => grants.get(0).expect("one grant").index(),
            other => panic!("probe refused at {}%: {other:?}", self.percent),
        };
        let range = IndexRange {
            kind: Kind::MsiX,
            first: index,
            count: 1,
        };
        keep(self.probe.call(&Request {
            device: 0,
            tag: 1,
            op: Operation::Free(range.into()),
        }));
    }
}

/// The allocators alone, each filled to `percent` % of its own capacity: the IRTE table of
/// 65,536 entries and the vector matrix of 256 CPUs.
struct FilledLayers {
    remap: RemapUnits,
    vectors: VectorMatrix,
}

fn filled_layers(percent: u32) -> FilledLayers {
    let mut remap = RemapUnits::new(RemapConfig::default()).expect("remap");
    let mut vectors = VectorMatrix::new(&VectorConfig {
        cpus: CPUS,
        ..VectorConfig::default()
    })
    .expect("vectors");
    for _ in 0..remap.capacity(0) * percent / 100 {
        remap.alloc(0, 0x0100).expect("filling IRTEs");
    }
    for _ in 0..vectors.available() * percent / 100 {
        vectors.alloc().expect("filling vectors");
    }
    FilledLayers { remap, vectors }
}

impl FilledLayers {
    fn alloc_free(&mut self) {
        let irte = self.remap.alloc(0, PROBE_SOURCE).expect("irte");
        let hv = self.vectors.alloc().expect("vector");
        self.vectors.free(keep(hv));
        self.remap.free(0, keep(irte));
    }
}

/// Median ns of `per_round` calls of each fill's probe, rounds interleaved across fills.
fn interleaved_by_fill(hosts: &[Filled], rounds: usize, per_round: u32) -> Vec<f64> {
    let mut samples = vec![Vec::new(); hosts.len()];
    for round in 0..=rounds {
        for (i, filled) in hosts.iter().enumerate() {
            let start = Instant::now();
            for _ in 0..per_round {
                filled.alloc_free();
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(per_round);
            if round > 0 {
                samples[i].push(ns); // round 0 warms up
            }
        }
    }
    samples.iter_mut().map(|s| median(s)).collect()
}

fn occupancy(c: &mut Criterion) {
    let hosts: Vec<Filled> = FILLS.iter().map(|&p| filled(p)).collect();
    for filled in &hosts {
        let occ = filled.host.occupancy();
        println!(
            "bench3 fill {:>2}%: host vectors used {} of {}, IRTEs used {} of {}",
            filled.percent,
            occ.vectors_used,
            occ.vectors_used + occ.vectors_free,
            occ.units[0].used,
            occ.units[0].capacity
        );
    }
    let costs = interleaved_by_fill(&hosts, 31, 2000);
    for (filled, ns) in hosts.iter().zip(&costs) {
        println!(
            "bench3 ALLOC+FREE at {:>2}% full: {ns:.0} ns",
            filled.percent
        );
    }
    if let (Some(first), Some(last)) = (costs.first(), costs.last()) {
        let ratio = last / first;
        report(
            "bench3 99%/1% (host transaction)",
            ratio,
            "x",
            "<= 1.5",
            ratio <= 1.5,
        );
    }

    let mut layers: Vec<FilledLayers> = FILLS.iter().map(|&p| filled_layers(p)).collect();
    let mut samples = vec![Vec::new(); layers.len()];
    for round in 0..=31 {
        for (i, l) in layers.iter_mut().enumerate() {
            let start = Instant::now();
            for _ in 0..20_000 {
                l.alloc_free();
            }
            if round > 0 {
                samples[i].push(start.elapsed().as_nanos() as f64 / 20_000.0);
            }
        }
    }
    let layer_costs: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    for (percent, ns) in FILLS.iter().zip(&layer_costs) {
        println!("bench3 IRTE + host vector alloc+free, each table {percent:>2}% full: {ns:.1} ns");
    }
    if let (Some(first), Some(last)) = (layer_costs.first(), layer_costs.last()) {
        let ratio = last / first;
        report(
            "bench3 99%/1% (allocators alone)",
            ratio,
            "x",
            "<= 1.5",
            ratio <= 1.5,
        );
    }

    let mut group = c.benchmark_group("occupancy");
    for filled in &hosts {
        group.bench_function(format!("alloc_free_at_{}pct", filled.percent), |b| {
            b.iter(|| filled.alloc_free())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(2));
    targets = occupancy
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
