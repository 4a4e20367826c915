//! Running out, through the whole path: each NO_SPACE reason reached for real, with the
//! right `available` ([DEV-7]), and several VMs drawing on one host pool ([DEV-17]).

use pvirq_guest::Options;
use pvirq_host::VmConfig;
use pvirq_host::model::ModelHost;
use pvirq_host::model::VectorConfig;
use pvirq_host::routes::{GuestRoutes, MemoryRoutes};
use pvirq_proto::{Grant, IndexRange, IndexSpec, Kind, MsiMessage, Refusal, Resource, Target};
use pvirq_sim::Channel;
use pvirq_tests::setup::{
    channel, dev, host, host_with_vectors, irtes_used, snapshot, targets, vm_config,
};

/// How many vectors the binding resource allows in each case.
const LIMIT: u32 = 6;

/// A host, VM configuration and route layer in which `resource` is the only one that
/// runs out, after [`LIMIT`] vectors.
fn shortage_of(resource: Resource) -> (ModelHost, VmConfig, Box<dyn GuestRoutes>) {
    let ample_vm = vm_config(64, vec![dev(0x100, 0, 64, 0)]);
    let kvm = || -> Box<dyn GuestRoutes> { Box::new(MemoryRoutes::kvm_like()) };
    match resource {
        Resource::VmQuota => (
            host(256, 2),
            vm_config(LIMIT, vec![dev(0x100, 0, 64, 0)]),
            kvm(),
        ),
        Resource::DeviceSlots => (
            host(256, 2),
            vm_config(64, vec![dev(0x100, 0, 6, 0)]),
            kvm(),
        ),
        Resource::Irte => (host(LIMIT, 2), ample_vm, kvm()),
        Resource::HostVector => {
            let vectors = VectorConfig {
                cpus: 1,
                first: 0x20,
                end: 0x20 + LIMIT as u8,
                reserved: vec![],
            };
            (host_with_vectors(256, vectors), ample_vm, kvm())
        }
        Resource::GuestRoute => {
            let routes = MemoryRoutes::with_range(24, LIMIT).unwrap();
            (host(256, 2), ample_vm, Box::new(routes))
        }
        // Not version-1 shortages: the extended causes need INFO, which this host does
        // not offer yet.
        Resource::None
        | Resource::IrteFragmented
        | Resource::SlotsFragmented
        | Resource::DeviceShare
        | Resource::DeviceRemoved => unreachable!(),
    }
}

fn one(ch: &mut Channel, t: Target) -> Result<Grant, pvirq_guest::Error> {
    ch.driver()
        .alloc_irq_at(0, Kind::MsiX, IndexSpec::Any, t, None)
}

/// Allocates one vector at a time until the device says no, for each resource in turn;
/// then frees some and checks that a larger request is refused with exactly what is free,
/// and that a min..max request gets exactly that.
#[test]
fn every_shortage_is_reached_and_named_with_what_is_left() {
    for resource in [
        Resource::VmQuota,
        Resource::DeviceSlots,
        Resource::Irte,
        Resource::HostVector,
        Resource::GuestRoute,
    ] {
        let (host, config, routes) = shortage_of(resource);
        let mut ch = Channel::new(&host, config, routes, Options::default()).unwrap();
        let available = ch.driver().query(0).unwrap().info.available;
        assert_eq!(available, LIMIT, "{resource}: QUERY available");
        let mut granted = 0;
        let refusal = loop {
            match one(&mut ch, Target::new(granted % 4, 0x40)) {
                Ok(_) => granted += 1,
                Err(e) => break e.refusal(),
            }
            assert!(granted <= LIMIT, "{resource}: granted past the limit");
        };
        assert_eq!(granted, LIMIT, "{resource}");
        assert_eq!(
            refusal,
            Some(Refusal::NoSpace {
                resource,
                available: 0
            }),
            "{resource}"
        );
        assert_eq!(ch.driver().query(0).unwrap().info.available, 0);
        let freed = 3;
        let run = IndexRange {
            kind: Kind::MsiX,
            first: 1,
            count: freed as u16,
        };
        ch.driver().free(0, run).unwrap();
        let before = snapshot(&host, &[ch.vm()]);
        let t = targets(8, 0x50);
        let mut grants = [Grant::new(0, MsiMessage::default()); 8];
        let e = ch
            .driver()
            .alloc_irq_vectors(0, Kind::MsiX, freed as u16 + 1, &t, &mut grants)
            .unwrap_err();
        assert_eq!(e.exhausted(), Some(resource), "{resource}");
        assert_eq!(e.fallback_count(), Some(freed as u16), "{resource}");
        assert_eq!(snapshot(&host, &[ch.vm()]), before, "{resource}: [DEV-9]");
        let a = ch
            .driver()
            .alloc_irq_vectors(0, Kind::MsiX, 1, &t, &mut grants)
            .unwrap();
        assert_eq!(a.grants.len() as u32, freed, "{resource}: [DEV-6]");
        host.check_invariants().unwrap();
    }
}

/// When several resources are short, NO_SPACE names the first in §3.3 order and
/// `available` is the largest count every resource could supply ([DEV-7]).
#[test]
fn the_first_short_resource_in_spec_order_is_named() {
    let host = host(5, 2);
    // Quota 7, device slots 6, IRTEs 5: all below 8.
    let mut ch = channel(&host, vm_config(7, vec![dev(0x100, 0, 6, 0)]));
    let t = targets(8, 0x40);
    let mut grants = [Grant::new(0, MsiMessage::default()); 8];
    let e = ch
        .driver()
        .alloc_irq_vectors(0, Kind::MsiX, 8, &t, &mut grants)
        .unwrap_err();
    assert_eq!(
        e.refusal(),
        Some(Refusal::NoSpace {
            resource: Resource::VmQuota,
            available: 5
        })
    );
    // min 7 is within the quota: device slots are next.
    let e = ch
        .driver()
        .alloc_irq_vectors(0, Kind::MsiX, 7, &t[..7], &mut grants)
        .unwrap_err();
    assert_eq!(e.exhausted(), Some(Resource::DeviceSlots));
    let e = ch
        .driver()
        .alloc_irq_vectors(0, Kind::MsiX, 6, &t[..6], &mut grants)
        .unwrap_err();
    assert_eq!(e.exhausted(), Some(Resource::Irte));
    assert_eq!(e.fallback_count(), Some(5));
}

/// Several VMs on one host pool: shared IRTEs go first come, first served; one VM's
/// shortage is reported to another with what is left; handles are per VM, and nothing a
/// VM does touches another's grants ([DEV-17]); a VM's end returns its share.
#[test]
fn several_vms_share_one_host_pool() {
    let irtes = 16;
    let host = host(irtes, 2);
    let cfg = |rid| vm_config(10, vec![dev(rid, 0, 16, 0)]);
    let (mut a, mut b, mut c) = (
        channel(&host, cfg(0x100)),
        channel(&host, cfg(0x200)),
        channel(&host, cfg(0x300)),
    );
    let t = targets(10, 0x40);
    let mut grants = [Grant::new(0, MsiMessage::default()); 10];
    let got_a = a
        .driver()
        .alloc_irq_vectors(0, Kind::MsiX, 1, &t, &mut grants)
        .unwrap()
        .grants
        .to_vec();
    assert_eq!(got_a.len(), 10);
    assert_eq!(c.driver().query(0).unwrap().info.available, irtes - 10);
    let got_b = b
        .driver()
        .alloc_irq_vectors(0, Kind::MsiX, 1, &t, &mut grants)
        .unwrap()
        .grants
        .to_vec();
    assert_eq!(
        got_b.len() as u32,
        irtes - 10,
        "partial grant of the shared pool"
    );
    let e = c
        .driver()
        .alloc_irq_vectors(0, Kind::MsiX, 1, &t, &mut grants)
        .unwrap_err();
    assert_eq!(
        e.refusal(),
        Some(Refusal::NoSpace {
            resource: Resource::Irte,
            available: 0
        })
    );
    // B frees its own index 0 (A also holds an index 0): A is untouched.
    let a_before = snapshot(&host, &[a.vm()]).vms;
    let run = |first, count| IndexRange {
        kind: Kind::MsiX,
        first,
        count,
    };
    b.driver().free(0, run(0, 2)).unwrap();
    assert_eq!(snapshot(&host, &[a.vm()]).vms, a_before);
    // B cannot free what only A holds.
    let e = b.driver().free(0, run(6, 1)).unwrap_err();
    assert_eq!(e.refusal(), Some(Refusal::NotGranted { index: 6 }));
    assert_eq!(snapshot(&host, &[a.vm()]).vms, a_before);
    // C now gets what B gave back, and sees it first in QUERY.
    assert_eq!(c.driver().query(0).unwrap().info.available, 2);
    let got_c = c
        .driver()
        .alloc_irq_vectors(0, Kind::MsiX, 2, &t, &mut grants)
        .unwrap()
        .grants
        .to_vec();
    assert_eq!(got_c.len(), 2);
    // Each VM's messages fire only for its own requester ID.
    for (rid, g) in [(0x100, &got_a[0]), (0x300, &got_c[0])] {
        assert!(host.fire(rid, g.message()).is_ok());
        let other = if rid == 0x100 { 0x300 } else { 0x100 };
        assert!(host.fire(other, g.message()).is_err(), "[DEV-2]");
    }
    assert_eq!(irtes_used(&host), irtes);
    host.check_invariants().unwrap();
    drop(a);
    assert_eq!(irtes_used(&host), irtes - 10);
    assert_eq!(host.occupancy().vms, 2);
    host.check_invariants().unwrap();
    drop((b, c));
    let occ = host.occupancy();
    assert_eq!((irtes_used(&host), occ.vectors_used, occ.vms), (0, 0, 0));
}
