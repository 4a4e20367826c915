//! Posted grants (spec §3.4, [DEV-25]): only for a driver that negotiated `POSTED`, on a
//! host that can post; no host vector is counted, reserved or named for them; the mode
//! is reported and never changes while the grant is held.

use super::*;
use pvirq_proto::{GrantMode, Resource};

#[test]
fn posted_grants_take_no_host_vector_and_follow_their_vcpu() {
    // One CPU with two host vectors.
    let host = host(64, 2, true);
    let vm = vm(
        &host,
        config(32, vec![dev(0x100, 0, 16, 0)]),
        info(feature::POSTED),
    );
    let t = targets(8);
    let g = grants(
        &vm,
        0,
        alloc(Kind::MsiX, IndexSpec::Any, (8, 8), Targeting::PerVector, &t),
    )
    .unwrap();
    assert!(g.iter().all(|g| g.mode() == GrantMode::Posted));
    assert!(
        vm.grants(0)
            .iter()
            .all(|(_, _, r)| r.mode == GrantMode::Posted)
    );
    assert_eq!(host.occupancy().vectors_used, 0);
    // QUERY's `available` is not bounded by the host vectors either.
    assert_eq!(query(&vm, 0).available, 8);
    assert!(query(&vm, 0).ext.unwrap().can_post);

    // A driver that did not negotiate POSTED gets remapped grants on the same host, and
    // the host vectors are its limit.
    let other = super::vm(&host, config(32, vec![dev(0x200, 0, 16, 0)]), info(0));
    let three = alloc(
        Kind::MsiX,
        IndexSpec::Any,
        (3, 3),
        Targeting::PerVector,
        &t[..3],
    );
    assert_eq!(
        grants(&other, 0, three),
        Err(no_space(Resource::HostVector, 2))
    );
    assert_eq!(query(&other, 0).available, 2);
    let upto = alloc(
        Kind::MsiX,
        IndexSpec::Any,
        (1, 3),
        Targeting::PerVector,
        &t[..3],
    );
    let r = grants(&other, 0, upto).unwrap();
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|g| g.mode() == GrantMode::Remapped));
    assert_eq!(host.occupancy().vectors_free, 0);
    // A version-1 driver on a posting host: remapped, 16-byte records, host vectors
    // counted (none left).
    let v1 = super::vm(&host, config(32, vec![dev(0x300, 0, 16, 0)]), feature::V1);
    let one = alloc(
        Kind::MsiX,
        IndexSpec::Any,
        (1, 1),
        Targeting::PerVector,
        &t[..1],
    );
    assert_eq!(grants(&v1, 0, one), Err(no_space(Resource::HostVector, 0)));

    // Posting still needs no host vector.
    assert_eq!(grants(&vm, 0, one).unwrap()[0].mode(), GrantMode::Posted);
    // RETARGET points the posted entry at the new vCPU.
    let to = [Target::new(3, 0x55)];
    let op = Operation::Retarget(Retarget::run(
        IndexRange {
            kind: Kind::MsiX,
            first: 0,
            count: 1,
        },
        &to,
    ));
    assert_eq!(counted(&vm, 0, op), Ok(1));
    let d = host.fire(0x100, g[0].message()).unwrap();
    assert_eq!((d.to(), d.mode), (Some((3, 0x55)), GrantMode::Posted));
    vm.check_invariants().unwrap();
    host.check_invariants().unwrap();
}

#[test]
fn a_host_that_cannot_post_remaps_for_every_driver() {
    let host = host(64, 4, false);
    let vm = vm(
        &host,
        config(32, vec![dev(0x100, 0, 16, 0)]),
        info(feature::POSTED),
    );
    assert!(!query(&vm, 0).ext.unwrap().can_post);
    let t = targets(8);
    let op = alloc(
        Kind::MsiX,
        IndexSpec::Any,
        (5, 5),
        Targeting::PerVector,
        &t[..5],
    );
    assert_eq!(grants(&vm, 0, op), Err(no_space(Resource::HostVector, 4)));
    let op = alloc(
        Kind::MsiX,
        IndexSpec::Any,
        (1, 4),
        Targeting::PerVector,
        &t[..4],
    );
    assert!(
        grants(&vm, 0, op)
            .unwrap()
            .iter()
            .all(|g| g.mode() == GrantMode::Remapped)
    );
}
