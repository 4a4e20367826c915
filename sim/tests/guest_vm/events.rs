//! What the VMM changes while the guest runs, and how the guest code hears of it: the
//! configuration interrupt and the event queue (queue 1 of the virtio-mmio front).

use super::{alloc, decl, dest, device, side};
use pvirq_host::DeviceSpec;
use pvirq_host::model::{ModelConfig, ModelHost};
use pvirq_proto::{EventBody, IndexSpec, Kind, PciIdentity, Targeting, feature};
use pvirq_sim::kvm::require_kvm_or_skip;

#[test]
fn the_guest_hears_of_a_quota_change_a_share_and_a_device_added_and_removed_in_order() {
    if !require_kvm_or_skip() {
        return;
    }
    let host = ModelHost::new(&ModelConfig::default()).unwrap();
    let vm = decl(feature::ALL, 2, 16, vec![device("nic", 0x0100, 16, 0)]);
    let mut side = side(&host, &vm);
    assert!(side.features() & feature::EVENTS != 0);
    assert!(side.events().unwrap().is_empty(), "nothing changed yet");

    let interrupts = side.guest().pvirq_interrupts();
    side.set_quota(24);
    side.set_device_share(0, Some(8)).unwrap();
    let interface = PciIdentity {
        segment: 0,
        bus: 0x05,
        devfn: 0x00,
        requester_id: 0x0500,
        pasid: Some(0x42),
    };
    let added = side
        .add_device(
            &host,
            DeviceSpec {
                requester_id: 0x0500,
                msix_table_size: 8,
                ims_slots: 16,
                guest_identity: Some(interface),
                ..DeviceSpec::default()
            },
        )
        .unwrap();
    assert_eq!(added, 1);
    // The configuration moved twice (quota, device): the guest was interrupted for it.
    assert!(side.guest().pvirq_interrupts() > interrupts);

    let events = side.events().unwrap();
    let bodies: Vec<EventBody> = events.iter().map(|e| e.event.body).collect();
    assert_eq!(
        bodies,
        vec![
            EventBody::Limits {
                device: None,
                limit: 24
            },
            EventBody::Limits {
                device: Some(0),
                limit: 8
            },
            EventBody::DeviceAdded { device: 1 },
        ]
    );
    let sequences: Vec<u32> = events.iter().map(|e| e.event.sequence).collect();
    assert_eq!(sequences, vec![1, 2, 3]);
    assert!(events.iter().all(|e| !e.applied), "no vector to reprogram");

    // The guest opened the new device: it asks, programs and fires through its BAR. (Its
    // IMS slots are no use to this driver: the channel offered no IMS when it came up.)
    let ext = side.query_ext(1).unwrap().ext.unwrap();
    assert_eq!(ext.identity, interface);
    let two = alloc(
        1,
        Kind::MsiX,
        IndexSpec::Any,
        Targeting::Spread,
        (2, 2),
        vec![dest(1, 0x58)],
    );
    let got = side.alloc(&two).unwrap();
    assert_eq!(got.grants.len(), 2, "{got:?}");
    let fire = side.fire(1, false).unwrap();
    assert_eq!((fire.fired, fire.delivered, fire.misrouted), (2, 2, 0));
    assert_eq!(side.guest().count(1, 0x58), 2);

    // Removed: its grants go with it, the guest is told and forgets them.
    side.remove_device(1).unwrap();
    assert_eq!(side.vm().occupancy().held, 0);
    let events = side.events().unwrap();
    assert_eq!(
        events.iter().map(|e| e.event.body).collect::<Vec<_>>(),
        vec![EventBody::DeviceRemoved { device: 1 }]
    );
    assert_eq!(events[0].event.sequence, 4);
}

#[test]
fn a_guest_that_fell_back_hears_available_when_a_neighbour_frees() {
    if !require_kvm_or_skip() {
        return;
    }
    let host = ModelHost::new(&ModelConfig::default()).unwrap();
    let vm = decl(feature::ALL, 2, 4, vec![device("nic", 0x0100, 16, 0)]);
    let mut side = side(&host, &vm);
    let two = alloc(
        0,
        Kind::MsiX,
        IndexSpec::Any,
        Targeting::Spread,
        (2, 2),
        vec![dest(0, 0x40)],
    );
    let kept = side.alloc(&two).unwrap();
    assert_eq!(kept.grants.len(), 2);
    // Four wanted, two left: refused NO_SPACE, which arms an AVAILABLE for the device.
    let four = alloc(
        0,
        Kind::MsiX,
        IndexSpec::Any,
        Targeting::Spread,
        (4, 4),
        vec![dest(1, 0x41)],
    );
    assert!(side.alloc(&four).unwrap().refused.is_some());
    assert!(side.events().unwrap().is_empty());
    let indices: Vec<u32> = kept.grants.iter().map(|g| g.index).collect();
    assert_eq!(side.free_list(0, Kind::MsiX, &indices).unwrap(), 2);
    let events = side.events().unwrap();
    assert_eq!(
        events.iter().map(|e| e.event.body).collect::<Vec<_>>(),
        vec![EventBody::Available {
            device: 0,
            count: 4
        }]
    );
    assert_eq!(side.alloc(&four).unwrap().grants.len(), 4);
}
