//! A driver that negotiated the extensions (spec §2.2): negotiation, and every call of the
//! irq-domain shape against the fake device's model — bytes as the spec's vectors have
//! them, grants with their mode, parked flag and PASID.

use super::driver::{REPLY, TestDriver, driver_with, targets};
use super::fake::{FakeDevice, Held, memory};
use super::vectors::vector;
use crate::{Error, Options, index_list};
use pvirq_proto::{
    Alloc, Grant, GrantInfo, GrantMode, IndexRange, IndexSpec, Indices, Kind, Le32, MessageFormat,
    Operation, Outcome, Target, Targeting, feature,
};
use std::vec::Vec;
use virtio_queue::QueueT;

pub(crate) fn options(features: u64) -> Options {
    Options {
        features,
        ..Options::default()
    }
}

/// A driver asking for every feature of a device offering them all.
pub(crate) fn full_driver(dev: &FakeDevice) -> TestDriver<'_> {
    driver_with(dev, options(feature::ALL)).expect("driver initialises")
}

fn blank() -> GrantInfo {
    GrantInfo::from_grant(Grant::new(0, Default::default()))
}

/// Where the model delivers `index` of `device`'s `kind` (`None`: parked or not held).
fn target_of(dev: &FakeDevice, device: u32, kind: Kind, index: u32) -> Option<Option<Target>> {
    dev.with(|s| {
        s.held
            .get(&(device, kind.to_wire(), index))
            .map(|h: &Held| h.target)
    })
}

#[test]
fn features_are_what_both_sides_want_and_never_break_a_dependency() {
    let dev = FakeDevice::full(memory());
    dev.with(|s| s.offered = feature::ALL & !feature::INFO);
    let d = driver_with(&dev, options(feature::ALL)).unwrap();
    let want = feature::V1 | feature::APIC_ID | feature::ACCESS_PLATFORM;
    assert_eq!(d.features(), want);
    assert!(d.has(feature::APIC_ID) && !d.has(feature::EVENTS));
    assert!(d.targets_name_apic_ids());
    assert_eq!(d.negotiated().features, want);
    assert_eq!(d.negotiated().max_batch, 64);
    dev.with(|s| assert_eq!(s.driver_features, want, "and the device accepted it"));
    drop(d);
    // Everything offered, a subset asked for: exactly the subset.
    let dev = FakeDevice::full(memory());
    let wanted = feature::V1 | feature::INFO | feature::PARKED;
    let d = driver_with(&dev, options(wanted)).unwrap();
    assert_eq!(d.features(), wanted);
    assert!(!d.targets_name_apic_ids());
    dev.with(|s| assert!(!s.event_queue.ready(), "no EVENTS, no event queue"));
}

#[test]
fn an_extended_driver_sends_the_spec_s_extension_vectors() {
    let dev = FakeDevice::full(memory());
    dev.with(|s| {
        s.track = false;
        s.available = u32::MAX;
    });
    let mut d = full_driver(&dev);
    // The vectors carry tags 0x20 to 0x28, one after the other.
    while dev.with(|s| s.requests.len()) < 0x1f {
        d.query(0).unwrap();
    }
    let mut grants = [blank(); 32];
    let apic = [Target::new(16, 0x30), Target::new(18, 0x31)];
    d.alloc_irq_vectors(0, Kind::MsiX, 2, &apic, &mut grants)
        .unwrap();
    d.alloc_parked(1, Kind::MsiX, IndexSpec::Any, 4, 16, None, &mut grants)
        .unwrap();
    let four: Vec<Target> = (0..4).map(|cpu| Target::new(cpu, 0x40)).collect();
    d.alloc_spread(1, Kind::MsiX, IndexSpec::Any, 1, 32, &four, &mut grants)
        .unwrap();
    let same = [Target::new(0, 0x50); 3];
    let contiguous = Alloc {
        index: IndexSpec::AnyContiguous,
        ..Alloc::any(Kind::MsiX, 3, &same)
    };
    d.alloc(2, contiguous, &mut grants).unwrap();
    d.alloc_parked(3, Kind::Ims, IndexSpec::Any, 1, 2, Some(0x42), &mut grants)
        .unwrap();
    let list = [1, 5, 9].map(Le32::new);
    d.free_indices(1, index_list(Kind::MsiX, &list).unwrap())
        .unwrap();
    let list = [2, 7].map(Le32::new);
    let to = [Target::new(0, 0x41), Target::new(1, 0x42)];
    d.activate(1, index_list(Kind::MsiX, &list).unwrap(), &to)
        .unwrap();
    let run = IndexRange {
        kind: Kind::MsiX,
        first: 4,
        count: 2,
    };
    d.deactivate(1, Indices::Run(run)).unwrap();
    let list = [0, 3].map(Le32::new);
    d.deactivate(1, index_list(Kind::Ims, &list).unwrap())
        .unwrap();
    let names = [
        "alloc-apic-id-targets",
        "alloc-parked",
        "alloc-spread-over-four",
        "alloc-any-contiguous",
        "alloc-ims-parked-with-pasid",
        "free-list",
        "retarget-list",
        "retarget-park-run",
        "retarget-park-list",
    ];
    dev.with(|s| {
        for (i, name) in names.iter().enumerate() {
            assert_eq!(s.requests[0x1f + i], vector(name), "{name}");
        }
    });
}

#[test]
fn an_extended_driver_accepts_the_spec_s_extension_replies() {
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    // [query-ok-extended] answers tag 1 from device 2.
    dev.fault(super::fake::Fault::Garbage(vector("query-ok-extended")));
    let (q, ext) = d.device_info(2).unwrap();
    assert_eq!(q.info.msix_table_size, 2048);
    assert_eq!(
        (
            ext.identity.bus,
            ext.identity.devfn,
            ext.identity.requester_id
        ),
        (3, 0x10, 0x310)
    );
    assert_eq!(ext.format, MessageFormat::VtdRemappable);
    assert!(ext.can_post);
    assert_eq!(
        (ext.share, ext.msix_free_run, ext.parked_drops),
        (16, 2000, 7)
    );
}

#[test]
fn device_info_reports_identity_format_share_and_free_runs() {
    let dev = FakeDevice::full(memory());
    dev.with(|s| s.post = true);
    let mut d = full_driver(&dev);
    let (q, ext) = d.device_info(1).unwrap();
    assert_eq!(q.info.ext, Some(ext));
    assert_eq!(ext.identity.requester_id, 0x310);
    assert_eq!((ext.identity.device(), ext.identity.function()), (2, 0));
    assert!(ext.can_post);
    assert_eq!((ext.msix_free_run, ext.ims_free_run), (64, 128));
    dev.with(|s| assert_eq!(s.writable[0], 24 + 64, "room for the extended body"));
    // A version-1 driver has no such query.
    let dev = FakeDevice::full(memory());
    let mut v1 = super::driver::driver(&dev);
    assert_eq!(
        v1.device_info(0).unwrap_err(),
        Error::NotNegotiated {
            needed: feature::INFO
        }
    );
    dev.with(|s| assert!(s.requests.is_empty()));
}

#[test]
fn grants_carry_their_mode_parked_flag_and_pasid() {
    let dev = FakeDevice::full(memory());
    dev.with(|s| s.post = true);
    let mut d = full_driver(&dev);
    let mut grants = [blank(); 4];
    let a = d
        .alloc_irq_vectors(0, Kind::MsiX, 4, &targets(4), &mut grants)
        .unwrap();
    assert_eq!(a.grants.len(), 4);
    for g in a.grants {
        assert_eq!(
            (g.mode(), g.parked(), g.pasid()),
            (GrantMode::Posted, false, None)
        );
    }
    let a = d
        .alloc_parked(
            1,
            Kind::Ims,
            IndexSpec::At(8),
            2,
            2,
            Some(0x77),
            &mut grants,
        )
        .unwrap();
    let got: Vec<_> = a
        .grants
        .iter()
        .map(|g| (g.index(), g.parked(), g.pasid()))
        .collect();
    assert_eq!(got, [(8, true, Some(0x77)), (9, true, Some(0x77))]);
    dev.with(|s| assert_eq!(s.writable.last(), Some(&(24 + 2 * 24))));
    // Without POSTED the device does not post.
    let dev = FakeDevice::full(memory());
    dev.with(|s| s.post = true);
    let mut d = driver_with(&dev, options(feature::ALL & !feature::POSTED)).unwrap();
    let a = d
        .alloc_irq_vectors(0, Kind::MsiX, 1, &targets(1), &mut grants)
        .unwrap();
    assert_eq!(a.grants[0].mode(), GrantMode::Remapped);
}

#[test]
fn a_grant_buffer_of_either_layout_works_on_either_channel() {
    // Version 1: `GrantInfo` records read as remapped, active, without a PASID.
    let dev = FakeDevice::full(memory());
    let mut v1 = super::driver::driver(&dev);
    let mut info = [blank(); 3];
    assert_eq!(v1.grant_entries::<GrantInfo>(3), 3);
    let a = v1
        .alloc_irq_vectors(0, Kind::MsiX, 3, &targets(3), &mut info)
        .unwrap();
    let got: Vec<_> = a
        .grants
        .iter()
        .map(|g| (g.index(), g.mode(), g.parked()))
        .collect();
    assert_eq!(got, [0, 1, 2].map(|i| (i, GrantMode::Remapped, false)));
    drop(v1);
    // INFO: a `Grant` buffer also holds the 24-byte records before they are compacted.
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    assert_eq!(d.grant_entries::<Grant>(4), 6);
    assert_eq!(d.grant_entries::<GrantInfo>(4), 4);
    let mut short = [Grant::new(0, Default::default()); 4];
    assert_eq!(
        d.alloc_irq_vectors(0, Kind::MsiX, 4, &targets(4), &mut short)
            .unwrap_err(),
        Error::GrantBufferTooSmall { needed: 6, got: 4 }
    );
    dev.with(|s| assert!(s.requests.is_empty(), "refused before sending"));
    let mut plain = [Grant::new(0, Default::default()); 6];
    let a = d
        .alloc_irq_vectors(0, Kind::MsiX, 4, &targets(4), &mut plain)
        .unwrap();
    let compacted: Vec<Grant> = a.grants.to_vec();
    let mut info = [blank(); 4];
    let b = d
        .alloc_irq_vectors(0, Kind::MsiX, 4, &targets(4), &mut info)
        .unwrap();
    assert_eq!(compacted.len(), 4);
    for (i, (plain, info)) in compacted.iter().zip(b.grants).enumerate() {
        assert_eq!(plain.index(), i as u32);
        assert_eq!(info.index(), 4 + i as u32);
        let msi = pvirq_proto::RemappableMsi::decode(plain.message()).unwrap();
        assert_eq!(
            u32::from(msi.handle),
            i as u32,
            "the message survived compaction"
        );
    }
    // `alloc_irq_at` works on either channel too.
    let g = d
        .alloc_irq_at(1, Kind::MsiX, IndexSpec::At(20), Target::new(0, 0x40), None)
        .unwrap();
    assert_eq!(g.index(), 20);
}

#[test]
fn the_irq_domain_lifecycle_allocates_parked_activates_moves_parks_and_frees() {
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    let mut grants = [blank(); 4];
    // alloc: parked, message final.
    let a = d
        .alloc_parked(0, Kind::MsiX, IndexSpec::Any, 1, 4, None, &mut grants)
        .unwrap();
    assert_eq!(a.grants.len(), 4);
    assert!(a.grants.iter().all(|g| g.parked()));
    assert_eq!(
        a.quota_remaining, 28,
        "a parked grant costs what an active one does"
    );
    for i in 0..4 {
        assert_eq!(target_of(&dev, 0, Kind::MsiX, i), Some(None), "parked");
    }
    // activate: the count is known now, so are the targets.
    let list = [0, 1, 2, 3].map(Le32::new);
    let to = targets(4);
    let done = d
        .activate(0, index_list(Kind::MsiX, &list).unwrap(), &to)
        .unwrap();
    assert_eq!(done.count, 4);
    for i in 0..4 {
        assert_eq!(
            target_of(&dev, 0, Kind::MsiX, i),
            Some(Some(to[i as usize]))
        );
    }
    // set_affinity: one vector moves.
    let moved = Target::new(3, 0x77);
    assert_eq!(d.set_affinity(0, Kind::MsiX, 2, moved).unwrap().count, 1);
    assert_eq!(target_of(&dev, 0, Kind::MsiX, 2), Some(Some(moved)));
    // deactivate: parked again, still held.
    let some = [1, 2].map(Le32::new);
    d.deactivate(0, index_list(Kind::MsiX, &some).unwrap())
        .unwrap();
    assert_eq!(target_of(&dev, 0, Kind::MsiX, 1), Some(None));
    assert_eq!(target_of(&dev, 0, Kind::MsiX, 0), Some(Some(to[0])));
    // free: everything the allocation gave, in one request.
    let before = dev.with(|s| s.requests.len());
    let done = d
        .free_indices(0, index_list(Kind::MsiX, &list).unwrap())
        .unwrap();
    assert_eq!((done.count, done.quota_remaining), (4, 32));
    dev.with(|s| {
        assert_eq!(s.requests.len(), before + 1);
        assert!(s.held.is_empty());
    });
}

#[test]
fn spread_and_contiguous_allocations_land_where_the_spec_says() {
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    let mut grants = [blank(); 8];
    // Fragment the table: 0 and 2 taken.
    for index in [0, 2] {
        d.alloc_irq_at(
            0,
            Kind::MsiX,
            IndexSpec::At(index),
            Target::new(0, 0x40),
            None,
        )
        .unwrap();
    }
    let t = [Target::new(1, 0x41); 3];
    let run = Alloc {
        index: IndexSpec::AnyContiguous,
        ..Alloc::any(Kind::MsiX, 3, &t)
    };
    let a = d.alloc(0, run, &mut grants).unwrap();
    let got: Vec<u32> = a.grants.iter().map(|g| g.index()).collect();
    assert_eq!(got, [3, 4, 5], "the lowest run of three");
    // Six vectors spread over four CPUs: ⌊i × 4 / 6⌋.
    let cpus: Vec<Target> = (0..4).map(|c| Target::new(c, 0x50)).collect();
    let a = d
        .alloc_spread(1, Kind::MsiX, IndexSpec::Any, 1, 6, &cpus, &mut grants)
        .unwrap();
    let spread: Vec<Option<Target>> = a
        .grants
        .iter()
        .map(|g| target_of(&dev, 1, Kind::MsiX, g.index()).flatten())
        .collect();
    let want = [0, 0, 1, 2, 2, 3].map(|c| Some(cpus[c]));
    assert_eq!(spread, want);
    // A version-1 driver may send neither.
    let dev = FakeDevice::full(memory());
    let mut v1 = super::driver::driver(&dev);
    assert_eq!(
        v1.alloc(0, run, &mut grants).unwrap_err(),
        Error::NotNegotiated {
            needed: feature::CONTIGUOUS | feature::INFO
        }
    );
    assert_eq!(
        v1.alloc_spread(0, Kind::MsiX, IndexSpec::Any, 1, 6, &cpus, &mut grants)
            .unwrap_err(),
        Error::NotNegotiated {
            needed: feature::SPREAD | feature::INFO
        }
    );
    let list = [1].map(Le32::new);
    assert_eq!(
        v1.free_indices(0, index_list(Kind::MsiX, &list).unwrap())
            .unwrap_err(),
        Error::NotNegotiated {
            needed: feature::INDEX_LIST | feature::INFO
        }
    );
    dev.with(|s| assert!(s.requests.is_empty()));
}

#[test]
fn index_lists_must_increase() {
    let list = [3, 3].map(Le32::new);
    assert!(matches!(
        index_list(Kind::MsiX, &list).unwrap_err(),
        Error::Encode(pvirq_proto::Error::IndexListOrder { entry: 1, index: 3 })
    ));
}

#[test]
fn the_low_level_path_returns_info_records() {
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    assert_eq!(d.max_reply_len(), 24 + 64 * 24);
    let t = targets(2);
    let token = d
        .submit(
            0,
            Operation::Alloc(Alloc {
                targeting: Targeting::Spread,
                ..Alloc::any(Kind::Ims, 2, &t)
            }),
        )
        .unwrap();
    let mut reply = std::vec![0; d.max_reply_len()];
    let r = d.wait(token, &mut reply).unwrap();
    let Outcome::Allocated { grants, .. } = r.outcome else {
        panic!("{r}");
    };
    assert!(matches!(grants, pvirq_proto::GrantSlice::Info(g) if g.len() == 2));
    let mut small = [0; REPLY];
    let q = d.call(0, Operation::Query, &mut small);
    assert!(
        matches!(q, Err(Error::ReplyBufferTooSmall { needed: 88, .. })),
        "{q:?}"
    );
}
