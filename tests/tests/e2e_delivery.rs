//! What a granted message does when the assigned device sends it: it reaches the target
//! the guest asked for, only from its own requester ID ([DEV-2]), and stops with FREE.

use pvirq_host::model::{FaultReason, ModelHost};
use pvirq_proto::{Grant, IndexRange, Kind, MsiMessage, Target};
use pvirq_sim::Channel;
use pvirq_tests::setup::{channel, dev, host, targets, vm_config};

fn grant_n(ch: &mut Channel, kind: Kind, t: &[Target]) -> Vec<Grant> {
    let mut grants = vec![Grant::new(0, MsiMessage::default()); t.len()];
    let n = t.len() as u16;
    ch.driver()
        .alloc_irq_vectors(0, kind, n, t, &mut grants)
        .unwrap()
        .grants
        .to_vec()
}

fn lands(host: &ModelHost, rid: u16, message: MsiMessage) -> (u32, u8) {
    let d = host.fire(rid, message).unwrap();
    d.to().expect("a destination")
}

/// Every kind's grants deliver to their own targets; for an MSI block the device sends
/// grant 0's message with the vector number ORed into the data (§3.2), and that reaches
/// the target of that vector.
#[test]
fn each_kind_delivers_where_the_guest_asked() {
    let host = host(256, 2);
    let mut ch = channel(&host, vm_config(64, vec![dev(0x100, 8, 8, 8)]));
    let t_msix = targets(4, 0x40);
    let t_ims = targets(3, 0x60);
    let t_msi = targets(8, 0x80);
    for (kind, t) in [
        (Kind::MsiX, &t_msix),
        (Kind::Ims, &t_ims),
        (Kind::Msi, &t_msi),
    ] {
        let g = grant_n(&mut ch, kind, t);
        for (i, (grant, target)) in g.iter().zip(t.iter()).enumerate() {
            let want = (target.vcpu(), target.vector());
            assert_eq!(lands(&host, 0x100, grant.message()), want, "{kind}[{i}]");
            if kind == Kind::Msi {
                let mut block = g[0].message();
                block.data |= i as u32;
                assert_eq!(lands(&host, 0x100, block), want, "MSI message {i}");
            }
        }
    }
    let d = host.fire(0x100, MsiMessage::default());
    assert!(d.is_err(), "a compatibility-format message is blocked");
    assert_eq!(host.faults().count, 1);
}

/// A message fires only for the requester ID it was granted to; another device's attempt
/// is blocked and recorded ([DEV-2]). After FREE the message is blocked too, and when its
/// IRTE is granted again it reaches the new grant's target, not the old one.
#[test]
fn other_sources_and_freed_messages_fault() {
    let host = host(256, 2);
    let mut a = channel(&host, vm_config(8, vec![dev(0x100, 0, 8, 0)]));
    let _b = channel(&host, vm_config(8, vec![dev(0x200, 0, 8, 0)]));
    let g = grant_n(
        &mut a,
        Kind::MsiX,
        &[Target::new(1, 0x41), Target::new(2, 0x42)],
    );
    let faults = host.faults().count;
    for rid in [0x200, 0x101, 0xFFFF] {
        let f = host.fire(rid, g[0].message()).unwrap_err();
        assert_eq!((f.source_id, f.message), (rid, g[0].message()));
        assert!(matches!(f.reason, FaultReason::Remap(_)), "{f:?}");
    }
    assert_eq!(host.faults().count, faults + 3);
    let free = IndexRange {
        kind: Kind::MsiX,
        first: 0,
        count: 1,
    };
    a.driver().free(0, free).unwrap();
    let f = host.fire(0x100, g[0].message()).unwrap_err();
    assert!(matches!(f.reason, FaultReason::Remap(_)), "{f:?}");
    assert_eq!(host.faults().count, faults + 4);
    assert_eq!(host.faults().recent.last(), Some(&f));
    assert_eq!(
        lands(&host, 0x100, g[1].message()),
        (2, 0x42),
        "the other vector lives"
    );
    // The freed IRTE is the lowest free one: granted again with a new target.
    let again = grant_n(&mut a, Kind::MsiX, &[Target::new(3, 0x99)]);
    assert_eq!(again[0].message(), g[0].message());
    assert_eq!(lands(&host, 0x100, g[0].message()), (3, 0x99));
    host.check_invariants().unwrap();
}
