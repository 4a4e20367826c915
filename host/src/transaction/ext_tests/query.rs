//! QUERY's extended body (spec §4.4) and the version-1 body a driver without `INFO` keeps.

use super::*;
use crate::model::Placement;
use pvirq_proto::{MessageFormat, PciIdentity};

#[test]
fn the_extended_body_reports_identity_format_share_runs_and_drops() {
    let host = host(64, 64, true);
    host.place_as(0x200, Placement::Amd { entries: 512 })
        .unwrap();
    let interface = PciIdentity {
        segment: 1,
        bus: 3,
        devfn: 0x11,
        requester_id: 0x0310,
        pasid: Some(5),
    };
    let mut a = dev(0x100, 4, 16, 32);
    a.guest_identity = Some(interface);
    a.share = Some(12);
    let vm = vm(&host, config(20, vec![a, dev(0x200, 0, 8, 0)]), ALL);
    // MSI-X 0..3 and 5, IMS 10..12 granted: free runs 10 (6..16) and 20 (12..32).
    let t = targets(5);
    grants(
        &vm,
        0,
        alloc(
            Kind::MsiX,
            IndexSpec::At(0),
            (3, 3),
            Targeting::PerVector,
            &t[..3],
        ),
    )
    .unwrap();
    grants(
        &vm,
        0,
        alloc(
            Kind::MsiX,
            IndexSpec::At(5),
            (1, 1),
            Targeting::PerVector,
            &t[..1],
        ),
    )
    .unwrap();
    grants(
        &vm,
        0,
        alloc(Kind::Ims, IndexSpec::At(10), (2, 2), Targeting::Parked, &[]),
    )
    .unwrap();
    let q = query(&vm, 0);
    let ext = q.ext.unwrap();
    assert_eq!(ext.identity, interface);
    assert_eq!(ext.format, MessageFormat::VtdRemappable);
    assert!(ext.can_post);
    assert_eq!((ext.share, q.granted, q.available), (12, 6, 6));
    assert_eq!((ext.msix_free_run, ext.ims_free_run), (10, 20));
    assert_eq!(ext.parked_drops, 0);
    let parked = vm
        .grants(0)
        .into_iter()
        .find(|(k, _, _)| *k == Kind::Ims)
        .unwrap()
        .2;
    host.fire(0x100, parked.message).unwrap();
    assert_eq!(query(&vm, 0).ext.unwrap().parked_drops, 1);

    // The AMD device: its own format, an identity from its requester ID, the VM's quota
    // as its share, no IMS.
    let ext = query(&vm, 1).ext.unwrap();
    assert_eq!(ext.format, MessageFormat::AmdRemapped);
    assert_eq!(
        ext.identity,
        PciIdentity {
            segment: 0,
            bus: 2,
            devfn: 0,
            requester_id: 0x200,
            pasid: None,
        }
    );
    assert_eq!((ext.share, ext.msix_free_run, ext.ims_free_run), (20, 8, 0));
}

#[test]
fn a_kind_not_negotiated_reports_no_free_run_and_version_1_gets_24_bytes() {
    let host = host(64, 64, false);
    let vm = vm(
        &host,
        config(20, vec![dev(0x100, 0, 16, 32)]),
        feature::VERSION_1 | feature::IMS | feature::INFO,
    );
    let ext = query(&vm, 0).ext.unwrap();
    assert_eq!((ext.msix_free_run, ext.ims_free_run), (0, 32));
    assert_eq!(call(&vm, 0, Operation::Query).len(), 24 + 64);
    vm.set_features(feature::V1);
    let reply = call(&vm, 0, Operation::Query);
    assert_eq!(reply.len(), 24 + 24);
    assert_eq!(query(&vm, 0).ext, None);
}
