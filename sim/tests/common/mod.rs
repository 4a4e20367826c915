//! What the simulator's scenario tests share: a small scenario that uses every key the
//! extensions added, and running a scenario text in-process.

#![allow(dead_code)]

use pvirq_sim::report::{Report, StepRecord};
use pvirq_sim::run::{MemoryBackend, run};
use pvirq_sim::scenario;

/// A scenario with every new key: host posting and MSI block limit, a destination with a
/// tenant, features and sparse APIC IDs, an AMD-placed device, shares, guest identity, a
/// hot-plugged device, and each new step. Each test edits it (or appends steps).
pub const EXT: &str = r#"name = "ext"

[host]
iommu_units = 2
irtes_per_unit = 32
cpus = 1
end_vector = 0x30
posted = true
max_msi_block = 8

[[destination]]
name = "b"
iommu_units = 2
irtes_per_unit = 8
cpus = 1
end_vector = 0x30
tenants = [{ unit = 0, vectors = 2 }]

[[vm]]
name = "x"
vcpus = 2
apic_ids = [1, 3]
quota = 16
features = ["apic-id", "info", "parked", "events", "spread", "contiguous", "index-list"]
[[vm.device]]
name = "nic"
requester_id = 0x0010
msix = 8
share = 6
bdf = "0000:02:00.1"
[[vm.device]]
name = "amd"
requester_id = 0x0020
amd_table = 512
msix = 4
[[vm.device]]
name = "wq"
requester_id = 0x0030
unit = 1
ims = 8
interface_pasid = 9
hotplug = true

[[vm]]
name = "old"
vcpus = 1
quota = 4
[[vm.device]]
name = "disk"
requester_id = 0x0040
msix = 4
"#;

/// `EXT` with `steps` appended.
pub fn with_steps(steps: &str) -> String {
    format!("{EXT}\n{steps}")
}

/// Parses and runs `text` in-process; panics with the error if either fails.
pub fn run_text(text: &str) -> Report {
    let scenario = scenario::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    run(&scenario, &mut MemoryBackend).unwrap_or_else(|e| panic!("{e}"))
}

/// Every expectation the scenario states is met; panics listing the failures.
pub fn assert_passed(report: &Report) {
    let failures: Vec<String> = report
        .failures()
        .map(|(s, c)| {
            format!(
                "step {} {}: {} expected {}, got {}",
                s.step, s.op, c.field, c.expected, c.actual
            )
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        report.invariant_violations.is_empty(),
        "{:?}",
        report.invariant_violations
    );
}

/// The step with number `n` (1-based).
pub fn step(report: &Report, n: usize) -> &StepRecord {
    &report.steps[n - 1]
}

/// The 1-based line of the first line of `text` containing `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}"))
        + 1
}
