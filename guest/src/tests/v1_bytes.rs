//! A version-1 driver (default options) against a device that offers every feature bit: it
//! negotiates version 1 alone and sends and accepts exactly version 1's bytes (spec §2.2
//! [DEV-24]) — the bytes the library sent before the extensions existed, and those of the
//! spec's vectors.

use super::driver::{REPLY, driver, targets};
use super::fake::{FakeDevice, Fault, memory};
use super::vectors::vector;
use crate::Error;
use pvirq_proto::{
    Alloc, Grant, GrantInfo, GrantMode, GrantSlice, IndexRange, IndexSpec, Kind, MsiMessage,
    Operation, Outcome, Response, Target, Targeting, feature,
};
use std::format;
use std::vec::Vec;

/// What the library sent for `calls` before issue 13 (commit 04f6ac4, against the old fake
/// device offering version 1): the writable bytes offered, then the request, per request.
const BEFORE: [(u32, &str); 10] = [
    (48, "01000000000000000100000000000000"),
    (48, "01000000010000000200000000000000"),
    (
        88,
        "02000000000000000300000000000000020100000000000002000400000000000000000030000000\
         010000003100000002000000320000000300000033000000",
    ),
    (
        40,
        "02000000010000000400000000000000030200000700000001000100550000000200000040000000",
    ),
    (
        88,
        "02000000000000000500000000000000010000000000000001000400000000000000000030000000\
         010000003100000002000000320000000300000033000000",
    ),
    (
        24,
        "040000000000000006000000000000000200000000000000020000000000000000000000300000000\
         100000031000000",
    ),
    (
        24,
        "0300000000000000070000000000000002000000000000000200000000000000",
    ),
    (
        88,
        "02000000000000000800000000000000020100000000000004000400000000000000000030000000\
         010000003100000002000000320000000300000033000000",
    ),
    (24, "05000000000000000900000000000000"),
    (48, "01000000010000000a00000000000000"),
];

fn hex(bytes: &[u8]) -> std::string::String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The calls whose bytes `BEFORE` holds, against a device offering `offered`; returns the
/// features the driver wrote and, per request, the writable bytes and the request.
fn calls(offered: u64) -> (u64, Vec<(u32, std::string::String)>) {
    let dev = FakeDevice::new(memory());
    dev.with(|s| s.offered = offered);
    let mut d = driver(&dev);
    assert_eq!(d.query(0).unwrap().info.ext, None);
    d.query(1).unwrap();
    let mut grants = [Grant::new(0, Default::default()); 4];
    d.alloc_irq_vectors(0, Kind::MsiX, 2, &targets(4), &mut grants)
        .unwrap();
    d.alloc_irq_at(
        1,
        Kind::Ims,
        IndexSpec::At(7),
        Target::new(2, 0x40),
        Some(0x55),
    )
    .unwrap();
    let t = targets(4);
    let msi = Alloc {
        kind: Kind::Msi,
        index: IndexSpec::At(0),
        min: 1,
        max: 4,
        pasid: None,
        targeting: Targeting::PerVector,
        targets: &t,
    };
    d.alloc(0, msi, &mut grants).unwrap();
    let run = IndexRange {
        kind: Kind::MsiX,
        first: 0,
        count: 2,
    };
    d.retarget(0, run, &targets(2)).unwrap();
    d.free(0, run).unwrap();
    dev.with(|s| s.available = 1);
    let refused = d
        .alloc_irq_vectors(0, Kind::MsiX, 4, &targets(4), &mut grants)
        .unwrap_err();
    assert_eq!(refused.fallback_count(), Some(1));
    d.reset_device(0).unwrap();
    let mut reply = [0; REPLY];
    d.call(1, Operation::Query, &mut reply).unwrap();
    dev.with(|s| {
        let sent = s
            .writable
            .iter()
            .zip(&s.requests)
            .map(|(w, r)| (*w, hex(r)))
            .collect();
        (s.driver_features, sent)
    })
}

#[test]
fn a_version_1_driver_sends_what_it_sent_before_whatever_the_device_offers() {
    let before: Vec<(u32, std::string::String)> = BEFORE
        .iter()
        .map(|(w, r)| (*w, r.replace(' ', "")))
        .collect();
    for offered in [feature::V1, feature::ALL, feature::ALL | 1 << 40] {
        let (features, sent) = calls(offered);
        assert_eq!(features, feature::V1, "offered {offered:#x}");
        assert_eq!(sent, before, "offered {offered:#x}");
    }
}

#[test]
fn a_version_1_driver_sends_the_spec_s_version_1_vectors() {
    let dev = FakeDevice::full(memory());
    dev.with(|s| s.track = false);
    let mut d = driver(&dev);
    // [query] is the first request (tag 1) of a driver, to device 3.
    d.query(3).unwrap();
    // Tags count up: the next vectors carry tags 0x2a, 0x2b and 0x2c.
    while dev.with(|s| s.requests.len()) < 0x29 {
        d.query(0).unwrap();
    }
    let t: Vec<Target> = (0..4).map(|i| Target::new(i % 2, 0x30 + i as u8)).collect();
    let mut grants = [Grant::new(0, Default::default()); 4];
    d.alloc_irq_vectors(7, Kind::MsiX, 1, &t, &mut grants)
        .unwrap();
    d.free(
        7,
        IndexRange {
            kind: Kind::MsiX,
            first: 3,
            count: 2,
        },
    )
    .unwrap();
    d.retarget(
        2,
        IndexRange {
            kind: Kind::Ims,
            first: 5,
            count: 2,
        },
        &[Target::new(1, 0x40), Target::new(0, 0x41)],
    )
    .unwrap();
    dev.with(|s| {
        assert_eq!(s.driver_features, feature::V1);
        assert_eq!(s.requests[0], vector("query"));
        assert_eq!(s.requests[0x29], vector("alloc-msix-any-1-to-4"));
        assert_eq!(s.requests[0x2a], vector("free-msix-run"));
        assert_eq!(s.requests[0x2b], vector("retarget-ims-two"));
    });
}

#[test]
fn a_version_1_driver_accepts_the_spec_s_version_1_replies() {
    let dev = FakeDevice::full(memory());
    let mut d = driver(&dev);
    // [query-ok] answers tag 1 from device 3.
    dev.fault(Fault::Garbage(vector("query-ok")));
    let q = d.query(3).unwrap();
    assert_eq!(
        (q.info.msix_table_size, q.info.available, q.quota_remaining),
        (64, 30, 30)
    );
    assert_eq!(q.info.ext, None);
    // [no-space-irte] answers an ALLOC with tag 5 from device 7.
    while dev.with(|s| s.requests.len()) < 4 {
        d.query(0).unwrap();
    }
    dev.fault(Fault::Garbage(vector("no-space-irte")));
    let t = targets(4);
    let mut grants = [Grant::new(0, Default::default()); 4];
    let e = d
        .alloc(7, Alloc::any(Kind::MsiX, 4, &t), &mut grants)
        .unwrap_err();
    assert_eq!(e.fallback_count(), Some(3));
}

#[test]
fn a_version_1_driver_refuses_the_extensions_layouts() {
    let dev = FakeDevice::full(memory());
    let mut d = driver(&dev);
    // A 64-byte QUERY body (INFO) is not version 1's 24: it does not even fit the buffer
    // a version-1 driver offers.
    dev.fault(Fault::Garbage(vector("query-ok-extended")));
    assert_eq!(
        d.query(2).unwrap_err(),
        Error::UsedLenTooLarge {
            len: 88,
            capacity: 48
        }
    );
    // 24-byte grant records (INFO) are not version 1's 16.
    let message = MsiMessage {
        address: 0xfee0_0010,
        data: 0,
    };
    let records = [GrantInfo::new(0, message, GrantMode::Remapped)];
    d.query(0).unwrap();
    // The third request: tag 3.
    let tag = 3;
    let reply = Response {
        opcode: 2,
        device: 0,
        tag,
        outcome: Outcome::Allocated {
            grants: GrantSlice::Info(&records),
            quota_remaining: 1,
        },
    };
    let mut bytes = std::vec![0; reply.encoded_len()];
    reply.encode(&mut bytes).unwrap();
    dev.fault(Fault::Garbage(bytes));
    let mut grants = [Grant::new(0, Default::default()); 2];
    let t = targets(2);
    let e = d
        .alloc(0, Alloc::any(Kind::MsiX, 1, &t), &mut grants)
        .unwrap_err();
    assert!(matches!(e, Error::Malformed(_)), "{e}");
    // Nor may it send an extension's shape: nothing reaches the device.
    let sent = dev.with(|s| s.requests.len());
    let parked = Alloc {
        targeting: Targeting::Parked,
        targets: &[],
        ..Alloc::any(Kind::MsiX, 1, &t)
    };
    assert_eq!(
        d.alloc(0, parked, &mut grants).unwrap_err(),
        Error::NotNegotiated {
            needed: feature::PARKED | feature::INFO
        }
    );
    dev.with(|s| assert_eq!(s.requests.len(), sent));
}
