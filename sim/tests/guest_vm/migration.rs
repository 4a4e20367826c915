//! A migration of the VM's pvirq side to a host with different occupancy, with the guest
//! code in the KVM VM doing what a migrated guest does: it reads the REPROGRAM and REVOKE
//! events, reprograms its MSI-X entries and IMS slots, forgets what was revoked, and every
//! grant it keeps delivers through the destination.

use super::{alloc, decl, dest, device, side};
use pvirq_host::model::{ModelConfig, ModelHost, RemapConfig};
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::snapshot::Restored;
use pvirq_host::{DeviceSpec, Vm, VmConfig};
use pvirq_proto::{
    Alloc, EventBody, IndexRange, IndexSpec, Kind, Operation, Request, Target, Targeting, feature,
};
use pvirq_sim::kvm::require_kvm_or_skip;

/// IRTEs of the destination's one remapping unit.
const DEST_IRTES: u32 = 10;
/// IRTEs another VM already holds there: entries 4..8.
const OCCUPIED: u16 = 4;

/// A host with one small remapping unit, on which another VM holds [`OCCUPIED`] entries
/// from entry 4 (it took eight and gave the first four back).
fn occupied_host() -> (ModelHost, Vm) {
    let host = ModelHost::new(&ModelConfig {
        remap: RemapConfig {
            units: 1,
            entries_per_unit: DEST_IRTES,
        },
        ..ModelConfig::default()
    })
    .unwrap();
    let config = VmConfig {
        quota: 8,
        num_vcpus: 1,
        max_batch: 8,
        devices: vec![DeviceSpec {
            requester_id: 0x0900,
            msix_table_size: 8,
            ..DeviceSpec::default()
        }],
        ..VmConfig::default()
    };
    let occupant = host
        .create_vm(config, Box::new(MemoryRoutes::kvm_like()))
        .unwrap();
    let targets = [Target::new(0, 0x40); 2 * OCCUPIED as usize];
    let take = Request {
        device: 0,
        tag: 1,
        op: Operation::Alloc(Alloc::any(Kind::MsiX, 2 * OCCUPIED, &targets)),
    };
    occupant.call(&take);
    let first = IndexRange {
        kind: Kind::MsiX,
        first: 0,
        count: OCCUPIED,
    };
    let give_back = Request {
        device: 0,
        tag: 2,
        op: Operation::Free(first.into()),
    };
    occupant.call(&give_back);
    assert_eq!(occupant.occupancy().held, u32::from(OCCUPIED));
    (host, occupant)
}

#[test]
fn after_a_migration_the_guest_reprograms_from_the_events_and_every_kept_grant_delivers() {
    if !require_kvm_or_skip() {
        return;
    }
    let source = ModelHost::new(&ModelConfig::default()).unwrap();
    let vm = decl(
        feature::ALL,
        2,
        16,
        vec![device("nic", 0x0100, 8, 0), device("dsa", 0x0200, 0, 8)],
    );
    let mut side = side(&source, &vm);
    let nic = alloc(
        0,
        Kind::MsiX,
        IndexSpec::Any,
        Targeting::Spread,
        (2, 2),
        vec![dest(0, 0x40), dest(1, 0x41)],
    );
    let ims = alloc(
        1,
        Kind::Ims,
        IndexSpec::Any,
        Targeting::Spread,
        (6, 6),
        vec![dest(0, 0x48), dest(1, 0x49)],
    );
    // On the source the NIC's grants take IRTEs 0 and 1, the DSA's 2 to 7.
    assert_eq!(side.alloc(&nic).unwrap().grants.len(), 2);
    assert_eq!(side.alloc(&ims).unwrap().grants.len(), 6);
    for device in [0, 1] {
        let fire = side.fire(device, false).unwrap();
        assert_eq!(fire.fired, fire.delivered, "on the source");
    }

    // Eight grants onto six free IRTEs (0 to 3, 8 and 9): four keep theirs, two get new
    // ones, two none; the entries the revoked grants had are the other VM's there.
    let (dest_host, _occupant) = occupied_host();
    let report = side.migrate(&dest_host).unwrap();
    assert_eq!(report.len(), 8);
    let count = |f: fn(&Restored) -> bool| report.iter().filter(|r| f(&r.outcome)).count();
    let kept = count(|o| matches!(o, Restored::Kept));
    let reprogrammed = count(|o| matches!(o, Restored::Reprogrammed(_)));
    let revoked = count(|o| matches!(o, Restored::Revoked(_)));
    assert!(
        kept > 0 && reprogrammed > 0 && revoked > 0,
        "kept {kept}, reprogrammed {reprogrammed}, revoked {revoked}"
    );
    assert_eq!(
        kept + reprogrammed,
        DEST_IRTES as usize - usize::from(OCCUPIED)
    );
    // The source let go of everything once the destination held it.
    assert_eq!(source.occupancy().units[0].used, 0);
    assert_eq!(side.vm().occupancy().held, (kept + reprogrammed) as u32);

    // The guest hears of each changed grant once, in the report's order, and applies it.
    let events = side.events().unwrap();
    let changed: Vec<_> = report
        .iter()
        .filter(|r| !matches!(r.outcome, Restored::Kept))
        .collect();
    assert_eq!(events.len(), changed.len(), "{events:?}");
    for (e, r) in events.iter().zip(&changed) {
        assert!(e.applied, "{e:?}");
        match (e.event.body, r.outcome) {
            (
                EventBody::Reprogram {
                    device,
                    kind,
                    index,
                    message,
                    ..
                },
                Restored::Reprogrammed(new),
            ) => assert_eq!(
                (device, kind, index, message),
                (r.device, r.kind, r.index, new)
            ),
            (
                EventBody::Revoke {
                    device,
                    kind,
                    index,
                    ..
                },
                Restored::Revoked(_),
            ) => assert_eq!((device, kind, index), (r.device, r.kind, r.index)),
            other => panic!("event and fate disagree: {other:?}"),
        }
    }

    // Every grant the guest still holds reaches its target through the destination, with
    // the message it reprogrammed; it rings none of the revoked ones.
    let delivered_before = dest_host.delivered();
    let (mut fired, mut delivered) = (0, 0);
    for device in [0, 1] {
        let fire = side.fire(device, false).unwrap();
        assert_eq!(fire.misrouted, 0);
        fired += fire.fired;
        delivered += fire.delivered;
    }
    assert_eq!((fired, delivered), (6, 6), "kept and reprogrammed grants");
    assert_eq!(dest_host.delivered() - delivered_before, 6);

    // Rung anyway with their old messages, the revoked grants reach nothing: the
    // destination's remapping unit blocks each and records it.
    let faults = dest_host.faults().count;
    let mut stale = 0;
    for device in [0, 1] {
        let fire = side.fire(device, true).unwrap();
        assert_eq!(fire.misrouted, 0);
        stale += fire.fired - fire.delivered;
    }
    assert_eq!(stale as usize, revoked);
    assert_eq!(dest_host.faults().count - faults, revoked as u64);
}

#[test]
fn a_migration_a_version_1_guest_cannot_be_told_of_is_refused_and_the_source_carries_on() {
    if !require_kvm_or_skip() {
        return;
    }
    let source = ModelHost::new(&ModelConfig::default()).unwrap();
    let vm = decl(feature::V1, 2, 16, vec![device("nic", 0x0100, 8, 0)]);
    let mut side = side(&source, &vm);
    let nic = alloc(
        0,
        Kind::MsiX,
        IndexSpec::Any,
        Targeting::PerVector,
        (6, 6),
        (0..6).map(|i| dest(i % 2, 0x40 + i as u8)).collect(),
    );
    assert_eq!(side.alloc(&nic).unwrap().grants.len(), 6);
    let (dest_host, _occupant) = occupied_host();
    assert!(side.migrate(&dest_host).is_err());
    assert_eq!(dest_host.occupancy().units[0].used, u32::from(OCCUPIED));
    let fire = side.fire(0, false).unwrap();
    assert_eq!((fire.fired, fire.delivered), (6, 6), "still on the source");
}
