//! Device tests over real ring layout in guest memory (`MockSplitQueue`).

use super::test_utils::*;
use super::*;
use crate::model::{FaultReason, RemapFault};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use pvirq_proto::{
    Alloc, Config, Field, IndexSpec, Kind, Operation, Outcome, Refusal, Request, Response, Status,
    Target, Targeting, feature,
};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::QueueT;
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use vm_memory::{Bytes, GuestAddress};

fn alloc_bytes(device: u32, max: u16) -> Vec<u8> {
    let t: Vec<Target> = (0..max)
        .map(|i| Target::new(u32::from(i % 2), 0x40 + i as u8))
        .collect();
    encode(&Request {
        device,
        tag: 9,
        op: Operation::Alloc(Alloc {
            kind: Kind::MsiX,
            index: IndexSpec::Any,
            min: 1,
            max,
            pasid: None,
            targets: &t,
            targeting: Targeting::PerVector,
        }),
    })
}

fn reset_bytes(device: u32) -> Vec<u8> {
    encode(&Request {
        device,
        tag: 1,
        op: Operation::Reset,
    })
}

fn refusal(bytes: &[u8]) -> Option<Refusal> {
    match Response::decode(bytes, feature::V1).unwrap().outcome {
        Outcome::Refused(r) => Some(r),
        _ => None,
    }
}

#[test]
fn config_space_and_offered_features() {
    let host = host();
    let vm = vm(&host, 0x100, 32);
    let dev = PvirqDevice::<Mem>::new(vm).unwrap();
    let mut bytes = [0u8; Config::SIZE];
    dev.read_config(0, &mut bytes);
    assert_eq!(bytes, [1, 0, 64, 0, 2, 0, 0, 0, 32, 0, 0, 0, 2, 0, 0, 0]);
    let mut tail = [0xFFu8; 4];
    dev.read_config(14, &mut tail);
    assert_eq!(tail, [0, 0, 0, 0]);
    // Version 1's bits, and the extensions but POSTED (the model host here cannot post) and
    // ACCESS_PLATFORM (the VMM did not ask for it).
    assert_eq!(
        dev.avail_features(),
        feature::V1 | feature::EXTENSIONS & !feature::POSTED & !feature::ACCESS_PLATFORM
    );
    // Provisional, outside virtio's list and crosvm's IDs counting down from 63 (spec §2.1).
    assert_eq!(dev.device_type(), 56);
    assert_eq!(dev.device_type(), pvirq_proto::VIRTIO_ID_PVIRQ);
}

#[test]
fn activation_needs_version_1_and_a_valid_queue() {
    let host = host();
    let mem = guest_memory();
    let mut dev = PvirqDevice::<Mem>::new(vm(&host, 0x100, 8)).unwrap();
    let irq = Arc::new(MmioInterrupt::new());
    let parts = || {
        let queue = virtio_queue::Queue::new(16).unwrap();
        let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        (vec![queue], vec![evt])
    };
    dev.ack_features(feature::MSIX);
    let (q, e) = parts();
    assert_eq!(
        dev.activate(atomic(&mem), irq.clone(), q, e),
        Err(crate::device::ActivateError::Version1)
    );
    dev.ack_features(feature::V1);
    let (q, e) = parts();
    assert_eq!(
        dev.activate(atomic(&mem), irq.clone(), q, e),
        Err(crate::device::ActivateError::QueueInvalid(0)),
        "queue not ready"
    );
    assert_eq!(
        dev.activate(atomic(&mem), irq.clone(), vec![], vec![]),
        Err(crate::device::ActivateError::QueueCount {
            expected: 2,
            got: 0
        })
    );
    assert!(!dev.is_activated());
    assert_eq!(dev.process_all(), Processed::default());
}

#[test]
fn alloc_through_the_queue_writes_grants_and_signals() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut dev, irq) = active_device(vm(&host, 0x100, 32), &mem, &drv.q);
    // The reply spans two writable descriptors.
    let bufs = drv.send(&alloc_bytes(0, 3), &[10, 62]);
    let done = dev.process_all();
    assert_eq!(
        done,
        Processed {
            chains: 1,
            more: false
        }
    );
    assert_eq!(drv.used_idx(), 1);
    let (head, len) = drv.used(0);
    assert_eq!((head, len), (0, 24 + 3 * 16));
    let reply = drv.reply(&bufs, len);
    match Response::decode(&reply, feature::V1).unwrap().outcome {
        Outcome::Allocated {
            grants,
            quota_remaining,
        } => {
            assert_eq!(grants.len(), 3);
            assert_eq!(quota_remaining, 29);
            let d = host.fire(0x100, grants.get(1).unwrap().message()).unwrap();
            let dest = d.dest.unwrap();
            assert_eq!((dest.apic_id, dest.vector), (1, 0x41));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
    let m = dev.metrics();
    assert_eq!(m.requests(pvirq_proto::Opcode::Alloc), 1);
    assert_eq!(m.replies(Status::Ok), 1);
    assert_eq!(dev.occupancy().held, 3);
}

#[test]
fn bad_chains_get_a_status_and_change_nothing() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 64);
    let (mut dev, _irq) = active_device(vm(&host, 0x100, 32), &mem, &drv.q);
    let req = alloc_bytes(0, 2);
    let req_addr = drv.alloc(req.len() as u32);
    mem.write_slice(&req, GuestAddress(req_addr)).unwrap();
    let out = drv.alloc(256);
    let w = |addr, len| Buf {
        addr,
        len,
        write: true,
    };
    let r = |addr, len| Buf {
        addr,
        len,
        write: false,
    };
    // 1. Only writable descriptors: no request at all.
    drv.offer(&[w(out, 256)]);
    // 2. Readable descriptor outside guest memory.
    drv.offer(&[r(MEM_SIZE + 0x1000, 48), w(out + 256, 256)]);
    let out2 = drv.alloc(512);
    // 3. Readable after writable.
    drv.offer(&[w(out2, 256), r(req_addr, req.len() as u32)]);
    // 4. Request split over two readable descriptors: fine.
    drv.offer(&[
        r(req_addr, 10),
        r(req_addr + 10, req.len() as u32 - 10),
        w(out2 + 256, 256),
    ]);
    // 5. Reply buffer below a header: nothing said.
    drv.offer(&[r(req_addr, req.len() as u32), w(out2 + 256, 20)]);
    // 6. Reply buffer below the largest reply: RESPONSE_TOO_SMALL, nothing reserved.
    let out3 = drv.alloc(64);
    drv.offer(&[r(req_addr, req.len() as u32), w(out3, 40)]);
    // 7. Writable descriptor outside guest memory: the write fails, everything rolls back.
    let out4 = drv.alloc(64);
    drv.offer(&[
        r(req_addr, req.len() as u32),
        w(out4, 24),
        w(MEM_SIZE - 8, 64),
    ]);
    assert_eq!(dev.process_all().chains, 7);

    let bad_len = Refusal::BadRequest {
        field: Field::Length,
        entry: 0,
    };
    let reply = |i: u16, addr: u64| {
        let (_, len) = drv.used(i);
        let mut b = vec![0u8; len as usize];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    };
    assert_eq!(refusal(&reply(0, out)), Some(bad_len));
    assert_eq!(refusal(&reply(1, out + 256)), Some(bad_len));
    assert_eq!(refusal(&reply(2, out2)), Some(bad_len));
    assert!(refusal(&reply(3, out2 + 256)).is_none());
    assert_eq!(drv.used(4).1, 0);
    assert_eq!(
        refusal(&reply(5, out3)),
        Some(Refusal::ResponseTooSmall { needed: 56 })
    );
    assert_eq!(drv.used(6).1, 0);
    // Only chain 4 holds anything.
    assert_eq!(dev.occupancy().held, 2);
    host.check_invariants().unwrap();
    assert_eq!(dev.metrics().snapshot().silent, 2);
    assert!(!dev.needs_reset());
}

#[test]
fn a_descriptor_loop_sets_needs_reset_without_hanging() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut dev, irq) = active_device(vm(&host, 0x100, 32), &mem, &drv.q);
    drv.send(&alloc_bytes(0, 1), &[64]);
    let buf = drv.alloc(64);
    // Two descriptors pointing at each other.
    let f = VRING_DESC_F_NEXT as u16;
    drv.offer_raw(&[
        RawDescriptor::from(Descriptor::new(buf, 16, f, 3)),
        RawDescriptor::from(Descriptor::new(buf, 16, f | VRING_DESC_F_WRITE as u16, 2)),
    ]);
    let done = dev.process_all();
    assert_eq!(done.chains, 1);
    assert!(dev.needs_reset());
    assert_eq!(
        irq.status() & VIRTIO_MMIO_INT_CONFIG,
        VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(dev.process_all().chains, 0);
    assert_eq!(dev.occupancy().held, 1);
    dev.reset();
    assert_eq!(dev.occupancy().held, 0);
    assert!(!dev.needs_reset());
    host.check_invariants().unwrap();
}

#[test]
fn a_next_index_outside_the_table_sets_needs_reset() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut dev, _irq) = active_device(vm(&host, 0x100, 32), &mem, &drv.q);
    let buf = drv.alloc(64);
    drv.offer_raw(&[RawDescriptor::from(Descriptor::new(
        buf,
        16,
        VRING_DESC_F_NEXT as u16,
        200,
    ))]);
    assert_eq!(dev.process_all().chains, 0);
    assert!(dev.needs_reset());
}

#[test]
fn a_bad_avail_index_sets_needs_reset() {
    let host = host();
    let mem = guest_memory();
    let drv = Driver::new(&mem, 16);
    let (mut dev, _irq) = active_device(vm(&host, 0x100, 32), &mem, &drv.q);
    drv.set_avail_idx(17);
    assert_eq!(dev.process_all().chains, 0);
    assert!(dev.needs_reset());
    assert_eq!(dev.metrics().snapshot().needs_reset, 1);
}

#[test]
fn device_reset_frees_every_grant_of_the_vm_only() {
    let host = host();
    let mem = guest_memory();
    let other = vm(&host, 0x200, 32);
    let mut drv = Driver::new(&mem, 16);
    let (mut dev, _irq) = active_device(vm(&host, 0x100, 32), &mem, &drv.q);
    drv.send(&alloc_bytes(0, 4), &[128]);
    drv.send(&alloc_bytes(1, 4), &[128]);
    let mut sink = crate::transaction::BufferSink::new(128);
    other.handle(&alloc_bytes(0, 2), &mut sink);
    dev.process_all();
    assert_eq!(dev.occupancy().held, 8);
    dev.reset();
    assert_eq!(dev.occupancy().held, 0);
    assert_eq!(other.occupancy().held, 2);
    assert_eq!(host.occupancy().vectors_used, 2);
    assert!(!dev.is_activated());
    host.check_invariants().unwrap();
}

#[test]
fn the_budget_bounds_one_notification_and_the_event_loop_comes_back() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 64);
    let (mut dev, _irq) = active_device(vm(&host, 0x100, 64), &mem, &drv.q);
    for _ in 0..10 {
        drv.send(&reset_bytes(0), &[24]);
    }
    dev.set_budget(4);
    let dev = Arc::new(Mutex::new(dev));
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    em.add_subscriber(dev.clone());
    dev.lock().unwrap().queue_evt(0).unwrap().write(1).unwrap();
    em.run_with_timeout(0).unwrap();
    assert_eq!(drv.used_idx(), 4);
    em.run_with_timeout(0).unwrap();
    assert_eq!(drv.used_idx(), 8);
    em.run_with_timeout(0).unwrap();
    assert_eq!(drv.used_idx(), 10);
    // Nothing pending: no more events.
    assert_eq!(em.run_with_timeout(0).unwrap(), 0);
    let m = dev.lock().unwrap().metrics().snapshot();
    assert_eq!(m.budget_yields, 2);
    assert_eq!(m.requests[5], ("reset", 10));
}

#[test]
fn one_vms_flood_does_not_starve_another_on_the_same_thread() {
    let host = host();
    let (mem_a, mem_b) = (guest_memory(), guest_memory());
    let mut drv_a = Driver::new(&mem_a, 256);
    let mut drv_b = Driver::new(&mem_b, 16);
    let (mut a, _) = active_device(vm(&host, 0x100, 64), &mem_a, &drv_a.q);
    let (b, _) = active_device(vm(&host, 0x200, 64), &mem_b, &drv_b.q);
    a.set_budget(8);
    for _ in 0..100 {
        drv_a.send(&reset_bytes(0), &[24]);
    }
    drv_b.send(&alloc_bytes(0, 1), &[64]);
    let (a, b) = (Arc::new(Mutex::new(a)), Arc::new(Mutex::new(b)));
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    em.add_subscriber(a.clone());
    em.add_subscriber(b.clone());
    a.lock().unwrap().queue_evt(0).unwrap().write(1).unwrap();
    b.lock().unwrap().queue_evt(0).unwrap().write(1).unwrap();
    em.run_with_timeout(0).unwrap();
    assert_eq!(drv_b.used_idx(), 1, "B served in the first round");
    assert_eq!(drv_a.used_idx(), 8, "A held to its budget");
    while em.run_with_timeout(0).unwrap() > 0 {}
    assert_eq!(drv_a.used_idx(), 100);
}

#[test]
fn mmio_identity_negotiation_and_inline_notify() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut regs, irq) = mmio(&mem, &host, NotifyMode::Inline);
    assert_eq!(regs.r(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(regs.r(VIRTIO_MMIO_VERSION), 2);
    assert_eq!(regs.r(VIRTIO_MMIO_DEVICE_ID), 56);
    regs.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(regs.r(VIRTIO_MMIO_DEVICE_FEATURES), 1);
    regs.w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    // Version 1's bits 0-4, and bits 5-12 but POSTED (7).
    assert_eq!(regs.r(VIRTIO_MMIO_DEVICE_FEATURES), 0x1F7F);
    let mut cfg = [0u8; 4];
    regs.0.read(u64::from(VIRTIO_MMIO_CONFIG) + 8, &mut cfg);
    assert_eq!(u32::from_le_bytes(cfg), 16, "vm_quota");
    // A feature the device does not offer: FEATURES_OK is refused.
    assert!(!bring_up(&mut regs, &drv, feature::VERSION_1 | 1 << 20));
    // Without VERSION_1 too.
    assert!(!bring_up(&mut regs, &drv, feature::MSIX));
    // MSI-X only: ALLOC of MSI-X works inline on QueueNotify; IMS is not negotiated.
    assert!(bring_up(
        &mut regs,
        &drv,
        feature::VERSION_1 | feature::MSIX
    ));
    let bufs = drv.send(&alloc_bytes(0, 2), &[64]);
    regs.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(drv.used_idx(), 1);
    let reply = drv.reply(&bufs, drv.used(0).1);
    assert!(refusal(&reply).is_none());
    assert_eq!(regs.r(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    regs.w(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(irq.status(), 0);
    let t = [Target::new(0, 0x40)];
    let ims = encode(&Request {
        device: 0,
        tag: 3,
        op: Operation::Alloc(Alloc::any(Kind::Ims, 1, &t)),
    });
    let bufs = drv.send(&ims, &[64]);
    regs.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(
        refusal(&drv.reply(&bufs, drv.used(1).1)),
        Some(Refusal::Unsupported { field: Field::Kind })
    );
    // Queue registers are frozen after DRIVER_OK.
    regs.w(VIRTIO_MMIO_QUEUE_NUM, 4);
    assert_eq!(regs.0.device().lock().unwrap().queue(0).unwrap().size(), 16);
    // Status 0 resets the device and frees the grants.
    assert_eq!(host.occupancy().vectors_used, 2);
    regs.w(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(regs.r(VIRTIO_MMIO_STATUS), 0);
    assert_eq!(host.occupancy().vectors_used, 0);
    host.check_invariants().unwrap();
}

#[test]
fn mmio_eventfd_mode_signals_the_event_loop_and_reports_needs_reset() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut regs, _irq) = mmio(&mem, &host, NotifyMode::EventFd);
    assert!(bring_up(&mut regs, &drv, feature::V1));
    drv.send(&alloc_bytes(0, 1), &[64]);
    regs.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(drv.used_idx(), 0, "not processed inline");
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    em.add_subscriber(regs.0.device().clone());
    assert_eq!(em.run_with_timeout(0).unwrap(), 1);
    assert_eq!(drv.used_idx(), 1);
    // A corrupt avail index shows up as NEEDS_RESET in the status register.
    drv.set_avail_idx(40);
    regs.w(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    em.run_with_timeout(0).unwrap();
    assert_ne!(regs.r(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_ne!(
        regs.r(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
        0
    );
}

#[test]
fn a_freed_handle_faults_when_the_device_fires_it() {
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut dev, _irq) = active_device(vm(&host, 0x100, 32), &mem, &drv.q);
    let bufs = drv.send(&alloc_bytes(0, 1), &[64]);
    dev.process_all();
    let reply = drv.reply(&bufs, drv.used(0).1);
    let msg = match Response::decode(&reply, feature::V1).unwrap().outcome {
        Outcome::Allocated { grants, .. } => grants.get(0).unwrap().message(),
        other => panic!("{other:?}"),
    };
    assert!(host.fire(0x100, msg).is_ok());
    // The sibling device of the same VM cannot use it either.
    assert!(matches!(
        host.fire(0x101, msg).unwrap_err().reason,
        FaultReason::Remap(RemapFault::SourceIdMismatch { .. })
    ));
    drv.send(&reset_bytes(0), &[24]);
    dev.process_all();
    assert_eq!(
        host.fire(0x100, msg).unwrap_err().reason,
        FaultReason::Remap(RemapFault::EntryNotPresent { index: 0 })
    );
    assert_eq!(host.faults().count, 2);
}

#[test]
fn every_status_is_reached_through_the_queue() {
    use crate::fault::{FaultKind, FaultPlan, Faulty};
    use pvirq_proto::{IndexRange, Retarget};
    let plan = FaultPlan::new();
    let host = host();
    let faulty_vm = host
        .create_vm_wrapped(
            crate::VmConfig {
                quota: 4,
                num_vcpus: 2,
                max_batch: 64,
                devices: vec![spec(0x100), spec(0x101)],
                ..crate::VmConfig::default()
            },
            |b| Box::new(Faulty::new(b, plan.clone())),
            Box::new(crate::routes::MemoryRoutes::kvm_like()),
        )
        .unwrap();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 64);
    let (mut dev, _irq) = active_device(faulty_vm, &mem, &drv.q);
    let t = [Target::new(0, 0x40), Target::new(7, 0x41)];
    let alloc = |kind, index, min, max, targets: &[Target]| {
        encode(&Request {
            device: 0,
            tag: 0,
            op: Operation::Alloc(Alloc {
                kind,
                index,
                min,
                max,
                pasid: None,
                targets,
                targeting: Targeting::PerVector,
            }),
        })
    };
    let free = |first, count| {
        encode(&Request {
            device: 0,
            tag: 0,
            op: Operation::Free(
                IndexRange {
                    kind: Kind::MsiX,
                    first,
                    count,
                }
                .into(),
            ),
        })
    };
    let mut requests = vec![
        alloc(Kind::MsiX, IndexSpec::At(0), 1, 1, &t[..1]), // ok
        alloc(Kind::MsiX, IndexSpec::Any, 5, 5, &[t[0]; 5]), // no-space (quota 4)
        vec![1, 0, 0],                                      // bad-request
        vec![7; 16],                                        // unsupported
        encode(&Request {
            device: 9,
            tag: 0,
            op: Operation::Query,
        }), // no-device
        alloc(Kind::MsiX, IndexSpec::At(64), 1, 1, &t[..1]), // index-out-of-range
        alloc(Kind::MsiX, IndexSpec::At(0), 1, 1, &t[..1]), // index-in-use
        free(5, 1),                                         // not-granted
        alloc(Kind::MsiX, IndexSpec::Any, 1, 2, &t),        // invalid-target
        alloc(Kind::MsiX, IndexSpec::Any, 1, 65, &[t[0]; 65]), // batch-too-large
    ];
    let retarget = encode(&Request {
        device: 0,
        tag: 0,
        op: Operation::Retarget(Retarget::run(
            IndexRange {
                kind: Kind::MsiX,
                first: 0,
                count: 1,
            },
            &t[..1],
        )),
    });
    requests.push(retarget);
    for r in &requests {
        drv.send(r, &[600]);
    }
    drv.send(&requests[0].clone(), &[30]); // response-too-small (needs 40)
    dev.process_all();
    // device-error: the host backend fails.
    plan.fail_nth(1, FaultKind::Failed);
    drv.send(&alloc(Kind::MsiX, IndexSpec::Any, 1, 1, &t[..1]), &[64]);
    dev.process_all();
    let m = dev.metrics();
    for status in Status::ALL {
        assert!(m.replies(*status) > 0, "{status} never replied");
    }
    assert_eq!(dev.occupancy().held, 1);
    host.check_invariants().unwrap();
}

/// A VMM names every type of the host's public signatures through `pvirq_host` alone, without
/// a dependency on `pvirq-proto` (issue 11, item 8).
#[test]
fn the_crate_root_re_exports_the_protocol_types_of_its_public_api() {
    use crate::{Config, Kind, MsiMessage, Opcode, Resource, Status};
    let host = host();
    let mem = guest_memory();
    let mut drv = Driver::new(&mem, 16);
    let (mut dev, _irq) = active_device(vm(&host, 0x100, 32), &mem, &drv.q);
    assert!(dev.vm().config().devices[0].supports(Kind::MsiX));
    let config: Config = dev.vm().config().virtio_config();
    assert_eq!(config.vm_quota.get(), 32);
    let bufs = drv.send(&alloc_bytes(0, 1), &[64]);
    dev.process_all();
    assert_eq!(dev.metrics().requests(Opcode::Alloc), 1);
    assert_eq!(dev.metrics().replies(Status::Ok), 1);
    let grant = match Response::decode(&drv.reply(&bufs, drv.used(0).1), feature::V1)
        .unwrap()
        .outcome
    {
        Outcome::Allocated { grants, .. } => grants.get(0).unwrap().message(),
        other => panic!("{other:?}"),
    };
    // The message a VMM reads from the device's MSI-X table, spelled with the host's type.
    let message = MsiMessage {
        address: grant.address,
        data: grant.data,
    };
    assert_eq!(
        host.fire(0x100, message).unwrap().to().map(|t| t.1),
        Some(0x40)
    );
    let fault = host.fire(0x101, message).unwrap_err();
    assert_eq!(fault.message, message);
    let _: Option<Resource> = None;
    let _: Option<(crate::GrantMode, crate::MessageFormat)> = None;
    let _: fn(&crate::Vm, &crate::Request<'_>) -> Vec<u8> = crate::Vm::call;
}

/// The device ID is provisional, so a VMM can present another one (spec §2.1); 0 means "no
/// device" on virtio-mmio and is refused.
#[test]
fn the_vmm_can_override_the_device_id() {
    let host = host();
    let mem = guest_memory();
    let irq = Arc::new(MmioInterrupt::new());
    let mut dev = PvirqDevice::<Mem>::new(vm(&host, 0x100, 16)).unwrap();
    assert!(matches!(
        dev.set_device_type(0),
        Err(crate::HostError::InvalidConfig(
            crate::ConfigError::DeviceIdZero
        ))
    ));
    assert_eq!(dev.device_type(), 56);
    dev.set_device_type(0x7001).unwrap();
    let t = MmioTransport::new(
        Arc::new(Mutex::new(dev)),
        atomic(&mem),
        irq,
        NotifyMode::Inline,
    )
    .unwrap();
    let mut id = [0u8; 4];
    t.read(u64::from(VIRTIO_MMIO_DEVICE_ID), &mut id);
    assert_eq!(u32::from_le_bytes(id), 0x7001);
    // A device reset does not forget it: the ID is the VMM's, not the driver's.
    let mut t = t;
    t.write(u64::from(VIRTIO_MMIO_STATUS), &0u32.to_le_bytes());
    t.read(u64::from(VIRTIO_MMIO_DEVICE_ID), &mut id);
    assert_eq!(u32::from_le_bytes(id), 0x7001);
}

/// Spec §2.2: a kind's bit is offered only when some assigned device has that kind.
#[test]
fn offered_features_follow_the_assigned_devices() {
    let host = host();
    let only = |msi_max, msix_table_size, ims_slots, base| {
        let vm = host
            .create_vm(
                crate::VmConfig {
                    quota: 8,
                    num_vcpus: 1,
                    max_batch: 8,
                    devices: vec![crate::DeviceSpec {
                        requester_id: base,
                        msi_max,
                        msix_table_size,
                        ims_slots,
                        ..crate::DeviceSpec::default()
                    }],
                    ..crate::VmConfig::default()
                },
                Box::new(crate::routes::MemoryRoutes::kvm_like()),
            )
            .unwrap();
        PvirqDevice::<Mem>::new(vm).unwrap().avail_features()
    };
    let base = feature::VERSION_1
        | feature::RETARGET
        | feature::EXTENSIONS & !feature::POSTED & !feature::ACCESS_PLATFORM;
    assert_eq!(only(0, 16, 0, 0x300), base | feature::MSIX);
    assert_eq!(only(4, 0, 0, 0x301), base | feature::MSI);
    assert_eq!(only(0, 0, 8, 0x302), base | feature::IMS | feature::PASID);
}
