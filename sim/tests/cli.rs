//! The `pvirq-sim` binary: exit status, tables, JSON, and errors, as a user sees them.

use std::path::PathBuf;
use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pvirq-sim"))
        .args(args)
        .output()
        .expect("pvirq-sim runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scenario file in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("pvirq-sim-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const DEFAULT: &str = include_str!("../scenarios/default.toml");

#[test]
fn no_arguments_run_the_default_scenario_and_pass() {
    let out = sim(&[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("quota left"), "{stdout}");
    assert!(stdout.contains("no-space"), "{stdout}");
    assert!(stdout.contains("host occupancy at the end"), "{stdout}");
    assert!(stdout.contains("0 failed — PASS"), "{stdout}");
}

#[test]
fn json_carries_the_same_report() {
    let out = sim(&["--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(json["expectations_failed"], 0);
    let steps = json["steps"].as_array().unwrap();
    let headers = DEFAULT.lines().filter(|l| l.trim() == "[[step]]").count();
    assert_eq!(steps.len(), headers);
    let refused: Vec<_> = steps
        .iter()
        .filter(|s| s["status"] == "no-space")
        .map(|s| s["refusal"]["resource"].as_str().unwrap())
        .collect();
    // Act 1's host-vector; the AMD table, fragmentation and the guest that fell back.
    assert_eq!(
        refused,
        ["host-vector", "irte", "slots-fragmented", "host-vector"]
    );
    assert!(json["final_host"]["vectors_used"].as_u64().unwrap() > 0);
    // What the extensions add is in the JSON too.
    let vm = |name: &str| {
        json["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(vm("hpc")["apic_ids"], serde_json::json!([0, 2, 4, 6]));
    assert_eq!(vm("db")["features"], serde_json::json!([]));
    assert_eq!(vm("edge")["host"], "host-b");
    assert_eq!(json["destinations"][0]["name"], "host-b");
    let migration = steps
        .iter()
        .find_map(|s| s["migration"].as_object())
        .expect("a migrate step");
    assert_eq!(migration["migrated"], true);
    assert!(migration["fates"].as_array().unwrap().len() > 1);
    let types: Vec<&str> = steps
        .iter()
        .flat_map(|s| s["events"].as_array().unwrap())
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for t in [
        "limits",
        "device-added",
        "device-removed",
        "available",
        "reprogram",
        "revoke",
    ] {
        assert!(types.contains(&t), "{t} in {types:?}");
    }
    assert!(
        steps
            .iter()
            .flat_map(|s| s["grants"].as_array().unwrap())
            .any(|g| g["mode"] == "posted")
    );
    assert!(steps.iter().any(|s| s["query"]["format"] == "amd-remapped"));
}

#[test]
fn the_text_report_shows_what_the_extensions_add() {
    let out = sim(&[]);
    let stdout = text(&out.stdout);
    for shown in [
        "destination host-b:",
        "VM hpc: 4 vCPUs (APIC IDs 0 2 4 6)",
        "vCPU3/APIC6:0x40",
        "0000:6a:01.0 pasid 5",
        "amd-remapped",
        "posted, parked: no target yet",
        "slots-fragmented",
        "#1 limits: nvme2 share 9",
        "device-added: vf1",
        "reprogrammed in the table",
        "masked and forgotten",
        "migrate → host-b",
        "the source released",
        "host-b: ",
        "on host-b",
    ] {
        assert!(stdout.contains(shown), "{shown:?} not in:\n{stdout}");
    }
}

#[test]
fn an_unmet_expectation_exits_non_zero_and_names_it() {
    let file = TempFile::new(
        "wrong.toml",
        &DEFAULT.replace("granted = 17,", "granted = 16,"),
    );
    let out = sim(&["--scenario", file.arg()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("granted expected 16, got 17"), "{stderr}");
    assert!(text(&out.stdout).contains("FAIL"));
}

#[test]
fn a_bad_file_exits_2_naming_file_line_and_field() {
    let file = TempFile::new("bad.toml", &DEFAULT.replacen("vcpus = 4", "vcpus = -4", 1));
    let out = sim(&["--scenario", file.arg()]);
    assert_eq!(out.status.code(), Some(2));
    let line = DEFAULT.lines().position(|l| l == "vcpus = 4").unwrap() + 1;
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("bad.toml:{line}:")), "{stderr}");
    assert!(stderr.contains("field `vcpus`"), "{stderr}");
    let missing = sim(&["--scenario", "/nonexistent/pvirq.toml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("cannot read"));
}

/// The number after `label` in `text`, e.g. `delivered 41`.
fn figure_after(text: &str, label: &str) -> u64 {
    let rest = &text[text
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in {text}"))..];
    rest[label.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{label}`"))
}

#[test]
fn kvm_runs_a_version_1_scenario_on_real_vcpus_or_says_why_not() {
    let v1 = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/v1.toml");
    if !pvirq_sim::kvm::require_kvm_or_skip() {
        let out = sim(&["--kvm", "--scenario", v1]);
        let stderr = text(&out.stderr);
        assert!(stderr.contains("needs /dev/kvm"), "{stderr}");
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        return;
    }
    let out = sim(&["--kvm", "--scenario", v1]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("interrupts fired"))
        .unwrap_or_else(|| panic!("no summary line in {stdout}"));
    let delivered = figure_after(summary, "delivered");
    // Every interrupt the host delivered was counted by the vCPU it was meant for.
    assert!(delivered > 0, "{summary}");
    assert_eq!(
        figure_after(summary, "observed in guests"),
        delivered,
        "{summary}"
    );
}

#[test]
fn kvm_runs_the_default_scenario_or_says_which_part_the_guest_image_cannot_do_yet() {
    if !pvirq_sim::kvm::require_kvm_or_skip() {
        return;
    }
    let out = sim(&["--kvm"]);
    if out.status.success() {
        assert!(text(&out.stdout).contains("0 failed — PASS"));
        return;
    }
    // Refused before anything runs, naming what the guest image lacks: never skipped.
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the guest image cannot"), "{stderr}");
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn print_default_prints_the_embedded_scenario() {
    let out = sim(&["--print-default"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), DEFAULT);
}

#[test]
fn every_shipped_scenario_passes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let mut ran = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = sim(&["--scenario", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}{}",
                path.display(),
                text(&out.stdout),
                text(&out.stderr)
            );
            ran += 1;
        }
    }
    assert!(ran >= 3);
}

#[test]
fn the_format_documentation_shows_small_toml_verbatim() {
    let readme = include_str!("../scenarios/README.md");
    let example = readme
        .rsplit_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("README ends with a toml example");
    assert_eq!(example, include_str!("../scenarios/small.toml"));
}
