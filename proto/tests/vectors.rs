//! Checks the implementation against every test vector in `spec/vectors/` (spec §7).
//!
//! The vectors come from an encoder written from the spec alone, so each check here is a
//! check of the Rust code against the document.

use pvirq_proto::{
    CompatMsi, Config, DeliveryMode, Error, Event, MsiMessage, Negotiated, RESPONSE_HEADER_LEN,
    RemappableMsi, Request, Response, feature,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct Entry {
    file: String,
    name: String,
    fields: BTreeMap<String, String>,
}

impl Entry {
    fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("{}:[{}] has no `{key}`", self.file, self.name))
    }

    fn opt(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    fn bytes(&self) -> Vec<u8> {
        self.get("bytes")
            .split_whitespace()
            .map(|pair| u8::from_str_radix(pair, 16).expect("hex byte"))
            .collect()
    }

    fn number(&self, key: &str) -> u64 {
        let text = self.get(key);
        match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        }
        .unwrap_or_else(|_| panic!("{}:[{}] `{key}` is not a number", self.file, self.name))
    }

    fn what(&self) -> String {
        format!("{}:[{}]", self.file, self.name)
    }

    /// The features the entry is decoded under (spec §7): a number, or feature names
    /// separated by `|`, `,` or blanks (`info`, `PVIRQ_F_INFO`, ...). Without the key, a
    /// version-1 vector: [`feature::V1`].
    fn features(&self) -> u64 {
        let Some(text) = self.opt("features") else {
            return feature::V1;
        };
        if text.starts_with(|c: char| c.is_ascii_digit()) {
            return self.number("features");
        }
        text.split(['|', ',', ' '])
            .filter(|name| !name.is_empty())
            .map(|name| {
                feature_named(name)
                    .unwrap_or_else(|| panic!("{}: unknown feature `{name}`", self.what()))
            })
            .fold(0, |acc, bit| acc | bit)
    }
}

/// A feature bit by its spec name, with or without the `PVIRQ_F_`/`VIRTIO_F_` prefix.
fn feature_named(name: &str) -> Option<u64> {
    let lower = name.to_ascii_lowercase();
    let short = lower
        .strip_prefix("pvirq_f_")
        .or_else(|| lower.strip_prefix("virtio_f_"))
        .unwrap_or(&lower)
        .replace('-', "_");
    Some(match short.as_str() {
        "v1" => feature::V1,
        "all" => feature::ALL,
        "msi" => feature::MSI,
        "msix" => feature::MSIX,
        "ims" => feature::IMS,
        "pasid" => feature::PASID,
        "retarget" => feature::RETARGET,
        "apic_id" => feature::APIC_ID,
        "info" => feature::INFO,
        "posted" => feature::POSTED,
        "parked" => feature::PARKED,
        "events" => feature::EVENTS,
        "spread" => feature::SPREAD,
        "contiguous" => feature::CONTIGUOUS,
        "index_list" => feature::INDEX_LIST,
        "version_1" => feature::VERSION_1,
        "access_platform" => feature::ACCESS_PLATFORM,
        _ => return None,
    })
}

fn vector_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors")
}

fn parse(file: &str, text: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut last_key: Option<String> = None;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            let fields = BTreeMap::new();
            entries.push(Entry {
                file: file.to_owned(),
                name: name.to_owned(),
                fields,
            });
            last_key = None;
            continue;
        }
        let entry = entries
            .last_mut()
            .unwrap_or_else(|| panic!("{file}:{number}: no entry"));
        if line.starts_with(char::is_whitespace) {
            let key = last_key.as_ref().expect("continuation without a key");
            let value = entry.fields.get_mut(key).expect("key present");
            value.push(' ');
            value.push_str(trimmed);
            continue;
        }
        let (key, value) = trimmed
            .split_once('=')
            .unwrap_or_else(|| panic!("{file}:{}: expected `key = value`", number + 1));
        let key = key.trim().to_owned();
        entry.fields.insert(key.clone(), value.trim().to_owned());
        last_key = Some(key);
    }
    entries
}

fn all_entries() -> Vec<Entry> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(vector_dir())
        .expect("spec/vectors exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "vec"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "expected the six vector files, found {files:?}"
    );
    files
        .iter()
        .flat_map(|path| {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(path).expect("readable vector file");
            let entries = parse(&name, &text);
            assert!(!entries.is_empty(), "{name} has no entries");
            entries
        })
        .collect()
}

/// The vector format's reason word for a decoding error (spec/vectors/README.md).
fn reason(error: Error) -> &'static str {
    match error {
        Error::TooShort { .. } | Error::LengthMismatch { .. } => "length",
        Error::ReservedNotZero(_) | Error::MsiReservedBits | Error::EventFieldNotZero { .. } => {
            "reserved"
        }
        Error::NotNegotiated(_) => "feature",
        Error::UnknownMessageFormat(_) => "message-format",
        Error::UnknownGrantMode(_) => "mode",
        Error::InvalidPasid(_) => "pasid",
        Error::UnknownEventType(_) => "event-type",
        Error::UnknownKind(_) => "kind",
        Error::UnknownResource(_) => "resource",
        Error::AmbiguousDevice(_) => "device",
        Error::InvalidStatus { .. } => "status",
        Error::InvalidResponseCount(_) => "count",
        Error::UndefinedKinds(_) => "kinds",
        Error::InvalidMsiMax(_) => "msi-max",
        Error::UnknownOpcode(_) => "opcode",
        Error::NotMsiAddress(_) => "window",
        Error::WrongMsiFormat { .. } => "format",
        Error::ReservedDeliveryMode(_) => "delivery",
        other => panic!("{other:?} is not a response or MSI decoding error"),
    }
}

fn check_request(entry: &Entry) {
    let bytes = entry.bytes();
    let max_batch = u16::try_from(entry.number("max_batch")).expect("max_batch fits u16");
    let decoded = Request::decode(&bytes, Negotiated::new(max_batch, entry.features()));
    match (entry.opt("text"), entry.opt("refusal")) {
        (Some(text), None) => {
            let request = decoded.unwrap_or_else(|e| panic!("{}: {e}", entry.what()));
            assert_eq!(request.to_string(), text, "{}", entry.what());
            let mut out = vec![0; request.encoded_len()];
            assert_eq!(
                request.encode(&mut out),
                Ok(bytes.len()),
                "{}",
                entry.what()
            );
            assert_eq!(out, bytes, "{}: re-encoding differs", entry.what());
        }
        (None, Some(refusal)) => {
            let error = decoded.expect_err(&entry.what());
            assert_eq!(
                error.refusal().to_string(),
                refusal,
                "{}: {error}",
                entry.what()
            );
        }
        _ => panic!(
            "{}: needs exactly one of `text` and `refusal`",
            entry.what()
        ),
    }
}

fn check_response(entry: &Entry) {
    let bytes = entry.bytes();
    let decoded = Response::decode(&bytes, entry.features());
    // A driver that copies the header apart from the body gets the same answer.
    if let Some((header, body)) = bytes.split_first_chunk::<RESPONSE_HEADER_LEN>() {
        let split = Response::decode_parts(header, body, entry.features());
        assert_eq!(split, decoded, "{}: decoded in two parts", entry.what());
    }
    match (entry.opt("text"), entry.opt("reject")) {
        (Some(text), None) => {
            let response = decoded.unwrap_or_else(|e| panic!("{}: {e}", entry.what()));
            assert_eq!(response.to_string(), text, "{}", entry.what());
            let mut out = vec![0; response.encoded_len()];
            assert_eq!(
                response.encode(&mut out),
                Ok(bytes.len()),
                "{}",
                entry.what()
            );
            assert_eq!(out, bytes, "{}: re-encoding differs", entry.what());
        }
        (None, Some(why)) => {
            let error = decoded.expect_err(&entry.what());
            assert_eq!(reason(error), why, "{}: {error}", entry.what());
        }
        _ => panic!("{}: needs exactly one of `text` and `reject`", entry.what()),
    }
}

fn check_event(entry: &Entry) {
    let bytes = entry.bytes();
    let decoded = Event::decode(&bytes);
    match (entry.opt("text"), entry.opt("reject")) {
        (Some(text), None) => {
            let event = decoded.unwrap_or_else(|e| panic!("{}: {e}", entry.what()));
            assert_eq!(event.to_string(), text, "{}", entry.what());
            let mut out = vec![0; bytes.len()];
            assert_eq!(event.encode(&mut out), Ok(bytes.len()), "{}", entry.what());
            assert_eq!(out, bytes, "{}: re-encoding differs", entry.what());
        }
        (None, Some(why)) => {
            let error = decoded.expect_err(&entry.what());
            assert_eq!(reason(error), why, "{}: {error}", entry.what());
        }
        _ => panic!("{}: needs exactly one of `text` and `reject`", entry.what()),
    }
}

fn message(entry: &Entry) -> MsiMessage {
    let data = u32::try_from(entry.number("data")).expect("data fits u32");
    MsiMessage {
        address: entry.number("address"),
        data,
    }
}

fn check_remappable(entry: &Entry) {
    let msg = message(entry);
    if let Some(why) = entry.opt("reject") {
        let error = RemappableMsi::decode(msg).expect_err(&entry.what());
        assert_eq!(reason(error), why, "{}", entry.what());
        return;
    }
    let handle = u16::try_from(entry.number("handle")).expect("16-bit handle");
    let subhandle = match entry.get("subhandle") {
        "none" => None,
        _ => Some(u16::try_from(entry.number("subhandle")).expect("16-bit subhandle")),
    };
    let fields = RemappableMsi { handle, subhandle };
    assert_eq!(fields.message(), msg, "{}", entry.what());
    assert_eq!(RemappableMsi::decode(msg), Ok(fields), "{}", entry.what());
    assert_eq!(
        u64::from(fields.irte_index()),
        entry.number("irte"),
        "{}",
        entry.what()
    );
}

fn check_compat(entry: &Entry) {
    let msg = message(entry);
    if let Some(why) = entry.opt("reject") {
        let error = CompatMsi::decode(msg).expect_err(&entry.what());
        assert_eq!(reason(error), why, "{}", entry.what());
        return;
    }
    let delivery = match entry.get("delivery") {
        "fixed" => DeliveryMode::Fixed,
        "lowest-priority" => DeliveryMode::LowestPriority,
        "smi" => DeliveryMode::Smi,
        "nmi" => DeliveryMode::Nmi,
        "init" => DeliveryMode::Init,
        "extint" => DeliveryMode::ExtInt,
        other => panic!("{}: unknown delivery {other}", entry.what()),
    };
    let fields = CompatMsi {
        dest_id: u32::try_from(entry.number("dest")).expect("32-bit destination"),
        vector: u8::try_from(entry.number("vector")).expect("8-bit vector"),
        delivery,
        logical: entry.number("logical") == 1,
        redirection_hint: entry.number("rh") == 1,
        level_triggered: entry.number("level") == 1,
    };
    assert_eq!(fields.message(), msg, "{}", entry.what());
    assert_eq!(CompatMsi::decode(msg), Ok(fields), "{}", entry.what());
}

fn check_config(entry: &Entry) {
    let bytes = entry.bytes();
    let config: Config = bytemuck::pod_read_unaligned(&bytes[..Config::SIZE]);
    assert_eq!(bytes.len(), Config::SIZE, "{}", entry.what());
    let text = format!(
        "version={} max_batch={} num_devices={} vm_quota={} num_vcpus={}",
        config.version.get(),
        config.max_batch.get(),
        config.num_devices.get(),
        config.vm_quota.get(),
        config.num_vcpus.get()
    );
    assert_eq!(text, entry.get("text"), "{}", entry.what());
}

#[test]
fn every_vector_in_spec_vectors_holds() {
    let entries = all_entries();
    let mut seen = BTreeMap::<&str, usize>::new();
    for entry in &entries {
        let kind = entry.get("type");
        match kind {
            "request" => check_request(entry),
            "response" => check_response(entry),
            "msi-remappable" => check_remappable(entry),
            "msi-compat" => check_compat(entry),
            "config" => check_config(entry),
            "event" => check_event(entry),
            other => panic!("{}: unknown type {other}", entry.what()),
        }
        *seen.entry(kind).or_default() += 1;
    }
    for kind in [
        "request",
        "response",
        "msi-remappable",
        "msi-compat",
        "config",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} vectors"
        );
    }
    println!("checked {} vectors: {seen:?}", entries.len());
}

#[test]
fn malformed_request_vectors_reach_every_decode_refusal_status() {
    use pvirq_proto::Status;
    let statuses: std::collections::BTreeSet<Status> = all_entries()
        .iter()
        .filter(|e| e.get("type") == "request" && e.opt("refusal").is_some())
        .map(|e| {
            let bytes = e.bytes();
            let max_batch = u16::try_from(e.number("max_batch")).expect("u16");
            Request::decode(&bytes, Negotiated::new(max_batch, e.features()))
                .expect_err(&e.what())
                .refusal()
                .status()
        })
        .collect();
    let expected = [
        Status::BadRequest,
        Status::Unsupported,
        Status::IndexOutOfRange,
        Status::InvalidTarget,
        Status::BatchTooLarge,
    ];
    for status in expected {
        assert!(
            statuses.contains(&status),
            "no malformed vector yields {status}"
        );
    }
}
