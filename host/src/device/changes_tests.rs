//! What the VMM changes while the device runs, through the device (spec §2.4, §12): the
//! AVAILABLE event, quota and share changes (LIMITS), devices added and removed; and the
//! same changes for a driver without the event queue, whose configuration holds still.

use super::test_utils::*;
use super::*;
use crate::error::HostError;
use crate::model::{ModelConfig, ModelHost, RemapConfig};
use pvirq_proto::{
    Alloc, EventBody, IndexRange, IndexSpec, Kind, Operation, Request, Resource, Status, Target,
    Targeting,
};

fn alloc(device: u32, min: u16, max: u16) -> Vec<u8> {
    let t: Vec<Target> = (0..max).map(|i| Target::new(1, 0x40 + i as u8)).collect();
    encode(&Request {
        device,
        tag: 7,
        op: Operation::Alloc(Alloc {
            kind: Kind::MsiX,
            index: IndexSpec::Any,
            min,
            max,
            pasid: None,
            targets: &t,
            targeting: Targeting::PerVector,
        }),
    })
}

fn free(device: u32, first: u32, count: u16) -> Vec<u8> {
    encode(&Request {
        device,
        tag: 8,
        op: Operation::Free(pvirq_proto::Indices::Run(IndexRange {
            kind: Kind::MsiX,
            first,
            count,
        })),
    })
}

/// Sends `request` on the request queue and returns its reply's header.
fn call(
    dev: &mut PvirqDevice<Mem>,
    req: &mut Driver<'_>,
    request: &[u8],
) -> (Status, u8, u32, u32) {
    let bufs = req.send(request, &[256]);
    let before = req.used_idx();
    dev.process_all();
    assert_eq!(req.used_idx(), before + 1, "the request was answered");
    header(&req.reply(&bufs, req.used(before).1))
}

fn num_devices(dev: &PvirqDevice<Mem>) -> u32 {
    let mut b = [0u8; 4];
    dev.read_config(4, &mut b);
    u32::from_le_bytes(b)
}

fn quota(dev: &PvirqDevice<Mem>) -> u32 {
    let mut b = [0u8; 4];
    dev.read_config(8, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn available_is_sent_once_an_alloc_could_get_the_refused_minimum() {
    let host = host();
    let mem = guest_memory();
    let mut req = Driver::new(&mem, 64);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, _irq) = events_device(vm(&host, 0x100, 4), &mem, &req, &evt);
    evt.give(4);
    assert_eq!(call(&mut dev, &mut req, &alloc(0, 4, 4)).0, Status::Ok);
    let refused = call(&mut dev, &mut req, &alloc(0, 2, 3));
    assert_eq!(
        (refused.0, refused.1),
        (Status::NoSpace, Resource::VmQuota.to_wire())
    );
    // One freed: an ALLOC could get 1, not the 2 refused.
    assert_eq!(call(&mut dev, &mut req, &free(0, 0, 1)).0, Status::Ok);
    assert_eq!(dev.vm().pending_events(), 0);
    assert_eq!(evt.drv.used_idx(), 0);
    // Two: AVAILABLE, with the count QUERY's `available` would give.
    assert_eq!(call(&mut dev, &mut req, &free(0, 1, 1)).0, Status::Ok);
    let events = evt.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].body,
        EventBody::Available {
            device: 0,
            count: 2
        }
    );
    // Sent once: freeing more says nothing until another refusal arms it again.
    assert_eq!(call(&mut dev, &mut req, &free(0, 2, 2)).0, Status::Ok);
    assert!(evt.events().is_empty());
    // A refusal for the other device arms it on its own.
    assert_eq!(call(&mut dev, &mut req, &alloc(0, 4, 4)).0, Status::Ok);
    assert_eq!(call(&mut dev, &mut req, &alloc(1, 1, 1)).0, Status::NoSpace);
    let reset = encode(&Request {
        device: 0,
        tag: 0,
        op: Operation::Reset,
    });
    assert_eq!(call(&mut dev, &mut req, &reset).0, Status::Ok);
    let events = evt.events();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.sequence, e.body))
            .collect::<Vec<_>>(),
        [(
            2,
            EventBody::Available {
                device: 1,
                count: 4
            }
        )]
    );
}

#[test]
fn available_follows_shared_resources_another_vm_releases_when_the_vmm_says_so() {
    // One remapping unit of 8 entries, shared by two VMs.
    let host = ModelHost::new(&ModelConfig {
        remap: RemapConfig {
            units: 1,
            entries_per_unit: 8,
        },
        ..ModelConfig::default()
    })
    .unwrap();
    let other = vm(&host, 0x300, 16);
    let t = [Target::new(0, 0x30); 6];
    let taken = other.call(&Request {
        device: 0,
        tag: 0,
        op: Operation::Alloc(Alloc::any(Kind::MsiX, 6, &t)),
    });
    assert_eq!(header(&taken).0, Status::Ok);
    let mem = guest_memory();
    let mut req = Driver::new(&mem, 64);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, _irq) = events_device(vm(&host, 0x100, 16), &mem, &req, &evt);
    evt.give(2);
    let refused = call(&mut dev, &mut req, &alloc(0, 4, 4));
    assert_eq!(
        (refused.0, refused.1, refused.3),
        (Status::NoSpace, Resource::Irte.to_wire(), 2)
    );
    // The other VM frees; this VM cannot see it until the VMM says so.
    let freed = other.call(&Request {
        device: 0,
        tag: 0,
        op: Operation::Reset,
    });
    assert_eq!(header(&freed).0, Status::Ok);
    assert_eq!(dev.vm().pending_events(), 0);
    dev.resources_changed();
    let events = evt.events();
    assert_eq!(
        events.iter().map(|e| e.body).collect::<Vec<_>>(),
        [EventBody::Available {
            device: 0,
            count: 8
        }]
    );
    host.check_invariants().unwrap();
}

#[test]
fn a_lower_quota_revokes_nothing_and_allocs_are_refused_until_the_vm_is_under_it() {
    let host = host();
    let mem = guest_memory();
    let mut req = Driver::new(&mem, 64);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, irq) = events_device(vm(&host, 0x100, 8), &mem, &req, &evt);
    evt.give(4);
    assert_eq!(call(&mut dev, &mut req, &alloc(0, 6, 6)).0, Status::Ok);
    irq.take();
    dev.set_quota(4);
    assert_eq!(irq.take(), [InterruptType::Config, InterruptType::Queue(1)]);
    assert_eq!(
        evt.events().iter().map(|e| e.body).collect::<Vec<_>>(),
        [EventBody::Limits {
            device: None,
            limit: 4
        }]
    );
    assert_eq!(quota(&dev), 4);
    assert_eq!(dev.occupancy().held, 6, "nothing revoked");
    dev.vm().check_invariants().unwrap();
    let refused = call(&mut dev, &mut req, &alloc(1, 1, 1));
    assert_eq!(
        refused,
        (Status::NoSpace, Resource::VmQuota.to_wire(), 0, 0),
        "[DEV-16]"
    );
    // Under the quota again: the refusal's AVAILABLE fires.
    assert_eq!(call(&mut dev, &mut req, &free(0, 0, 3)).0, Status::Ok);
    assert_eq!(
        evt.events().iter().map(|e| e.body).collect::<Vec<_>>(),
        [EventBody::Available {
            device: 1,
            count: 1
        }]
    );
    assert_eq!(call(&mut dev, &mut req, &alloc(1, 1, 1)).0, Status::Ok);
    assert_eq!(call(&mut dev, &mut req, &alloc(1, 1, 1)).0, Status::NoSpace);
    assert_eq!(dev.occupancy().held, 4);
    // A higher quota: the new refusal's AVAILABLE fires after the LIMITS.
    dev.set_quota(6);
    assert_eq!(
        evt.events().iter().map(|e| e.body).collect::<Vec<_>>(),
        [
            EventBody::Limits {
                device: None,
                limit: 6
            },
            EventBody::Available {
                device: 1,
                count: 2
            }
        ]
    );
    host.check_invariants().unwrap();
}

#[test]
fn a_share_change_is_reported_for_its_device() {
    let host = host();
    let mem = guest_memory();
    let req = Driver::new(&mem, 16);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, irq) = events_device(vm(&host, 0x100, 16), &mem, &req, &evt);
    evt.give(3);
    let generation = dev.config_generation();
    dev.set_device_share(1, Some(3)).unwrap();
    dev.set_device_share(1, Some(3)).unwrap();
    dev.set_device_share(1, None).unwrap();
    assert_eq!(
        evt.events().iter().map(|e| e.body).collect::<Vec<_>>(),
        [
            EventBody::Limits {
                device: Some(1),
                limit: 3
            },
            // No share: the quota bounds the device.
            EventBody::Limits {
                device: Some(1),
                limit: 16
            }
        ]
    );
    // Shares are not in the configuration space.
    assert_eq!(dev.config_generation(), generation);
    assert!(!irq.take().contains(&InterruptType::Config));
    assert_eq!(
        dev.set_device_share(5, Some(1)),
        Err(HostError::NoSuchDevice(5))
    );
}

#[test]
fn a_hot_added_device_grows_the_configuration_and_is_announced() {
    let host = host();
    let mem = guest_memory();
    let mut req = Driver::new(&mem, 64);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, irq) = events_device(vm(&host, 0x100, 16), &mem, &req, &evt);
    evt.give(2);
    let generation = dev.config_generation();
    let backend = host.attach(host.vm_id(dev.vm()).unwrap(), 0x300).unwrap();
    assert_eq!(dev.add_device(spec(0x300), Box::new(backend)), Ok(2));
    assert_eq!(num_devices(&dev), 3);
    assert_eq!(dev.config_generation(), generation.wrapping_add(1));
    assert_eq!(irq.take(), [InterruptType::Config, InterruptType::Queue(1)]);
    assert_eq!(
        evt.events().iter().map(|e| e.body).collect::<Vec<_>>(),
        [EventBody::DeviceAdded { device: 2 }]
    );
    assert_eq!(call(&mut dev, &mut req, &alloc(2, 3, 3)).0, Status::Ok);
    assert_eq!(dev.occupancy().per_device, [0, 0, 3]);
    // A requester ID already assigned is refused, and so is a bad table.
    let again = host.attach(host.vm_id(dev.vm()).unwrap(), 0x301).unwrap();
    assert_eq!(
        dev.add_device(spec(0x100), Box::new(again)),
        Err(HostError::SourceIdInUse(0x100))
    );
    assert_eq!(num_devices(&dev), 3);
    host.check_invariants().unwrap();
}

#[test]
fn a_removed_device_gives_everything_back_answers_no_device_and_is_announced() {
    let host = host();
    let mem = guest_memory();
    let mut req = Driver::new(&mem, 64);
    let mut evt = EventDriver::new(&mem, 8);
    let (mut dev, irq) = events_device(vm(&host, 0x100, 8), &mem, &req, &evt);
    assert_eq!(call(&mut dev, &mut req, &alloc(1, 5, 5)).0, Status::Ok);
    assert_eq!(call(&mut dev, &mut req, &alloc(0, 4, 4)).0, Status::NoSpace);
    // Events about device 1 wait (no buffer yet): a removal supersedes them.
    dev.set_device_share(1, Some(6)).unwrap();
    // Not enough for the 4 device 0 was refused.
    dev.set_quota(7);
    assert_eq!(dev.vm().pending_events(), 2);
    irq.take();
    let generation = dev.config_generation();
    let backend = dev.remove_device(1).unwrap();
    assert_eq!(dev.occupancy().held, 0);
    assert_eq!(
        host.occupancy().vectors_used,
        0,
        "released through its backend"
    );
    assert_eq!(
        host.occupancy().units[0].used,
        0,
        "its remapping entries too"
    );
    drop(backend);
    assert_eq!(num_devices(&dev), 2, "handles are never reused");
    assert_eq!(dev.config_generation(), generation);
    assert!(irq.take().is_empty(), "no configuration change, no buffer");
    evt.give(4);
    dev.process_queue(1, 64);
    // The freed quota fired the AVAILABLE device 0 was waiting for.
    assert_eq!(
        evt.events().iter().map(|e| e.body).collect::<Vec<_>>(),
        [
            EventBody::Limits {
                device: None,
                limit: 7
            },
            EventBody::DeviceRemoved { device: 1 },
            EventBody::Available {
                device: 0,
                count: 7
            }
        ]
    );
    for request in [alloc(1, 1, 1), free(1, 0, 1)] {
        assert_eq!(call(&mut dev, &mut req, &request).0, Status::NoDevice);
    }
    assert_eq!(dev.remove_device(1).err(), Some(HostError::NoSuchDevice(1)));
    assert_eq!(call(&mut dev, &mut req, &alloc(0, 1, 1)).0, Status::Ok);
    host.check_invariants().unwrap();
}

/// Spec §2.4: without the event queue the configuration does not change while the device
/// is live. A quota and an added device wait for the next device reset; a removal cannot
/// wait and is a surprise removal.
#[test]
fn without_the_event_queue_the_configuration_holds_still_until_the_next_reset() {
    let host = host();
    let mem = guest_memory();
    let mut req = Driver::new(&mem, 64);
    let (mut dev, irq) = active_device(vm(&host, 0x100, 8), &mem, &req.q);
    assert_eq!(call(&mut dev, &mut req, &alloc(1, 2, 2)).0, Status::Ok);
    let generation = dev.config_generation();
    dev.set_quota(3);
    let backend = host.attach(host.vm_id(dev.vm()).unwrap(), 0x300).unwrap();
    assert_eq!(dev.add_device(spec(0x300), Box::new(backend)), Ok(2));
    assert_eq!((quota(&dev), num_devices(&dev)), (8, 2));
    assert_eq!(dev.config_generation(), generation);
    assert_eq!(irq.raised(), 1, "the ALLOC's used-buffer interrupt alone");
    assert_eq!(
        call(&mut dev, &mut req, &alloc(2, 1, 1)).0,
        Status::NoDevice
    );
    assert_eq!(
        call(&mut dev, &mut req, &alloc(0, 4, 4)).0,
        Status::Ok,
        "quota 8"
    );
    // A removal takes effect at once.
    drop(dev.remove_device(1).unwrap());
    assert_eq!(call(&mut dev, &mut req, &free(1, 0, 2)).0, Status::NoDevice);
    assert_eq!(dev.occupancy().held, 4);
    assert_eq!(dev.vm().pending_events(), 0, "nothing recorded");
    host.check_invariants().unwrap();
    // The reset applies what waited.
    dev.reset();
    assert_eq!((quota(&dev), num_devices(&dev)), (3, 3));
    assert_ne!(dev.config_generation(), generation);
    let mut req = Driver::new(&mem, 64);
    let irq = std::sync::Arc::new(MmioInterrupt::new());
    dev.ack_features(pvirq_proto::feature::V1);
    dev.activate(
        atomic(&mem),
        irq,
        vec![req.q.create_queue().unwrap()],
        vec![vmm_sys_util::eventfd::EventFd::new(0).unwrap()],
    )
    .unwrap();
    assert_eq!(call(&mut dev, &mut req, &alloc(2, 3, 3)).0, Status::Ok);
    assert_eq!(
        call(&mut dev, &mut req, &alloc(1, 1, 1)).0,
        Status::NoDevice
    );
    assert_eq!(dev.occupancy().per_device, [0, 0, 3]);
    host.check_invariants().unwrap();
}
