//! Benchmarks from inside the guest: one KVM VM (`vmm::bench_vm`), one run. The guest
//! times each flow with its TSC; the VMM counts the exits it handled meanwhile and converts
//! cycles with its TSC calibration against the host clock.
//!
//! `cargo bench -p pvirq-sim --bench guest_vm` (needs /dev/kvm). Prints one line per
//! measurement and the ratios BENCHMARKS.md reports.

use pvirq_guest_image_abi::mailbox::{Op, Status};
use pvirq_sim::kvm::require_kvm_or_skip;
use pvirq_sim::vmm::bench_vm::{PVIRQ_MEMORY, PVIRQ_TRAPPED, TRAPPED_FLOW, bench_host, bench_vm};
use pvirq_sim::vmm::{Command, ExitSnapshot, GuestVm, Report, tsc};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
const VECTORS: u32 = 256;
const REPEATS: usize = 15;
const MSIX: u32 = 1;

struct Measured {
    cycles: u64,
    /// The fastest of the repeats (cycles), next to the median.
    min: u64,
    exits: ExitSnapshot,
    commits: u64,
    commit_time: Duration,
    interrupts: u64,
    report: Report,
}

fn run(vm: &mut GuestVm, op: Op, args: &[u32]) -> Report {
    let report = vm.command(&Command::new(op, args), T).expect("command");
    assert_eq!(report.status, Status::Ok, "{op:?}: {report:?}");
    report
}

/// One measured command; `cleanup` runs after the counters are read.
fn measure(vm: &mut GuestVm, op: Op, args: &[u32], cleanup: Option<(Op, &[u32])>) -> Measured {
    let (exits, commits, time, irqs) = (
        vm.exits(),
        vm.route_commits(),
        vm.route_commit_time(),
        vm.pvirq_interrupts(),
    );
    let report = run(vm, op, args);
    let m = Measured {
        cycles: report.r64(0),
        min: report.r64(0),
        exits: vm.exits().since(&exits),
        commits: vm.route_commits() - commits,
        commit_time: vm.route_commit_time() - time,
        interrupts: vm.pvirq_interrupts() - irqs,
        report,
    };
    if let Some((op, args)) = cleanup {
        run(vm, op, args);
    }
    m
}

/// The median of `REPEATS` runs (by cycles).
fn median(vm: &mut GuestVm, op: Op, args: &[u32], cleanup: Option<(Op, &[u32])>) -> Measured {
    let mut runs: Vec<Measured> = (0..REPEATS)
        .map(|_| measure(vm, op, args, cleanup))
        .collect();
    runs.sort_by_key(|m| m.cycles);
    let min = runs.first().map_or(0, |m| m.cycles);
    let mut median = runs.swap_remove(REPEATS / 2);
    median.min = min;
    median
}

fn line(name: &str, m: &Measured, per: u64) {
    let per = per.max(1) as f64;
    println!(
        "{name:<46} {:>9.1} µs (min {:.1})  exits {:>5} ({:>6.3}/vector: pvirq {}, table {}, regs {})  commits {} ({:.3}/vector, {:.1} µs)",
        tsc::micros(m.cycles),
        tsc::micros(m.min),
        m.exits.mmio(),
        m.exits.mmio() as f64 / per,
        m.exits.pvirq,
        m.exits.msix_table,
        m.exits.device_regs,
        m.commits,
        m.commits as f64 / per,
        m.commit_time.as_secs_f64() * 1e6,
    );
}

fn main() {
    if !require_kvm_or_skip() {
        return;
    }
    let host = bench_host().expect("host");
    let mut vm = bench_vm(&host).expect("VM");
    let init = vm.command(&Command::new(Op::Init, &[]), T).expect("init");
    assert_eq!(init.status, Status::Ok);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    println!(
        "environment: PVM nested KVM (/dev/kvm = kvm_pvm), 2 host cores shared, guest 2 vCPUs; TSC {} kHz (calibrated against the host clock)",
        tsc::tsc_khz()
    );

    // 1. 256-vector bring-up.
    let reset = |d: u32| [d];
    let (r0, r1) = (reset(PVIRQ_MEMORY), reset(PVIRQ_TRAPPED));
    let pvirq = median(
        &mut vm,
        Op::BenchPvirqBringup,
        &[PVIRQ_MEMORY, VECTORS, MSIX],
        Some((Op::ResetDevice, &r0)),
    );
    line("bring-up 256, pvirq, untrapped MSI-X table", &pvirq, 256);
    let ims = median(
        &mut vm,
        Op::BenchPvirqBringup,
        &[PVIRQ_MEMORY, VECTORS, 2],
        Some((Op::ResetDevice, &r0)),
    );
    line("bring-up 256, pvirq, IMS slots in RAM", &ims, 256);
    let disable = [TRAPPED_FLOW, 0, 1];
    let trapped = median(
        &mut vm,
        Op::BenchTrappedBringup,
        &[TRAPPED_FLOW, VECTORS],
        Some((Op::BenchTrappedBringup, &disable)),
    );
    line(
        "bring-up 256, trapped flow (commit per unmask)",
        &trapped,
        256,
    );
    let pvirq_trapped = median(
        &mut vm,
        Op::BenchPvirqBringup,
        &[PVIRQ_TRAPPED, VECTORS, MSIX],
        Some((Op::ResetDevice, &r1)),
    );
    line(
        "bring-up 256, pvirq, trapped MSI-X table",
        &pvirq_trapped,
        256,
    );
    println!(
        "ratio trapped flow / pvirq (untrapped): {:.1}x; / pvirq (IMS): {:.1}x; trapped flow / pvirq, both tables trapped: {:.2}x",
        trapped.cycles as f64 / pvirq.cycles.max(1) as f64,
        trapped.cycles as f64 / ims.cycles.max(1) as f64,
        trapped.cycles as f64 / pvirq_trapped.cycles.max(1) as f64,
    );

    // 2. One single-vector ALLOC against a bare exit.
    let rounds = 200;
    let mut alloc_each = 0;
    for (name, quiet) in [
        ("ALLOC ×1 round trip", 0),
        ("ALLOC ×1 round trip, completion irq off", 1),
    ] {
        let alloc = median(
            &mut vm,
            Op::BenchAllocRoundTrip,
            &[rounds, PVIRQ_MEMORY, MSIX, quiet],
            None,
        );
        let each = alloc.cycles / u64::from(rounds);
        if quiet == 0 {
            alloc_each = each;
        }
        let free_each = alloc.report.r64(2) / u64::from(rounds);
        let per = f64::from(2 * rounds);
        println!(
            "{name:<46} {:>9.1} µs  (FREE {:.1} µs)  exits/request {:.2}  commits/request {:.2} ({:.1} µs each)  pvirq irqs/request {:.2}",
            tsc::micros(each),
            tsc::micros(free_each),
            alloc.exits.mmio() as f64 / per,
            alloc.commits as f64 / per,
            alloc.commit_time.as_secs_f64() * 1e6 / alloc.commits.max(1) as f64,
            alloc.interrupts as f64 / per,
        );
    }
    let bare_rounds = 1000;
    let bare = median(&mut vm, Op::BenchBareExit, &[bare_rounds], None);
    let bare_each = bare.cycles / u64::from(bare_rounds);
    println!(
        "{:<46} {:>9.1} µs  exits/round {:.2}",
        "bare MMIO exit round trip",
        tsc::micros(bare_each),
        bare.exits.mmio() as f64 / f64::from(bare_rounds),
    );
    println!(
        "ratio ALLOC / bare exit: {:.2}x",
        alloc_each as f64 / bare_each.max(1) as f64
    );

    // 3. Fire → guest handler.
    let fire_rounds = 300;
    let through = median(
        &mut vm,
        Op::BenchFire,
        &[fire_rounds, PVIRQ_MEMORY, MSIX, 0, 0],
        None,
    );
    let plain = median(
        &mut vm,
        Op::BenchFire,
        &[fire_rounds, PVIRQ_MEMORY, MSIX, 0, 1],
        None,
    );
    for (name, m) in [
        ("fire → handler, pvirq route + irqfd", &through),
        ("fire → handler, plain irqfd (no pvirq)", &plain),
    ] {
        println!(
            "{name:<46} {:>9.1} µs to handler entry, {:.1} µs to CPL 3; lost {}; exits/round {:.2}",
            tsc::micros(m.cycles / u64::from(fire_rounds)),
            tsc::micros(m.report.r64(2) / u64::from(fire_rounds)),
            m.report.r(4),
            m.exits.mmio() as f64 / f64::from(fire_rounds),
        );
    }
    println!(
        "ratio pvirq fire / plain irqfd: {:.3}x (to handler), {:.3}x (to CPL 3)",
        through.cycles as f64 / plain.cycles.max(1) as f64,
        through.report.r64(2) as f64 / plain.report.r64(2).max(1) as f64,
    );
    vm.shutdown().expect("shutdown");
}
