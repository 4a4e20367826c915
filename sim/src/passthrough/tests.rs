//! The device model on its own, with the in-memory route layer (no KVM needed).

use super::*;
use pvirq_host::model::RemapFault;
use pvirq_host::model::{FaultReason, ModelConfig, ModelHost};
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::{Vm, VmConfig};
use pvirq_proto::{
    Alloc, Grant, IndexRange, IndexSpec, Kind, MsiMessage, Operation, Outcome, Request, Response,
    Target, Targeting, feature,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const BAR: u64 = 0xFEB0_0000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(BAR), 0x1000)]).unwrap()
}

fn region(offset: u64, entries: u32) -> Option<TableRegion> {
    Some(TableRegion {
        base: GuestAddress(BAR + offset),
        entries,
    })
}

fn device(requester_id: u16, mem: &GuestMemoryMmap, offset: u64) -> PassthroughDevice {
    let tables = DeviceTables::new(mem.clone(), region(offset, 4), region(offset + 0x100, 4));
    PassthroughDevice::new(requester_id, tables.unwrap())
}

fn grant(vm: &Vm, handle: u32, kind: Kind, target: Target) -> Grant {
    let targets = [target];
    let reply = vm.call(&Request {
        device: handle,
        tag: 1,
        op: Operation::Alloc(Alloc {
            kind,
            index: IndexSpec::Any,
            min: 1,
            max: 1,
            pasid: None,
            targets: &targets,
            targeting: Targeting::PerVector,
        }),
    });
    match Response::decode(&reply, feature::V1).unwrap().outcome {
        Outcome::Allocated { grants, .. } => grants.get(0).unwrap().grant(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn tables_start_masked_and_must_fit_memory_without_overlapping() {
    let mem = memory();
    let dev = device(0x0100, &mem, 0);
    for slot in [Slot::MsiX(0), Slot::MsiX(3), Slot::Ims(0), Slot::Ims(3)] {
        assert!(dev.tables().read(slot).unwrap().masked, "{slot}");
    }
    assert!(matches!(
        dev.tables().read(Slot::Ims(4)),
        Err(PassthroughError::NoSuchSlot(Slot::Ims(4)))
    ));
    // 0xFF0 + 2 × 16 runs past the 4 KiB region.
    let err = DeviceTables::new(mem.clone(), region(0xFF0, 2), None).unwrap_err();
    assert!(matches!(
        err,
        PassthroughError::TableOutsideMemory { entries: 2, .. }
    ));
    let err = DeviceTables::new(mem.clone(), region(0, 4), region(0x30, 4)).unwrap_err();
    assert!(matches!(err, PassthroughError::TablesOverlap));
    assert!(DeviceTables::new(mem, region(0, 4), region(0x40, 4)).is_ok());
}

#[test]
fn programming_writes_the_message_then_unmasks_and_mask_keeps_it() {
    let mem = memory();
    let dev = device(0x0100, &mem, 0);
    let message = MsiMessage {
        address: 0xFEE0_0010,
        data: 0x7,
    };
    let tables = dev.tables();
    tables.program(Slot::MsiX(2), message, None).unwrap();
    assert_eq!(
        tables.raw(Slot::MsiX(2)).unwrap(),
        [0x10, 0, 0xE0, 0xFE, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        tables.address(Slot::MsiX(2)).unwrap(),
        GuestAddress(BAR + 32)
    );
    tables.program(Slot::Ims(1), message, Some(0x1234)).unwrap();
    let state = tables.read(Slot::Ims(1)).unwrap();
    assert_eq!(
        state,
        SlotState {
            message,
            masked: false,
            pasid: Some(0x1234)
        }
    );
    tables.mask(Slot::Ims(1)).unwrap();
    let masked = tables.read(Slot::Ims(1)).unwrap();
    assert_eq!(
        (masked.masked, masked.message, masked.pasid),
        (true, message, Some(0x1234))
    );
    assert!(matches!(
        tables.program(Slot::MsiX(0), message, Some(1)),
        Err(PassthroughError::PasidOnMsix(_))
    ));
    assert!(matches!(
        tables.program(Slot::Ims(0), message, Some(1 << 20)),
        Err(PassthroughError::PasidTooLarge(0x10_0000))
    ));
    // Neighbours are untouched.
    assert!(tables.read(Slot::MsiX(1)).unwrap().masked);
    assert!(tables.read(Slot::MsiX(3)).unwrap().masked);
}

#[test]
fn fire_sends_through_the_remapping_unit_and_masked_slots_stay_silent() {
    let mem = memory();
    let (a, b) = (device(0x0100, &mem, 0), device(0x0200, &mem, 0x400));
    let host = ModelHost::new(&ModelConfig::default()).unwrap();
    let config = VmConfig {
        quota: 8,
        num_vcpus: 2,
        max_batch: 8,
        devices: vec![a.spec(), b.spec()],
        ..VmConfig::default()
    };
    let vm = host
        .create_vm(config, Box::new(MemoryRoutes::kvm_like()))
        .unwrap();
    let msix = grant(&vm, 0, Kind::MsiX, Target::new(1, 0x40));
    let ims = grant(&vm, 0, Kind::Ims, Target::new(0, 0x41));
    let (msix_slot, ims_slot) = (Slot::MsiX(msix.index()), Slot::Ims(ims.index()));

    assert!(matches!(
        a.fire(&host, msix_slot),
        Err(PassthroughError::Masked(_))
    ));
    assert_eq!((a.sent(), a.suppressed(), host.faults().count), (0, 1, 0));

    a.tables().program(msix_slot, msix.message(), None).unwrap();
    a.tables()
        .program(ims_slot, ims.message(), Some(5))
        .unwrap();
    let d = a.fire(&host, msix_slot).unwrap();
    assert_eq!(d.to(), Some((1, 0x40)));
    // Programming unmasked the slot: that fire sent the one held while masked first.
    assert_eq!(a.sent(), 2);
    assert!(!a.is_pending(msix_slot));
    let d = a.fire(&host, ims_slot).unwrap();
    assert_eq!(d.to(), Some((0, 0x41)));

    // Device B sending A's message: the IRTE's source-id does not match.
    b.tables()
        .program(Slot::MsiX(0), msix.message(), None)
        .unwrap();
    let err = b.fire(&host, Slot::MsiX(0)).unwrap_err();
    let PassthroughError::Fault { fault, .. } = err else {
        panic!("{err:?}");
    };
    assert!(matches!(
        fault.reason,
        FaultReason::Remap(RemapFault::SourceIdMismatch {
            expected: 0x0100,
            ..
        })
    ));
    assert_eq!(fault.source_id, 0x0200);

    // Freed, but left unmasked: the stale message reaches no entry.
    let reply = vm.call(&Request {
        device: 0,
        tag: 2,
        op: Operation::Free(
            IndexRange {
                kind: Kind::MsiX,
                first: msix.index(),
                count: 1,
            }
            .into(),
        ),
    });
    assert!(matches!(
        Response::decode(&reply, feature::V1).unwrap().outcome,
        Outcome::Freed { count: 1, .. }
    ));
    let err = a.fire(&host, msix_slot).unwrap_err();
    assert!(matches!(
        err,
        PassthroughError::Fault { fault, .. }
            if matches!(fault.reason, FaultReason::Remap(RemapFault::EntryNotPresent { .. }))
    ));
    assert_eq!((a.sent(), b.sent(), host.faults().count), (4, 1, 2));
    vm.with_routes(|r| assert_eq!(r.live(), 1));
}

#[test]
fn a_masked_slot_holds_one_pending_interrupt_and_unmask_sends_it_exactly_once() {
    let mem = memory();
    let dev = device(0x0100, &mem, 0);
    let host = ModelHost::new(&ModelConfig::default()).unwrap();
    let config = VmConfig {
        quota: 8,
        num_vcpus: 2,
        max_batch: 8,
        devices: vec![dev.spec()],
        ..VmConfig::default()
    };
    let vm = host
        .create_vm(config, Box::new(MemoryRoutes::kvm_like()))
        .unwrap();
    for (kind, vector) in [(Kind::MsiX, 0x40), (Kind::Ims, 0x41)] {
        let g = grant(&vm, 0, kind, Target::new(1, vector));
        let slot = Slot::for_grant(kind, g.index()).unwrap();
        dev.tables().program(slot, g.message(), None).unwrap();
        dev.tables().mask(slot).unwrap();
        let sent = dev.sent();
        for _ in 0..3 {
            assert!(matches!(
                dev.fire(&host, slot),
                Err(PassthroughError::Masked(_))
            ));
        }
        assert!(dev.is_pending(slot), "{slot}");
        assert_eq!(dev.sent(), sent, "nothing leaves a masked slot");
        // Unmask: one interrupt, to the grant's destination; the bit clears.
        let d = dev
            .unmask(&host, slot)
            .unwrap()
            .expect("the pending interrupt");
        assert_eq!(d.to(), Some((1, vector)));
        assert!(!dev.is_pending(slot));
        assert_eq!(dev.sent(), sent + 1);
        // Nothing more at a second unmask; a fire now goes straight out.
        assert!(dev.unmask(&host, slot).unwrap().is_none());
        assert!(dev.fire(&host, slot).is_ok());
        assert_eq!(dev.sent(), sent + 2);
    }
    // Unmasking a slot that never fired sends nothing.
    assert!(dev.unmask(&host, Slot::MsiX(3)).unwrap().is_none());
}

/// A VM with `dev` assigned, and a grant of `kind` programmed into its slot, then masked.
fn masked_grant(dev: &PassthroughDevice, kind: Kind, vector: u8) -> (ModelHost, Vm, Slot) {
    let host = ModelHost::new(&ModelConfig::default()).unwrap();
    let config = VmConfig {
        quota: 8,
        num_vcpus: 2,
        max_batch: 8,
        devices: vec![dev.spec()],
        ..VmConfig::default()
    };
    let vm = host
        .create_vm(config, Box::new(MemoryRoutes::kvm_like()))
        .unwrap();
    let g = grant(&vm, 0, kind, Target::new(1, vector));
    let slot = Slot::for_grant(kind, g.index()).unwrap();
    dev.tables().program(slot, g.message(), None).unwrap();
    dev.tables().mask(slot).unwrap();
    (host, vm, slot)
}

#[test]
fn an_unmask_written_straight_into_the_table_still_sends_the_pending_interrupt_once() {
    let mem = memory();
    let dev = device(0x0100, &mem, 0);
    for (kind, vector) in [(Kind::MsiX, 0x40), (Kind::Ims, 0x41)] {
        let (host, _vm, slot) = masked_grant(&dev, kind, vector);
        for _ in 0..3 {
            assert!(dev.fire(&host, slot).is_err());
        }
        let sent = dev.sent();
        // The guest clears the mask with a plain table write: the device does not see it.
        dev.tables().unmask(slot).unwrap();
        assert!(dev.is_pending(slot), "{slot}: not re-read yet");
        // Its next re-read sends the held interrupt, once, to the grant's destination.
        let flushed = dev.poll_pending(&host);
        assert_eq!(flushed.len(), 1, "{slot}");
        let (got, delivery) = &flushed[0];
        assert_eq!(*got, slot);
        assert_eq!(delivery.as_ref().unwrap().to(), Some((1, vector)));
        assert!(!dev.is_pending(slot));
        assert_eq!(dev.sent(), sent + 1);
        // Nothing is left to send twice: not by a poll, not by the device's unmask.
        assert!(dev.poll_pending(&host).is_empty());
        assert!(dev.unmask(&host, slot).unwrap().is_none());
        assert_eq!(dev.sent(), sent + 1);
    }
}

#[test]
fn a_fire_after_a_direct_unmask_sends_the_held_interrupt_then_its_own() {
    let mem = memory();
    let dev = device(0x0100, &mem, 0);
    let (host, _vm, slot) = masked_grant(&dev, Kind::MsiX, 0x40);
    assert!(dev.fire(&host, slot).is_err());
    // The mask bit cleared by rewriting the whole entry (as a driver reprogramming it does).
    let message = dev.tables().read(slot).unwrap().message;
    dev.tables().program(slot, message, None).unwrap();
    let sent = dev.sent();
    let d = dev.fire(&host, slot).unwrap();
    assert_eq!(d.to(), Some((1, 0x40)));
    assert_eq!(dev.sent(), sent + 2, "the held interrupt, then the new one");
    assert!(!dev.is_pending(slot));
    assert!(dev.poll_pending(&host).is_empty());
    assert!(dev.unmask(&host, slot).unwrap().is_none());
    assert_eq!(dev.sent(), sent + 2);
}

#[test]
fn a_poll_sends_nothing_while_the_slot_stays_masked() {
    let mem = memory();
    let dev = device(0x0100, &mem, 0);
    let (host, _vm, slot) = masked_grant(&dev, Kind::Ims, 0x41);
    assert!(dev.fire(&host, slot).is_err());
    let sent = dev.sent();
    assert!(dev.poll_pending(&host).is_empty());
    // Another slot's fire re-reads this one too, and leaves it held.
    assert!(dev.fire(&host, Slot::MsiX(3)).is_err());
    assert!(dev.is_pending(slot));
    assert_eq!(dev.sent(), sent);
}

#[test]
fn a_parked_grant_is_programmed_masked_and_a_reprogram_keeps_mask_and_pasid() {
    let mem = memory();
    let tables = device(0x0100, &mem, 0).tables().clone();
    let (old, new) = (
        MsiMessage {
            address: 0xFEE0_0018,
            data: 0,
        },
        MsiMessage {
            address: 0xFEE0_0038,
            data: 7,
        },
    );
    tables
        .program_masked(Slot::Ims(1), old, Some(0x42))
        .unwrap();
    let state = tables.read(Slot::Ims(1)).unwrap();
    assert_eq!(
        (state.message, state.masked, state.pasid),
        (old, true, Some(0x42))
    );
    // The middle step of a reprogram: the message changes, nothing else.
    tables.write_message(Slot::Ims(1), new).unwrap();
    let state = tables.read(Slot::Ims(1)).unwrap();
    assert_eq!(
        (state.message, state.masked, state.pasid),
        (new, true, Some(0x42))
    );
    tables.unmask(Slot::Ims(1)).unwrap();
    tables.write_message(Slot::Ims(1), old).unwrap();
    let state = tables.read(Slot::Ims(1)).unwrap();
    assert_eq!((state.message, state.masked), (old, false));
    assert!(matches!(
        tables.program_masked(Slot::MsiX(0), old, Some(1)),
        Err(PassthroughError::PasidOnMsix(_))
    ));
    assert!(matches!(
        tables.write_message(Slot::MsiX(9), old),
        Err(PassthroughError::NoSuchSlot(_))
    ));
}
