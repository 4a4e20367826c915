//! Crashes found by fuzzing, kept as regression tests.
//!
//! An input that crashed a target is copied (once the bug is fixed) to
//! `fuzz/regressions/<target>/<name>`; the tests of this crate replay every file there
//! through its target's harness on the stable toolchain, so `cargo test` fails if the bug
//! comes back. [`run_target`] is the one dispatcher the replay and `fuzz/campaign.sh`'s
//! reproduction hint rely on.

use crate::wire::Wire;
use std::path::{Path, PathBuf};

/// Runs `data` through the harness of `target` (a name of [`crate::TARGETS`]); `false`
/// if there is no such target. A failed check panics, as it crashes the fuzz target.
pub fn run_target(target: &str, data: &[u8]) -> bool {
    match target {
        "proto_decode" => crate::proto::run(data),
        "device_queue" => {
            crate::device::run(&crate::device::DeviceInput::from_bytes(data));
        }
        "pool_model" => crate::pool::run(&crate::pool::PoolInput::from_bytes(data)),
        "guest_driver" => {
            crate::driver::run(&crate::driver::DriverInput::from_bytes(data));
        }
        "vfio_errno" => {
            crate::vfio::run(&crate::vfio::VfioInput::from_bytes(data));
        }
        "guest_events" => {
            crate::events::run(&crate::events::EventsInput::from_bytes(data));
        }
        "snapshot_restore" => {
            crate::snapshot::run(&crate::snapshot::SnapshotInput::from_bytes(data));
        }
        _ => return false,
    }
    true
}

/// `fuzz/regressions/`.
pub fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../regressions")
}

/// Every regression input: `(target, file)`, sorted.
pub fn regression_inputs(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut inputs = Vec::new();
    if !dir.exists() {
        return Ok(inputs);
    }
    for target in std::fs::read_dir(dir)? {
        let target = target?;
        if !target.file_type()?.is_dir() {
            continue;
        }
        let name = target.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(target.path())? {
            let file = file?;
            if file.file_type()?.is_file() {
                inputs.push((name.clone(), file.path()));
            }
        }
    }
    inputs.sort();
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every crash ever found, replayed: each must pass its harness now.
    #[test]
    fn every_regression_input_passes_its_harness() {
        let inputs = regression_inputs(&regressions_dir()).unwrap();
        for (target, file) in &inputs {
            let data = std::fs::read(file).unwrap();
            println!("replaying {}", file.display());
            assert!(
                run_target(target, &data),
                "{}: no fuzz target {target} (fuzz/regressions/<target>/<file>)",
                file.display()
            );
        }
    }

    #[test]
    fn the_dispatcher_knows_every_target_and_nothing_else() {
        for (target, seeds) in crate::all_seeds() {
            for seed in seeds {
                assert!(run_target(target, &seed), "{target}");
            }
        }
        assert!(!run_target("no_such_target", &[]));
    }

    #[test]
    fn inputs_are_found_by_target_folder() {
        let dir = std::env::temp_dir().join(format!("pvirq-regressions-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pool_model")).unwrap();
        std::fs::write(dir.join("pool_model/crash-1"), [1, 2]).unwrap();
        std::fs::write(dir.join("README"), "not an input").unwrap();
        let found = regression_inputs(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "pool_model");
    }
}
