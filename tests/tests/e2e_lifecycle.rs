//! Changing and ending grants through the whole path: RETARGET, the RESET operation,
//! virtio device reset, and several requests in flight at once.

use pvirq_guest::{Error, Options};
use pvirq_host::routes::MemoryRoutes;
use pvirq_proto::{
    Alloc, Field, Grant, IndexRange, IndexSpec, Kind, MsiMessage, Operation, Outcome, Refusal,
    Target, Targeting, feature,
};
use pvirq_sim::Channel;
use pvirq_tests::setup::{channel, dev, host, irtes_used, snapshot, targets, vm_config};

fn grant_n(ch: &mut Channel, device: u32, kind: Kind, t: &[Target]) -> Vec<Grant> {
    let mut grants = vec![Grant::new(0, MsiMessage::default()); t.len()];
    let n = t.len() as u16;
    ch.driver()
        .alloc_irq_vectors(device, kind, n, t, &mut grants)
        .unwrap()
        .grants
        .to_vec()
}

fn lands(host: &pvirq_host::model::ModelHost, rid: u16, g: &Grant) -> (u32, u8) {
    let d = host.fire(rid, g.message()).unwrap();
    d.to().expect("a destination")
}

fn run(kind: Kind, first: u32, count: u16) -> IndexRange {
    IndexRange { kind, first, count }
}

/// RETARGET (§4.7) moves delivery without changing the messages; a bad target or an index
/// not granted moves nothing ([DEV-8], [DEV-9]); without the feature it is UNSUPPORTED.
#[test]
fn retarget_moves_delivery_all_or_nothing() {
    let host = host(256, 2);
    let mut ch = channel(&host, vm_config(16, vec![dev(0x100, 0, 8, 0)]));
    let first = targets(3, 0x40);
    let g = grant_n(&mut ch, 0, Kind::MsiX, &first);
    let moved = [
        Target::new(3, 0xA0),
        Target::new(2, 0xA1),
        Target::new(1, 0xA2),
    ];
    let done = ch
        .driver()
        .retarget(0, run(Kind::MsiX, 0, 3), &moved)
        .unwrap();
    assert_eq!((done.count, done.quota_remaining), (3, 13));
    for (grant, t) in g.iter().zip(&moved) {
        assert_eq!(lands(&host, 0x100, grant), (t.vcpu(), t.vector()));
    }
    let before = snapshot(&host, &[ch.vm()]);
    let bad_vcpu = [
        Target::new(0, 0xB0),
        Target::new(1, 0xB1),
        Target::new(4, 0xB2),
    ];
    let e = ch
        .driver()
        .retarget(0, run(Kind::MsiX, 0, 3), &bad_vcpu)
        .unwrap_err();
    assert_eq!(
        e.refusal(),
        Some(Refusal::InvalidTarget {
            field: Field::TargetVcpu,
            entry: 2
        })
    );
    let e = ch
        .driver()
        .retarget(0, run(Kind::MsiX, 1, 3), &moved)
        .unwrap_err();
    assert_eq!(e.refusal(), Some(Refusal::NotGranted { index: 3 }));
    assert_eq!(snapshot(&host, &[ch.vm()]), before);
    for (grant, t) in g.iter().zip(&moved) {
        assert_eq!(
            lands(&host, 0x100, grant),
            (t.vcpu(), t.vector()),
            "unmoved"
        );
    }

    let options = Options {
        features: feature::V1 & !feature::RETARGET,
        ..Options::default()
    };
    let config = vm_config(16, vec![dev(0x200, 0, 8, 0)]);
    let routes = Box::new(MemoryRoutes::kvm_like());
    let mut plain = Channel::new(&host, config, routes, options).unwrap();
    grant_n(&mut plain, 0, Kind::MsiX, &first[..1]);
    let e = plain
        .driver()
        .retarget(0, run(Kind::MsiX, 0, 1), &moved[..1])
        .unwrap_err();
    assert_eq!(
        e.refusal(),
        Some(Refusal::Unsupported {
            field: Field::Opcode
        })
    );
}

/// The RESET operation (§4.8) frees every grant of one assigned device, of every kind, and
/// nothing of the VM's other devices.
#[test]
fn reset_operation_frees_one_device_of_every_kind() {
    let host = host(256, 2);
    let devices = vec![dev(0x100, 4, 8, 8), dev(0x101, 0, 8, 0)];
    let mut ch = channel(&host, vm_config(32, devices));
    let t = targets(4, 0x40);
    let msi = grant_n(&mut ch, 0, Kind::Msi, &t);
    let msix = grant_n(&mut ch, 0, Kind::MsiX, &t[..3]);
    let ims = grant_n(&mut ch, 0, Kind::Ims, &t[..2]);
    let other = grant_n(&mut ch, 1, Kind::MsiX, &t);
    let other_before = ch.vm().grants(1);
    let done = ch.driver().reset_device(0).unwrap();
    assert_eq!(done.count, (msi.len() + msix.len() + ims.len()) as u32);
    assert_eq!(done.quota_remaining, 32 - other.len() as u32);
    assert_eq!(ch.vm().occupancy().per_device, vec![0, other.len() as u32]);
    assert_eq!(ch.vm().grants(1), other_before);
    assert_eq!(irtes_used(&host), other.len() as u32);
    for g in msi.iter().chain(&msix).chain(&ims) {
        assert!(
            host.fire(0x100, g.message()).is_err(),
            "freed message delivered"
        );
    }
    assert!(host.fire(0x101, other[0].message()).is_ok());
    assert_eq!(ch.driver().reset_device(0).unwrap().count, 0);
    host.check_invariants().unwrap();
}

/// Virtio device reset ([DEV-1], §2.6): dropping the driver resets the device, which frees
/// every grant of the VM on every device while the VM itself lives on.
#[test]
fn virtio_reset_returns_every_grant_of_the_vm() {
    let host = host(256, 2);
    let devices = vec![dev(0x100, 8, 16, 16), dev(0x101, 0, 16, 0)];
    let mut ch = channel(&host, vm_config(64, devices));
    let t = targets(8, 0x40);
    let mut all = grant_n(&mut ch, 0, Kind::Msi, &t);
    all.extend(grant_n(&mut ch, 0, Kind::MsiX, &t[..5]));
    all.extend(grant_n(&mut ch, 0, Kind::Ims, &t[..3]));
    let other = grant_n(&mut ch, 1, Kind::MsiX, &t);
    assert_eq!(irtes_used(&host), (all.len() + other.len()) as u32);
    let vm = ch.vm().clone();
    drop(ch);
    let occ = vm.occupancy();
    assert_eq!((occ.held, occ.routes, occ.per_device), (0, 0, vec![0, 0]));
    let pool = host.occupancy();
    assert_eq!((irtes_used(&host), pool.vectors_used, pool.vms), (0, 0, 1));
    for g in &all {
        assert!(host.fire(0x100, g.message()).is_err());
    }
    assert!(host.fire(0x101, other[0].message()).is_err());
    host.check_invariants().unwrap();
    drop(vm);
    assert_eq!(host.occupancy().vms, 0);
}

/// Several requests in flight (§6): the device takes them in queue order ([DEV-13]), so a
/// FREE submitted after an ALLOC frees what it granted; each completion is matched to its
/// request by token and tag ([DRV-8]), in any order the driver takes them.
#[test]
fn requests_in_flight_take_effect_in_order_and_match_their_tokens() {
    let host = host(256, 2);
    let mut ch = channel(&host, vm_config(16, vec![dev(0x100, 0, 8, 0)]));
    let slots = ch.driver().slots();
    assert!(slots >= 5, "{slots} slots");
    let t = targets(2, 0x40);
    let at0 = Alloc {
        kind: Kind::MsiX,
        index: IndexSpec::At(0),
        min: 2,
        max: 2,
        pasid: None,
        targets: &t,
        targeting: Targeting::PerVector,
    };
    let ops = [
        Operation::Alloc(at0),
        Operation::Query,
        Operation::Free(run(Kind::MsiX, 0, 2).into()),
        Operation::Alloc(at0),
        Operation::Alloc(at0),
    ];
    let tokens: Vec<_> = ops
        .iter()
        .map(|op| ch.driver().submit(0, *op).unwrap())
        .collect();
    let mut extra = Vec::new();
    while extra.len() + tokens.len() < slots {
        extra.push(ch.driver().submit(0, Operation::Query).unwrap());
    }
    assert!(matches!(
        ch.driver().submit(0, Operation::Query),
        Err(Error::QueueFull)
    ));
    assert_eq!(ch.driver().in_flight(), slots);
    assert_eq!(ch.driver().poll().unwrap(), slots);
    // Take them last first: each answer is its own request's.
    let mut seen = Vec::new();
    let mut reply = vec![0; ch.driver().max_reply_len()];
    for (i, token) in tokens.iter().enumerate().rev() {
        let r = ch.driver().take(*token, &mut reply).unwrap().unwrap();
        assert_eq!(r.tag, token.tag(), "request {i}");
        assert_eq!(r.opcode, ops[i].opcode().to_wire(), "request {i}");
        let summary = match r.outcome {
            Outcome::Allocated { grants, .. } => format!("granted {}", grants.len()),
            Outcome::Queried { info, .. } => format!("granted now {}", info.granted),
            Outcome::Freed { count, .. } => format!("freed {count}"),
            Outcome::Refused(refusal) => format!("{refusal}"),
            other => format!("{other:?}"),
        };
        seen.push(summary);
    }
    seen.reverse();
    let in_use = format!("{}", Refusal::IndexInUse { index: 0 });
    assert_eq!(
        seen,
        [
            "granted 2",
            "granted now 2",
            "freed 2",
            "granted 2",
            in_use.as_str()
        ]
    );
    for token in &extra {
        assert!(ch.driver().take(*token, &mut reply).unwrap().is_some());
    }
    assert!(matches!(
        ch.driver().take(tokens[0], &mut reply),
        Err(Error::StaleToken)
    ));
    assert_eq!(ch.driver().in_flight(), 0);
    assert_eq!(ch.vm().occupancy().held, 2);
    host.check_invariants().unwrap();
}
