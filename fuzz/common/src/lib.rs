//! Inputs and harnesses of pvirq's fuzz targets (rust-vmm's `fuzz/common` layout): each
//! input is a plain struct read from the fuzzer's bytes through `arbitrary`, and written
//! back to bytes for the seed corpora, which the tests of this crate generate
//! ([`write_corpus`]). The harnesses live here too, so `cargo test` runs every seed
//! through them on the stable toolchain.
#![deny(missing_docs)]

pub mod device;
pub mod driver;
pub mod events;
pub mod memory;
pub mod pool;
pub mod proto;
pub mod regression;
pub mod snapshot;
pub mod vfio;
pub mod wire;

use std::path::Path;
use wire::Wire;

/// Names of the fuzz targets, as `cargo fuzz run` takes them.
pub const TARGETS: [&str; 7] = [
    "proto_decode",
    "device_queue",
    "pool_model",
    "guest_driver",
    "vfio_errno",
    "snapshot_restore",
    "guest_events",
];

/// The `proto_decode` selector of version 1's features: bits 0–4 and `VERSION_1` (bit 15).
pub const PROTO_V1_SELECTOR: u16 = 0x801F;
/// The `proto_decode` selector of every feature: bits 0–12, `ACCESS_PLATFORM` (bit 13) and
/// `VERSION_1` (bit 15).
pub const PROTO_ALL_SELECTOR: u16 = 0xBFFF;

fn proto_seed(selector: u16, message: &[u8]) -> Vec<u8> {
    [&64u16.to_le_bytes()[..], &selector.to_le_bytes(), message].concat()
}

/// Seed files of `proto_decode`: a 2-byte `max_batch`, a 2-byte feature selector (see the
/// target), then a request, a response or an event: version 1's under version 1's
/// features, the extensions' under every feature.
pub fn proto_seeds() -> Vec<Vec<u8>> {
    use pvirq_proto::{
        Event, EventBody, GrantInfo, GrantMode, GrantSlice, Kind, MsiMessage, Outcome, Refusal,
        Resource, Response,
    };
    let mut seeds: Vec<Vec<u8>> = device::sample_requests()
        .iter()
        .map(|r| proto_seed(PROTO_V1_SELECTOR, r))
        .collect();
    seeds.extend(
        device::sample_extended_requests()
            .iter()
            .map(|r| proto_seed(PROTO_ALL_SELECTOR, r)),
    );
    let refused = Response {
        opcode: 2,
        device: 0,
        tag: 0x99,
        outcome: Outcome::Refused(Refusal::NoSpace {
            resource: Resource::Irte,
            available: 2,
        }),
    };
    let grants = [GrantInfo::new(
        3,
        MsiMessage {
            address: 0xfee0_0078,
            data: 0,
        },
        GrantMode::Posted,
    )
    .with_parked(true)
    .with_pasid(Some(9))];
    let granted = Response {
        opcode: 2,
        device: 0,
        tag: 0x99,
        outcome: Outcome::Allocated {
            grants: GrantSlice::Info(&grants),
            quota_remaining: 7,
        },
    };
    for (selector, response) in [(PROTO_V1_SELECTOR, refused), (PROTO_ALL_SELECTOR, granted)] {
        let mut bytes = vec![0u8; response.encoded_len()];
        if let Ok(n) = response.encode(&mut bytes) {
            bytes.truncate(n);
            seeds.push(proto_seed(selector, &bytes));
        }
    }
    let event = Event {
        sequence: 1,
        body: EventBody::Reprogram {
            device: 0,
            kind: Kind::MsiX,
            index: 3,
            message: MsiMessage {
                address: 0xfee0_0098,
                data: 0,
            },
            mode: GrantMode::Remapped,
        },
    };
    let mut bytes = [0u8; pvirq_proto::EVENT_LEN];
    if event.encode(&mut bytes).is_ok() {
        seeds.push(proto_seed(PROTO_ALL_SELECTOR, &bytes));
    }
    seeds
}

/// Every target's seeds, as `(target, files)`.
pub fn all_seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    vec![
        ("proto_decode", proto_seeds()),
        (
            "device_queue",
            device::seeds().iter().map(Wire::to_bytes).collect(),
        ),
        (
            "pool_model",
            pool::seeds().iter().map(Wire::to_bytes).collect(),
        ),
        (
            "guest_driver",
            driver::seeds().iter().map(Wire::to_bytes).collect(),
        ),
        (
            "vfio_errno",
            vfio::seeds().iter().map(Wire::to_bytes).collect(),
        ),
        (
            "snapshot_restore",
            snapshot::seeds().iter().map(Wire::to_bytes).collect(),
        ),
        (
            "guest_events",
            events::seeds().iter().map(Wire::to_bytes).collect(),
        ),
    ]
}

/// Writes every target's seeds into `<dir>/<target>/seed-<n>` (replacing older seeds).
pub fn write_corpus(dir: &Path) -> std::io::Result<usize> {
    let mut written = 0;
    for (target, files) in all_seeds() {
        let folder = dir.join(target);
        std::fs::create_dir_all(&folder)?;
        for (i, bytes) in files.iter().enumerate() {
            std::fs::write(folder.join(format!("seed-{i}")), bytes)?;
            written += 1;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: Wire + PartialEq + std::fmt::Debug>(seeds: &[T]) {
        for seed in seeds {
            assert_eq!(&T::from_bytes(&seed.to_bytes()), seed);
        }
    }

    #[test]
    fn seed_files_decode_to_the_seeds() {
        roundtrip(&pool::seeds());
        roundtrip(&device::seeds());
        roundtrip(&driver::seeds());
        roundtrip(&vfio::seeds());
        roundtrip(&snapshot::seeds());
        roundtrip(&events::seeds());
    }

    #[test]
    fn every_seed_passes_its_harness() {
        for seed in pool::seeds() {
            pool::run(&seed);
        }
        // Seeds that stop at the first hurdle would guide the fuzzer nowhere.
        let seeds = device::seeds();
        for (i, seed) in seeds.iter().enumerate() {
            let handled = device::run(seed);
            // The last seed's ring is corrupt from the start.
            assert_eq!(
                handled.chains == 0,
                i + 1 == seeds.len(),
                "device seed {i}: {handled:?}"
            );
            // The event seed gets its events written (at least the LIMITS of the lowered
            // quota and the removed device's DEVICE_REMOVED).
            assert_eq!(
                handled.events >= 2,
                seed.extensions & (pvirq_proto::feature::EVENTS >> 5) as u16 != 0,
                "device seed {i}: {handled:?}"
            );
        }
        for (i, seed) in driver::seeds().iter().enumerate() {
            let ok = driver::run(seed);
            assert!(i == 1 || ok > 0, "driver seed {i}: no call succeeded");
        }
        // The seeds that inject faults (1, 2 and 4) see requests refused under them.
        for (i, seed) in vfio::seeds().iter().enumerate() {
            let refused = vfio::run(seed);
            let injects = seed.steps.iter().any(|s| s.fail_call + s.fail_route > 0);
            assert_eq!(injects, [1, 2, 4].contains(&i), "vfio seed {i}");
            assert_eq!(refused > 0, injects, "vfio seed {i}: {refused} refused");
        }
        // The saved states restore, through the VM and the device; the hostile ones not.
        let restored: Vec<bool> = snapshot::seeds().iter().map(snapshot::run).collect();
        assert!(restored[0], "the VM snapshot restores");
        assert!(restored[4], "the device state restores");
        assert!(
            restored[6..].iter().all(|r| !r),
            "a hostile state was restored: {restored:?}"
        );
        // The extended seeds reach every extended call.
        let extended = &driver::seeds()[4];
        assert_eq!(
            driver::run(extended),
            extended.ops.len(),
            "every extended call succeeds"
        );
        let handed: Vec<usize> = events::seeds().iter().map(events::run).collect();
        // The first seed's six events all arrive (a device added after the configuration
        // grew); the hostile seed's first; the one-buffer seed's in turn.
        assert_eq!(handed[0], 6, "{handed:?}");
        assert!(handed.iter().all(|n| *n > 0), "{handed:?}");
    }

    #[test]
    fn pool_seeds_reach_grants_and_refusals() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in pool::seeds() {
            let stats = pvirq_tests::model::run(&seed.scenario()).unwrap();
            seen.extend(stats.answers);
        }
        for wanted in [
            "ok",
            "no-device",
            "index-in-use",
            "not-granted",
            "no-space:vm-quota",
        ] {
            assert!(seen.contains(wanted), "no seed reaches {wanted}: {seen:?}");
        }
    }

    #[test]
    fn proto_seeds_decode_under_the_features_they_name() {
        use pvirq_proto::{Event, Negotiated, Request, Response, feature};
        let seeds = proto_seeds();
        let mut decoded = 0;
        for seed in &seeds {
            let (head, message) = seed.split_at(4);
            let selector = u16::from_le_bytes([head[2], head[3]]);
            let features = match selector {
                PROTO_V1_SELECTOR => feature::V1,
                PROTO_ALL_SELECTOR => feature::ALL,
                other => panic!("seed selector {other:#x}"),
            };
            let request = Request::decode(message, Negotiated::new(64, features)).is_ok();
            let response = Response::decode(message, features).is_ok();
            let event = Event::decode(message).is_ok();
            assert!(
                request || response || event,
                "seed {seed:02x?} decodes as nothing"
            );
            decoded += 1;
        }
        assert!(decoded > 12, "only {decoded} seeds");
    }

    #[test]
    fn arbitrary_bytes_never_fail_to_decode() {
        // Short, empty and odd inputs all decode (missing bytes read as 0).
        for data in [&[][..], &[1], &[1, 2, 3], &[0xFF; 64]] {
            let _ = pool::PoolInput::from_bytes(data);
            let _ = device::DeviceInput::from_bytes(data);
            let _ = driver::DriverInput::from_bytes(data);
            let _ = vfio::VfioInput::from_bytes(data);
            let _ = snapshot::SnapshotInput::from_bytes(data);
            let _ = events::EventsInput::from_bytes(data);
        }
    }

    /// The targets `cargo fuzz list` lists (the `[[bin]]`s of fuzz/Cargo.toml) are exactly
    /// [`TARGETS`], and each has seeds: a new target cannot miss its corpus, or CI's smoke
    /// run its seeds.
    #[test]
    fn every_fuzz_target_has_seeds() {
        let manifest =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
                .unwrap();
        let mut bins: Vec<&str> = manifest
            .split("[[bin]]")
            .skip(1)
            .filter_map(|section| {
                let line = section
                    .lines()
                    .find(|l| l.trim_start().starts_with("name"))?;
                line.split('"').nth(1)
            })
            .collect();
        bins.sort_unstable();
        let mut targets = TARGETS.to_vec();
        targets.sort_unstable();
        assert_eq!(bins, targets);
        let seeds = all_seeds();
        for target in TARGETS {
            let n = seeds
                .iter()
                .find(|(t, _)| *t == target)
                .map_or(0, |(_, s)| s.len());
            assert!(n > 0, "{target} has no seeds");
        }
    }

    /// `fuzz/sanitizer.sh`, which CI and the campaign build each target with, names a
    /// sanitizer for every target and for nothing else.
    #[test]
    fn every_fuzz_target_has_a_sanitizer() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sanitizer.sh");
        let sanitizer = |target: &str| {
            let out = std::process::Command::new("bash")
                .arg(&script)
                .arg(target)
                .output()
                .unwrap();
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        for target in TARGETS {
            let chosen = sanitizer(target);
            assert!(
                matches!(chosen.as_deref(), Some("address" | "none")),
                "{target}: {chosen:?}"
            );
        }
        assert_eq!(sanitizer("no_such_target"), None);
    }

    /// Generates the seed corpora into `fuzz/corpus/` (what `.ci/run` fuzzes from).
    #[test]
    fn generate_corpus() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
        let n = write_corpus(&dir).unwrap();
        assert!(n >= TARGETS.len());
        for target in TARGETS {
            assert!(
                dir.join(target).join("seed-0").exists(),
                "{target} has no seed"
            );
        }
    }
}
