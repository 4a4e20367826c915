//! ALLOC, FREE and QUERY through the whole path (guest driver → ring in guest memory →
//! virtio-mmio → host device → reply in guest memory): partial grants, specific indices,
//! IMS with PASID, MSI blocks, the QUERY figures, free and re-allocate.

use pvirq_guest::{Error, Options};
use pvirq_host::routes::MemoryRoutes;
use pvirq_proto::{
    Alloc, Field, Grant, IndexRange, IndexSpec, Kind, MsiMessage, Refusal, RemappableMsi, Resource,
    Targeting, feature,
};
use pvirq_sim::Channel;
use pvirq_tests::setup::{channel, dev, host, irtes_used, snapshot, targets, vm_config};

fn alloc_at(
    ch: &mut Channel,
    device: u32,
    kind: Kind,
    index: IndexSpec,
    min: u16,
    max: u16,
) -> Result<(Vec<Grant>, u32), Error> {
    let t = targets(usize::from(max), 0x40);
    let mut grants = vec![Grant::new(0, MsiMessage::default()); usize::from(max)];
    let alloc = Alloc {
        kind,
        index,
        min,
        max,
        pasid: None,
        targets: &t,
        targeting: Targeting::PerVector,
    };
    let a = ch.driver().alloc(device, alloc, &mut grants)?;
    Ok((a.grants.to_vec(), a.quota_remaining))
}

fn indices(grants: &[Grant]) -> Vec<u32> {
    grants.iter().map(Grant::index).collect()
}

/// [DEV-6]: between min and max, the largest count every resource can supply.
#[test]
fn partial_grants_take_the_largest_count_every_resource_supplies() {
    let host = host(256, 2);
    let quota = 10;
    let table = 16;
    let mut ch = channel(&host, vm_config(quota, vec![dev(0x100, 0, table, 0)]));
    let (g, left) = alloc_at(&mut ch, 0, Kind::MsiX, IndexSpec::Any, 2, 8).unwrap();
    assert_eq!(indices(&g), (0..8).collect::<Vec<_>>());
    assert_eq!(left, quota - 8);
    // Only the quota's remainder is left: a min..max request gets exactly that.
    let (g, left) = alloc_at(&mut ch, 0, Kind::MsiX, IndexSpec::Any, 1, 8).unwrap();
    assert_eq!(indices(&g), (8..quota).collect::<Vec<_>>());
    assert_eq!(left, 0);
    let e = alloc_at(&mut ch, 0, Kind::MsiX, IndexSpec::Any, 1, 1).unwrap_err();
    assert_eq!(
        e.refusal(),
        Some(Refusal::NoSpace {
            resource: Resource::VmQuota,
            available: 0
        })
    );
    assert_eq!(ch.vm().occupancy().held, quota);
    assert_eq!(ch.vm().occupancy().per_device, vec![quota]);
    assert_eq!(irtes_used(&host), quota);
    // Device slots bind the same way on a fresh VM whose quota is ample.
    let mut ch2 = channel(&host, vm_config(64, vec![dev(0x200, 0, 6, 0)]));
    let (g, left) = alloc_at(&mut ch2, 0, Kind::MsiX, IndexSpec::Any, 4, 32).unwrap();
    assert_eq!(g.len(), 6);
    assert_eq!(left, 64 - 6);
    host.check_invariants().unwrap();
}

/// Specific indices: all of `first..first+max` must be inside the table and free, even if
/// fewer are granted (§4.5); a partial grant occupies `first..first+n`.
#[test]
fn specific_indices_are_checked_whole_and_granted_from_first() {
    let host = host(256, 2);
    let mut ch = channel(&host, vm_config(64, vec![dev(0x100, 0, 16, 0)]));
    let (g, _) = alloc_at(&mut ch, 0, Kind::MsiX, IndexSpec::At(5), 3, 3).unwrap();
    assert_eq!(indices(&g), [5, 6, 7]);
    let before = snapshot(&host, &[ch.vm()]);
    for (index, min, max, refusal) in [
        (6, 1, 1, Refusal::IndexInUse { index: 6 }),
        (3, 1, 4, Refusal::IndexInUse { index: 5 }),
        (14, 1, 4, Refusal::IndexOutOfRange { index: 16 }),
        (16, 1, 1, Refusal::IndexOutOfRange { index: 16 }),
    ] {
        let e = alloc_at(&mut ch, 0, Kind::MsiX, IndexSpec::At(index), min, max).unwrap_err();
        assert_eq!(e.refusal(), Some(refusal), "at {index} count {min}..{max}");
        assert_eq!(snapshot(&host, &[ch.vm()]), before, "[DEV-9] at {index}");
    }
    let (g, _) = alloc_at(&mut ch, 0, Kind::MsiX, IndexSpec::At(12), 4, 4).unwrap();
    assert_eq!(indices(&g), [12, 13, 14, 15]);
    // A partial grant at a specific index: the quota leaves room for 2 of 4.
    let mut small = channel(&host, vm_config(2, vec![dev(0x200, 0, 16, 0)]));
    let (g, left) = alloc_at(&mut small, 0, Kind::MsiX, IndexSpec::At(9), 1, 4).unwrap();
    assert_eq!((indices(&g), left), (vec![9, 10], 0));
    // Every message names its own IRTE (handle), sub-handle 0.
    let handles: Vec<_> = g
        .iter()
        .map(|g| RemappableMsi::decode(g.message()).unwrap())
        .collect();
    assert!(handles.iter().all(|h| h.subhandle == Some(0)));
    assert_ne!(handles[0].handle, handles[1].handle);
    host.check_invariants().unwrap();
}

/// IMS with a PASID ([§4.5], feature PASID): granted at the slot asked for, delivered;
/// a driver that did not negotiate PASID is refused UNSUPPORTED `pasid`.
#[test]
fn ims_with_pasid_is_granted_and_needs_the_feature() {
    let host = host(256, 2);
    let mut ch = channel(&host, vm_config(64, vec![dev(0x100, 0, 0, 64)]));
    assert_ne!(ch.driver().features() & feature::PASID, 0);
    let target = pvirq_proto::Target::new(3, 0x77);
    let g = ch
        .driver()
        .alloc_irq_at(0, Kind::Ims, IndexSpec::At(40), target, Some(0xF_FFFF))
        .unwrap();
    assert_eq!(g.index(), 40);
    let d = host.fire(0x100, g.message()).unwrap();
    assert_eq!(d.to(), Some((3, 0x77)));
    let any = ch
        .driver()
        .alloc_irq_at(0, Kind::Ims, IndexSpec::Any, target, Some(7))
        .unwrap();
    assert_eq!(any.index(), 0);
    // PASID outside 20 bits, or on MSI-X, never leaves the driver.
    let e = ch
        .driver()
        .alloc_irq_at(0, Kind::Ims, IndexSpec::Any, target, Some(1 << 20))
        .unwrap_err();
    assert!(matches!(e, Error::Encode(_)), "{e:?}");

    let options = Options {
        features: feature::V1 & !feature::PASID,
        ..Options::default()
    };
    let routes = Box::new(MemoryRoutes::kvm_like());
    let config = vm_config(64, vec![dev(0x200, 0, 0, 64)]);
    let mut plain = Channel::new(&host, config, routes, options).unwrap();
    assert_eq!(plain.driver().features() & feature::PASID, 0);
    let before = snapshot(&host, &[plain.vm()]);
    let e = plain
        .driver()
        .alloc_irq_at(0, Kind::Ims, IndexSpec::Any, target, Some(7))
        .unwrap_err();
    assert_eq!(
        e.refusal(),
        Some(Refusal::Unsupported {
            field: Field::Pasid
        })
    );
    assert_eq!(snapshot(&host, &[plain.vm()]), before);
    // Without a PASID the same VM gets its slot.
    plain
        .driver()
        .alloc_irq_at(0, Kind::Ims, IndexSpec::Any, target, None)
        .unwrap();
}

/// Multi-message MSI (§3.1, §3.2): one power-of-two block per device, capped at the
/// device's `msi_max`, on a naturally aligned IRTE block; freed only whole.
#[test]
fn msi_blocks_are_aligned_whole_and_one_per_device() {
    let host = host(8, 2);
    let mut other = channel(&host, vm_config(64, vec![dev(0x200, 0, 4, 0)]));
    // Another device takes IRTE 0: the largest aligned free block is now 4 (entries 4..8).
    alloc_at(&mut other, 0, Kind::MsiX, IndexSpec::Any, 1, 1).unwrap();
    let mut ch = channel(&host, vm_config(64, vec![dev(0x100, 8, 0, 0)]));
    let e = alloc_at(&mut ch, 0, Kind::Msi, IndexSpec::Any, 8, 8).unwrap_err();
    assert_eq!(
        e.refusal(),
        Some(Refusal::NoSpace {
            resource: Resource::Irte,
            available: 4
        }),
        "[DEV-7] the largest aligned block"
    );
    let (g, left) = alloc_at(&mut ch, 0, Kind::Msi, IndexSpec::Any, 1, 8).unwrap();
    assert_eq!(indices(&g), [0, 1, 2, 3]);
    assert_eq!(left, 60);
    let base = RemappableMsi::decode(g[0].message()).unwrap();
    assert_eq!(base.handle % 4, 0, "naturally aligned");
    for (i, grant) in g.iter().enumerate() {
        let m = RemappableMsi::decode(grant.message()).unwrap();
        assert_eq!((m.handle, m.subhandle), (base.handle, Some(i as u16)));
        assert_eq!(grant.message().address, g[0].message().address);
    }
    let e = alloc_at(&mut ch, 0, Kind::Msi, IndexSpec::Any, 1, 1).unwrap_err();
    assert_eq!(e.refusal(), Some(Refusal::IndexInUse { index: 0 }));
    let partial = IndexRange {
        kind: Kind::Msi,
        first: 0,
        count: 2,
    };
    let before = snapshot(&host, &[ch.vm()]);
    let e = ch.driver().free(0, partial).unwrap_err();
    assert!(
        matches!(e.refusal(), Some(Refusal::NotGranted { .. })),
        "{e:?}"
    );
    assert_eq!(snapshot(&host, &[ch.vm()]), before);
    let whole = IndexRange {
        count: 4,
        ..partial
    };
    assert_eq!(ch.driver().free(0, whole).unwrap().count, 4);
    assert_eq!(irtes_used(&host), 1);
    // Asking for more than msi_max gets msi_max once the IRTEs are there.
    drop(other);
    let (g, _) = alloc_at(&mut ch, 0, Kind::Msi, IndexSpec::Any, 2, 32).unwrap();
    assert_eq!(g.len(), 8);
    host.check_invariants().unwrap();
}

/// QUERY (§4.4): kinds, table sizes, granted, quota and `available`, before and after; the
/// `available` figure is exactly what an ALLOC can then get.
#[test]
fn query_figures_follow_every_grant_and_free() {
    let host = host(256, 2);
    let (quota, msix, ims) = (12u32, 8u16, 32u32);
    let devices = vec![dev(0x100, 4, msix, ims), dev(0x101, 0, 4, 0)];
    let mut ch = channel(&host, vm_config(quota, devices));
    let q = ch.driver().query(0).unwrap();
    assert!(q.info.kinds.contains(Kind::Msi) && q.info.kinds.contains(Kind::MsiX));
    assert!(q.info.kinds.contains(Kind::Ims));
    assert_eq!(
        (q.info.msi_max, q.info.msix_table_size, q.info.ims_slots),
        (4, msix, ims)
    );
    assert_eq!(
        (q.info.granted, q.info.vm_quota, q.quota_remaining),
        (0, quota, quota)
    );
    assert_eq!(q.info.available, quota, "the quota binds first");
    let (g, _) = alloc_at(&mut ch, 0, Kind::MsiX, IndexSpec::Any, 1, msix).unwrap();
    let q = ch.driver().query(0).unwrap();
    assert_eq!(q.info.granted, g.len() as u32);
    assert_eq!(q.quota_remaining, quota - u32::from(msix));
    assert_eq!(q.info.available, quota - u32::from(msix));
    // The other device shares the quota but not the grants.
    let q1 = ch.driver().query(1).unwrap();
    assert_eq!(
        (q1.info.granted, q1.quota_remaining),
        (0, q.quota_remaining)
    );
    assert_eq!(q1.info.available, q.quota_remaining.min(4));
    // `available` is what ALLOC gets; one more is refused with that figure.
    let avail = q.info.available as u16;
    let e = alloc_at(&mut ch, 0, Kind::Ims, IndexSpec::Any, avail + 1, avail + 1).unwrap_err();
    assert_eq!(e.fallback_count(), Some(avail));
    let (g, left) = alloc_at(&mut ch, 0, Kind::Ims, IndexSpec::Any, avail, avail).unwrap();
    assert_eq!((g.len() as u16, left), (avail, 0));
    let q = ch.driver().query(0).unwrap();
    assert_eq!((q.info.available, q.info.granted), (0, quota));
    // Freed vectors come back in the figures.
    let run = IndexRange {
        kind: Kind::MsiX,
        first: 2,
        count: 3,
    };
    assert_eq!(ch.driver().free(0, run).unwrap().quota_remaining, 3);
    let q = ch.driver().query(0).unwrap();
    assert_eq!(
        (q.info.available, q.info.granted, q.quota_remaining),
        (3, quota - 3, 3)
    );
    assert_eq!(
        ch.driver().query(7).unwrap_err().refusal(),
        Some(Refusal::NoDevice)
    );
}

/// FREE releases every resource of the run; the freed indices and IRTEs are granted again;
/// a run with an index not granted frees nothing (NOT_GRANTED, first such index).
#[test]
fn free_and_reallocate_reuses_indices_and_host_resources() {
    let host = host(256, 2);
    let mut ch = channel(&host, vm_config(64, vec![dev(0x100, 0, 16, 0)]));
    let (g, _) = alloc_at(&mut ch, 0, Kind::MsiX, IndexSpec::Any, 6, 6).unwrap();
    let used = irtes_used(&host);
    let vectors = host.occupancy().vectors_used;
    let run = IndexRange {
        kind: Kind::MsiX,
        first: 1,
        count: 3,
    };
    let done = ch.driver().free(0, run).unwrap();
    assert_eq!((done.count, done.quota_remaining), (3, 64 - 3));
    assert_eq!(irtes_used(&host), used - 3);
    assert_eq!(host.occupancy().vectors_used, vectors - 3);
    assert_eq!(ch.vm().occupancy().routes, 3);
    let before = snapshot(&host, &[ch.vm()]);
    for (first, count, index) in [(1, 1, 1), (0, 3, 1), (4, 4, 6)] {
        let run = IndexRange {
            kind: Kind::MsiX,
            first,
            count,
        };
        let e = ch.driver().free(0, run).unwrap_err();
        assert_eq!(
            e.refusal(),
            Some(Refusal::NotGranted { index }),
            "{first}+{count}"
        );
        assert_eq!(snapshot(&host, &[ch.vm()]), before, "[DEV-9]");
    }
    let (again, _) = alloc_at(&mut ch, 0, Kind::MsiX, IndexSpec::Any, 3, 3).unwrap();
    assert_eq!(indices(&again), [1, 2, 3]);
    // The lowest free IRTEs are the ones just freed: the same messages come back.
    let freed: Vec<_> = g[1..4].iter().map(Grant::message).collect();
    let regranted: Vec<_> = again.iter().map(Grant::message).collect();
    assert_eq!(regranted, freed);
    assert_eq!(irtes_used(&host), used);
    host.check_invariants().unwrap();
}
