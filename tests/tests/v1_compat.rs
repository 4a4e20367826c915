//! A version-1 driver against the device that implements the extensions (spec §2.2
//! [DEV-24]): the same request sequence, played under version-1 feature sets, must get
//! byte-identical replies and leave the host in the same state as the version-1 device did.
//!
//! `golden/v1_replies.txt` was recorded by running this test (with `PVIRQ_BLESS_GOLDEN=1`)
//! against the host as it was before the extensions were built (commit "tests: record a
//! version-1 device's replies"), so it is the version-1 device's answer, not the new
//! one's. The sequence is generated from a fixed seed and covers every opcode and kind,
//! every refusal a version-1 driver can get (index, target, quota, slot, IRTE, host-vector
//! and route shortages, reply space, unknown devices) and requests carrying the bytes the
//! extensions give meaning to (ALLOC flags 2–4, `num_targets`, FREE and RETARGET flags,
//! index lists), on hosts that can post and on AMD-format devices, where a version-1 driver
//! must still get remapped grants and see host vectors counted.

use pvirq_host::model::{ModelConfig, ModelHost, Placement, RemapConfig, VectorConfig};
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::{ApicIds, BufferSink, Vm, VmConfig};
use pvirq_proto::{
    Alloc, IndexRange, IndexSpec, Kind, Operation, Outcome, Refusal, Request, Response, Retarget,
    Target, Targeting, feature,
};
use pvirq_tests::setup::{dev, irtes_used};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

/// splitmix64: a fixed sequence, the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One scenario: a host, a VM on it, the version-1 feature set its driver negotiated.
struct Scenario {
    name: &'static str,
    seed: u64,
    steps: usize,
    features: u64,
    posted_host: bool,
    amd: bool,
    vtd_max_msi_block: u32,
    apic_ids: ApicIds,
    quota: u32,
    irtes: u32,
    vectors_per_cpu: u8,
    routes: u32,
}

fn build(s: &Scenario) -> (ModelHost, Vm) {
    let host = ModelHost::new(&ModelConfig {
        remap: RemapConfig {
            units: 1,
            entries_per_unit: s.irtes,
        },
        vectors: VectorConfig {
            cpus: 2,
            first: 0x20,
            end: 0x20 + s.vectors_per_cpu,
            reserved: Vec::new(),
        },
        posted: s.posted_host,
        vtd_max_msi_block: s.vtd_max_msi_block,
        ..ModelConfig::default()
    })
    .unwrap();
    if s.amd {
        host.place_as(0x102, Placement::Amd { entries: 512 })
            .unwrap();
    }
    let config = VmConfig {
        quota: s.quota,
        num_vcpus: 4,
        max_batch: 16,
        devices: vec![
            dev(0x100, 8, 16, 32),
            dev(0x101, 4, 0, 0),
            dev(0x102, 8, 8, 16),
        ],
        apic_ids: s.apic_ids.clone(),
    };
    let routes = MemoryRoutes::with_range(24, s.routes).unwrap();
    let vm = host.create_vm(config, Box::new(routes)).unwrap();
    vm.set_features(s.features);
    (host, vm)
}

fn kind(r: &mut Rng) -> Kind {
    Kind::ALL[r.below(3) as usize]
}

fn targets(r: &mut Rng, n: usize) -> Vec<Target> {
    (0..n)
        .map(|_| {
            // vCPU 4 and 5 do not exist: INVALID_TARGET now and then.
            let vcpu = if r.chance(6) {
                4 + r.below(2)
            } else {
                r.below(4)
            } as u32;
            Target::new(vcpu, 0x20 + r.below(0xE0) as u8)
        })
        .collect()
}

fn pow2_upto(r: &mut Rng, max_log: u64) -> u16 {
    1 << r.below(max_log + 1)
}

/// A run of granted indices of `device` (or a random one when it holds none of a kind).
fn granted_run(r: &mut Rng, vm: &Vm, device: u32) -> IndexRange {
    let grants = vm.grants(device);
    if grants.is_empty() || r.chance(20) {
        let kind = kind(r);
        return IndexRange {
            kind,
            first: r.below(20) as u32,
            count: 1 + r.below(4) as u16,
        };
    }
    let (kind, index, _) = grants[r.below(grants.len() as u64) as usize];
    if kind == Kind::Msi {
        let block = grants.iter().filter(|g| g.0 == Kind::Msi).count() as u16;
        let count = if r.chance(80) {
            block
        } else {
            1 + r.below(8) as u16
        };
        let first = if r.chance(85) { 0 } else { index };
        return IndexRange { kind, first, count };
    }
    IndexRange {
        kind,
        first: index,
        count: 1 + r.below(3) as u16,
    }
}

/// Encodes `request`; `None` if the encoder refuses the shape.
fn encode(request: &Request<'_>) -> Option<Vec<u8>> {
    let mut bytes = vec![0u8; request.encoded_len()];
    let len = request.encode(&mut bytes).ok()?;
    bytes.truncate(len);
    Some(bytes)
}

/// The next request's bytes, and the reply space the driver gives it.
fn next_request(r: &mut Rng, vm: &Vm) -> Vec<u8> {
    let device = if r.chance(4) { 3 } else { r.below(3) as u32 };
    let tag = r.next();
    let roll = r.below(100);
    let t;
    let op = if roll < 10 {
        Operation::Query
    } else if roll < 55 {
        let kind = kind(r);
        let (min, max) = if kind == Kind::Msi {
            let max = pow2_upto(r, 4);
            (max >> r.below(u64::from(max.trailing_zeros()) + 1), max)
        } else {
            let min = 1 + r.below(4) as u16;
            (min, min + r.below(6) as u16)
        };
        let index = if r.chance(65) {
            IndexSpec::Any
        } else if kind == Kind::Msi {
            IndexSpec::At(0)
        } else {
            IndexSpec::At(r.below(20) as u32)
        };
        let pasid = (kind == Kind::Ims && r.chance(40)).then(|| r.below(1 << 20) as u32);
        t = targets(r, usize::from(max));
        Operation::Alloc(Alloc {
            kind,
            index,
            min,
            max,
            pasid,
            targeting: Targeting::PerVector,
            targets: &t,
        })
    } else if roll < 80 {
        Operation::Free(granted_run(r, vm, device).into())
    } else if roll < 95 {
        let range = granted_run(r, vm, device);
        t = targets(r, usize::from(range.count));
        return encode(&Request {
            device,
            tag,
            op: Operation::Retarget(Retarget::run(range, &t)),
        })
        .unwrap();
    } else {
        Operation::Reset
    };
    encode(&Request { device, tag, op }).unwrap()
}

/// Bytes a version-1 driver may send that an extension gives meaning to, or that are
/// simply malformed: a valid request, then one mutation.
fn mutate(r: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    let opcode = bytes[0];
    match r.below(10) {
        // ALLOC flags PARKED, SPREAD, ANY_CONTIGUOUS and the undefined bits; FREE and
        // RETARGET flags LIST and PARK.
        0..=2 if bytes.len() >= 32 => bytes[17] |= 1 << (2 + r.below(6)),
        3 if bytes.len() >= 32 && opcode != 2 => bytes[17] = 1 + r.below(3) as u8,
        // `num_targets` (version 1: reserved).
        4 if bytes.len() >= 32 => bytes[18] = 1 + r.below(4) as u8,
        // An index list appended to a FREE, or a target too many.
        5 => bytes.extend_from_slice(&[0, 0, 0, 0]),
        6 => {
            let cut = r.below(bytes.len() as u64) as usize;
            bytes.truncate(cut);
        }
        7 => bytes[1 + r.below(3) as usize] = 1,
        8 => bytes[0] = [0, 6, 0xFF][r.below(3) as usize],
        _ if bytes.len() >= 40 => {
            // A target's reserved bytes or a vector below 0x20.
            let at = 32 + 8 * r.below(((bytes.len() - 32) / 8) as u64) as usize;
            if r.chance(50) {
                bytes[at + 5] = 1;
            } else {
                bytes[at + 4] = 0x1F;
            }
        }
        _ if bytes.len() > 16 => bytes[16] = [0, 4, 9][r.below(3) as usize],
        _ => bytes[4] = 7,
    }
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What the host holds: VM held count, live routes, host vectors, IRTEs, and every grant's
/// mode (a version-1 driver's grants are remapped, whatever the host can do).
fn state(host: &ModelHost, vm: &Vm) -> String {
    let occ = vm.occupancy();
    let posted = (0..3)
        .flat_map(|d| vm.grants(d))
        .filter(|(_, _, r)| r.mode != pvirq_proto::GrantMode::Remapped)
        .count();
    format!(
        "held={} routes={} vectors={} irtes={} posted={posted}",
        occ.held,
        occ.routes,
        host.occupancy().vectors_used,
        irtes_used(host)
    )
}

/// A short name for a reply: `ok`, or the refusal's status and detail.
fn label(reply: &[u8]) -> String {
    match Response::decode(reply, feature::V1).map(|r| r.outcome) {
        Ok(Outcome::Refused(Refusal::NoSpace { resource, .. })) => format!("no-space:{resource}"),
        Ok(Outcome::Refused(
            r @ (Refusal::BadRequest { field, .. }
            | Refusal::Unsupported { field }
            | Refusal::InvalidTarget { field, .. }),
        )) => format!("{}:{field}", r.status()),
        Ok(Outcome::Refused(r)) => r.status().to_string(),
        Ok(_) => "ok".into(),
        Err(e) => format!("malformed {e:?}"),
    }
}

/// Plays `s` and returns one line per step (request, reply, state), and the label of every
/// reply.
fn play(s: &Scenario, labels: &mut BTreeSet<String>) -> Vec<String> {
    let (host, vm) = build(s);
    let mut r = Rng(s.seed);
    let mut lines = Vec::with_capacity(s.steps);
    for step in 0..s.steps {
        if r.chance(1) {
            let freed = vm.reset_all();
            lines.push(format!(
                "{} {step}: reset_all {freed} {}",
                s.name,
                state(&host, &vm)
            ));
            continue;
        }
        let mut request = next_request(&mut r, &vm);
        if r.chance(18) {
            request = mutate(&mut r, request);
        }
        let needed = Request::decode(&request, pvirq_proto::Negotiated::new(16, s.features))
            .map(|q| q.max_response_len(s.features))
            .unwrap_or(24);
        let capacity = if r.chance(5) {
            r.below(needed as u64 + 1) as usize
        } else {
            needed
        };
        let mut sink = BufferSink::new(capacity);
        let handled = vm.handle(&request, &mut sink);
        let reply = if handled.used_len == 0 {
            labels.insert("silent".into());
            "-".to_string()
        } else {
            labels.insert(label(sink.bytes()));
            hex(sink.bytes())
        };
        lines.push(format!(
            "{} {step}: {} -> {reply} {}",
            s.name,
            hex(&request),
            state(&host, &vm)
        ));
        vm.check_invariants().unwrap();
    }
    // Every grant still held delivers where its record says, through the host.
    for d in 0..3u32 {
        let rid = 0x100 + d as u16;
        for (kind, index, record) in vm.grants(d) {
            let delivery = host.fire(rid, record.message).map(|d| d.to());
            lines.push(format!("{} fire {d} {kind} {index}: {delivery:?}", s.name));
        }
    }
    lines
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "v1",
            seed: 1,
            steps: 160,
            features: feature::V1,
            posted_host: false,
            amd: false,
            vtd_max_msi_block: 0,
            apic_ids: ApicIds::Identity,
            quota: 24,
            irtes: 96,
            vectors_per_cpu: 24,
            routes: 44,
        },
        Scenario {
            name: "posting-host",
            seed: 2,
            steps: 160,
            features: feature::V1,
            posted_host: true,
            amd: true,
            vtd_max_msi_block: 4,
            apic_ids: ApicIds::Table(vec![0, 2, 4, 6]),
            quota: 64,
            irtes: 16,
            vectors_per_cpu: 40,
            routes: 60,
        },
        Scenario {
            name: "v1-subset",
            seed: 3,
            steps: 120,
            features: feature::VERSION_1 | feature::MSIX | feature::IMS,
            posted_host: true,
            amd: false,
            vtd_max_msi_block: 0,
            apic_ids: ApicIds::Table(vec![1, 3, 300, 7]),
            quota: 64,
            irtes: 96,
            vectors_per_cpu: 8,
            routes: 60,
        },
        Scenario {
            name: "few-routes",
            seed: 4,
            steps: 100,
            features: feature::V1,
            posted_host: false,
            amd: true,
            vtd_max_msi_block: 0,
            apic_ids: ApicIds::Identity,
            quota: 64,
            irtes: 128,
            vectors_per_cpu: 40,
            routes: 14,
        },
    ]
}

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1_replies.txt")
}

#[test]
fn a_version_1_driver_gets_the_version_1_device_replies_byte_for_byte() {
    let mut labels = BTreeSet::new();
    let lines: Vec<String> = scenarios()
        .iter()
        .flat_map(|s| play(s, &mut labels))
        .collect();
    let text = lines.join("\n") + "\n";
    if std::env::var_os("PVIRQ_BLESS_GOLDEN").is_some() {
        std::fs::write(golden_path(), &text).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(golden_path()).unwrap();
    for (i, (got, want)) in text.lines().zip(golden.lines()).enumerate() {
        assert_eq!(got, want, "line {}: the reply or state differs", i + 1);
    }
    assert_eq!(text.lines().count(), golden.lines().count());
    // The sequence exercises what it claims to: every answer a version-1 driver can get,
    // including to the bytes the extensions give meaning to.
    let expected = [
        "ok",
        "silent",
        "no-space:vm-quota",
        "no-space:device-slots",
        "no-space:irte",
        "no-space:host-vector",
        "no-space:guest-route",
        "bad-request:flags",
        "bad-request:body-reserved",
        "bad-request:length",
        "bad-request:header-reserved",
        "bad-request:target-reserved",
        "invalid-target:target-vcpu",
        "invalid-target:target-vector",
        "unsupported:opcode",
        "unsupported:kind",
        "no-device",
        "index-in-use",
        "index-out-of-range",
        "not-granted",
        "response-too-small",
    ];
    let missing: Vec<_> = expected.iter().filter(|l| !labels.contains(**l)).collect();
    assert!(
        missing.is_empty(),
        "never answered: {missing:?}; saw {labels:?}"
    );
}
