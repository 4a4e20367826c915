//! `pvirq-sim`: runs a multi-tenant scenario (the embedded default, or a TOML file) on one
//! host, every guest request through its own pvirq channel, and shows every answer.
//!
//! Exit status: 0 when every expectation the scenario states is met, 1 when one is not
//! (or a host invariant broke), 2 when the scenario cannot be read or run.

use clap::Parser;
use pvirq_sim::report;
use pvirq_sim::run::{self, Backend, MemoryBackend};
use pvirq_sim::scenario::{self, Scenario};
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs a pvirq multi-tenant scenario and shows what every guest was answered.
#[derive(Debug, Parser)]
#[command(name = "pvirq-sim", version, about)]
struct Cli {
    /// A scenario file (TOML; format in sim/scenarios/README.md). Default: the embedded
    /// scenario (sim/scenarios/default.toml).
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Deliver through real KVM (needs /dev/kvm) instead of in-memory routes.
    #[arg(long)]
    kvm: bool,
    /// Print the embedded default scenario and exit.
    #[arg(long, conflicts_with_all = ["scenario", "json", "kvm"])]
    print_default: bool,
}

fn load(path: Option<&PathBuf>) -> Result<Scenario, String> {
    match path {
        None => scenario::default_scenario().map_err(|e| e.to_string()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("{}: cannot read: {e}", p.display()))?;
            scenario::parse(&text, &p.display().to_string()).map_err(|e| e.to_string())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default {
        print!("{}", scenario::DEFAULT);
        return ExitCode::SUCCESS;
    }
    let scenario = match load(cli.scenario.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let backend: Result<Box<dyn Backend>, _> = if cli.kvm {
        run::kvm_backend()
    } else {
        Ok(Box::new(MemoryBackend))
    };
    let mut backend = match backend {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match run::run(&scenario, backend.as_mut()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report::render(&report));
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        for (step, check) in report.failures() {
            eprintln!(
                "expectation not met: step {} (line {}): {} expected {}, got {}",
                step.step, step.line, check.field, check.expected, check.actual
            );
        }
        for v in &report.invariant_violations {
            eprintln!("host invariant violated: {v}");
        }
        ExitCode::from(1)
    }
}
