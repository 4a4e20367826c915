//! The whole path on real KVM: the guest driver asks for vectors through the pvirq channel,
//! programs the granted messages into a pass-through device's MSI-X table and IMS slots (in
//! guest memory), the device fires them, the host's remapping unit checks them, and the
//! irqfd of each grant's GSI route makes KVM interrupt the vCPU the guest named — where
//! the guest program counts it.
//!
//! Skipped (with a SKIPPED line) without `/dev/kvm`; failing instead with
//! `PVIRQ_REQUIRE_KVM=1`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use pvirq_guest::Options;
use pvirq_host::VmConfig;
use pvirq_host::kvm::{KvmRouteCounters, KvmRouteTable, KvmRoutes, RouteTableConfig};
use pvirq_host::model::RemapFault;
use pvirq_host::model::{FaultReason, ModelConfig, ModelHost};
use pvirq_proto::{
    Alloc, Grant, IndexRange, IndexSpec, Kind, MsiMessage, Refusal, Resource, Target, Targeting,
};
use pvirq_sim::Channel;
use pvirq_sim::kvm::{InterruptCounts, KvmGuest, require_kvm_or_skip};
use pvirq_sim::passthrough::{
    DeviceTables, PassthroughDevice, PassthroughError, Slot, TableRegion,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guard against hangs only; delivery takes microseconds.
const TIMEOUT: Duration = Duration::from_secs(5);
const GUEST_MEM: usize = 1 << 20;
/// Sent to every vCPU before the final check; no grant uses it. It has the lowest priority,
/// so once every vCPU counted it, anything delivered before it has been counted too.
const BARRIER: u8 = 0x20;
/// Device A (MSI-X and IMS) and device B (MSI-X only), behind IOMMU unit 0.
const DEV_A: u32 = 0;
const DEV_B: u32 = 1;
const RID_A: u16 = 0x0100;
const RID_B: u16 = 0x0200;
/// Where the devices' tables live: a region standing for their BARs.
const BAR: u64 = 0xFEB0_0000;
const PASID: u32 = 0x42;

/// The KVM guest, the host, the VM's pvirq channel (its routes are `KvmRoutes` on the
/// guest's VM) and two pass-through devices.
struct Rig {
    // Dropped first: the VM's route layer detaches its irqfds while the KVM VM still exists.
    channel: Channel,
    host: ModelHost,
    a: PassthroughDevice,
    b: PassthroughDevice,
    counters: Arc<KvmRouteCounters>,
    guest: KvmGuest,
    /// Interrupts each (vCPU, vector) should have counted so far.
    expected: BTreeMap<(usize, u8), u64>,
}

fn tables(mem: &GuestMemoryMmap, offset: u64, msix: u32, ims: u32) -> DeviceTables {
    let region = |at: u64, entries: u32| {
        (entries > 0).then_some(TableRegion {
            base: GuestAddress(BAR + at),
            entries,
        })
    };
    DeviceTables::new(
        mem.clone(),
        region(offset, msix),
        region(offset + 0x800, ims),
    )
    .unwrap()
}

impl Rig {
    /// `None` when KVM is missing (the skip line is printed).
    fn new(gsi_range: Option<Range<u32>>) -> Option<Rig> {
        if !require_kvm_or_skip() {
            return None;
        }
        let guest = KvmGuest::new(2, GUEST_MEM).unwrap();
        let table = match gsi_range {
            None => KvmRouteTable::new(guest.vm_fd()),
            Some(gsi_range) => {
                let config = RouteTableConfig {
                    gsi_range,
                    ..RouteTableConfig::default()
                };
                KvmRouteTable::with_config(guest.vm_fd(), config).unwrap()
            }
        };
        // Irqfds for as many routes as the quota (64) can use, or the table has.
        let capacity = 64.min(table.available() as u32);
        let routes = KvmRoutes::new(table, guest.vm_fd(), capacity).unwrap();
        let counters = routes.counters();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(BAR), 0x4000)]).unwrap();
        let a = PassthroughDevice::new(RID_A, tables(&mem, 0, 16, 16));
        let b = PassthroughDevice::new(RID_B, tables(&mem, 0x1000, 4, 0));
        let host = ModelHost::new(&ModelConfig::default()).unwrap();
        let config = VmConfig {
            quota: 64,
            num_vcpus: 2,
            max_batch: 64,
            devices: vec![a.spec(), b.spec()],
            ..VmConfig::default()
        };
        let channel = Channel::new(&host, config, Box::new(routes), Options::default()).unwrap();
        Some(Rig {
            channel,
            host,
            a,
            b,
            counters,
            guest,
            expected: BTreeMap::new(),
        })
    }

    /// The guest driver asks for one vector per target (all or nothing).
    fn alloc(
        &mut self,
        device: u32,
        kind: Kind,
        pasid: Option<u32>,
        targets: &[Target],
    ) -> Vec<Grant> {
        let n = targets.len() as u16;
        let mut grants = vec![Grant::new(0, MsiMessage::default()); targets.len()];
        let alloc = Alloc {
            kind,
            index: IndexSpec::Any,
            min: n,
            max: n,
            pasid,
            targets,
            targeting: Targeting::PerVector,
        };
        let granted = self
            .channel
            .driver()
            .alloc(device, alloc, &mut grants)
            .unwrap();
        assert_eq!(granted.grants.len(), targets.len());
        grants
    }

    /// Allocates on device A and programs each grant into its slot, as the guest driver
    /// would: message first, then unmask.
    fn alloc_and_program(&mut self, kind: Kind, targets: &[Target]) -> Vec<(Slot, Target)> {
        let pasid = (kind == Kind::Ims).then_some(PASID);
        let grants = self.alloc(DEV_A, kind, pasid, targets);
        grants
            .iter()
            .zip(targets)
            .map(|(grant, target)| {
                let slot = Slot::for_grant(kind, grant.index()).unwrap();
                self.a
                    .tables()
                    .program(slot, grant.message(), pasid)
                    .unwrap();
                (slot, *target)
            })
            .collect()
    }

    /// Device A fires `slot`; the host reports delivery to `target`, and the guest counts
    /// exactly one more interrupt there. One interrupt at a time: two on one vector sent
    /// before the first is taken would merge.
    fn fire(&mut self, slot: Slot, target: Target) {
        let delivery = self.a.fire(&self.host, slot).unwrap();
        assert_eq!(delivery.to(), Some((target.vcpu(), target.vector())));
        self.counted_once(slot, target);
    }

    /// Device A re-reads its pending slots: exactly `slot`'s held interrupt goes out, to
    /// `target`, and the guest counts it once.
    fn send_pending(&mut self, slot: Slot, target: Target) {
        let sent = self.a.poll_pending(&self.host);
        assert_eq!(sent.len(), 1, "{sent:?}");
        let (got, delivery) = &sent[0];
        assert_eq!(*got, slot);
        let to = delivery.as_ref().map(|d| d.to());
        assert_eq!(to.ok(), Some(Some((target.vcpu(), target.vector()))));
        self.counted_once(slot, target);
    }

    /// The guest counts one more interrupt at `target` (sent from `slot`).
    fn counted_once(&mut self, slot: Slot, target: Target) {
        let key = (target.vcpu() as usize, target.vector());
        let count = self.expected.entry(key).or_default();
        *count += 1;
        let want = *count;
        let seen = self
            .guest
            .wait_until(|c| c.get(key.0, key.1) >= want, TIMEOUT);
        assert!(seen.is_ok(), "{slot} to {target}: {seen:?}");
    }

    /// After a barrier every vCPU has taken everything sent to it: the counts are exactly
    /// the expected ones — nothing arrived twice, nothing arrived elsewhere.
    fn check_exact(&self) {
        self.guest.barrier(BARRIER, TIMEOUT).unwrap();
        let expected: InterruptCounts = self.expected.clone().into_iter().collect();
        assert_eq!(self.guest.snapshot().without_vector(BARRIER), expected);
    }
}

fn targets(list: &[(u32, u8)]) -> Vec<Target> {
    list.iter()
        .map(|&(vcpu, vector)| Target::new(vcpu, vector))
        .collect()
}

#[test]
fn every_granted_slot_delivers_once_to_the_vcpu_and_vector_it_names() {
    let Some(mut rig) = Rig::new(None) else {
        return;
    };
    let msix = rig.alloc_and_program(
        Kind::MsiX,
        &targets(&[(0, 0x41), (1, 0x42), (1, 0x43), (0, 0x44), (1, 0xFE)]),
    );
    let ims = rig.alloc_and_program(Kind::Ims, &targets(&[(1, 0x51), (0, 0x52), (0, 0x53)]));
    assert_eq!(
        rig.counters.commits(),
        2,
        "one KVM_SET_GSI_ROUTING per request"
    );
    for &(slot, _) in &ims {
        assert_eq!(rig.a.tables().read(slot).unwrap().pasid, Some(PASID));
    }
    for &(slot, target) in msix.iter().chain(&ims) {
        rig.fire(slot, target);
    }
    rig.check_exact();
    assert_eq!(rig.expected.len(), 8);
    assert_eq!(rig.host.delivered(), 8);
    assert_eq!(rig.host.faults().count, 0);
    rig.host.check_invariants().unwrap();
}

#[test]
fn retarget_moves_delivery_to_the_other_vcpu_without_touching_the_slot() {
    let Some(mut rig) = Rig::new(None) else {
        return;
    };
    let msix = rig.alloc_and_program(Kind::MsiX, &targets(&[(0, 0x60), (0, 0x61)]));
    let ims = rig.alloc_and_program(Kind::Ims, &targets(&[(1, 0x62)]));
    for &(slot, target) in msix.iter().chain(&ims) {
        rig.fire(slot, target);
    }
    let slots: Vec<Slot> = msix.iter().chain(&ims).map(|(slot, _)| *slot).collect();
    let before: Vec<_> = slots
        .iter()
        .map(|s| rig.a.tables().raw(*s).unwrap())
        .collect();

    let Slot::MsiX(first) = msix[0].0 else {
        unreachable!()
    };
    assert_eq!(msix[1].0, Slot::MsiX(first + 1), "the device chose a run");
    let moved_msix = targets(&[(1, 0x70), (1, 0x71)]);
    let range = IndexRange {
        kind: Kind::MsiX,
        first,
        count: 2,
    };
    let done = rig
        .channel
        .driver()
        .retarget(DEV_A, range, &moved_msix)
        .unwrap();
    assert_eq!(done.count, 2);
    let Slot::Ims(ims_index) = ims[0].0 else {
        unreachable!()
    };
    let moved_ims = targets(&[(0, 0x72)]);
    let range = IndexRange {
        kind: Kind::Ims,
        first: ims_index,
        count: 1,
    };
    rig.channel
        .driver()
        .retarget(DEV_A, range, &moved_ims)
        .unwrap();
    assert_eq!(rig.counters.commits(), 4);

    let after: Vec<_> = slots
        .iter()
        .map(|s| rig.a.tables().raw(*s).unwrap())
        .collect();
    assert_eq!(after, before, "the guest reprograms nothing");
    for (slot, target) in slots.iter().zip(moved_msix.iter().chain(&moved_ims)) {
        rig.fire(*slot, *target);
    }
    // The old destinations kept their one interrupt each; the new ones got one each.
    rig.check_exact();
    assert_eq!(rig.expected.len(), 6);
    assert!(rig.expected.values().all(|&n| n == 1));
}

#[test]
fn freed_and_foreign_messages_are_remapping_faults_never_deliveries() {
    let Some(mut rig) = Rig::new(None) else {
        return;
    };
    let msix = rig.alloc_and_program(Kind::MsiX, &targets(&[(0, 0x80), (1, 0x81)]));
    let ims = rig.alloc_and_program(Kind::Ims, &targets(&[(1, 0x82)]));
    for &(slot, target) in msix.iter().chain(&ims) {
        rig.fire(slot, target);
    }
    let live_message = rig.a.tables().read(msix[0].0).unwrap().message;

    // Free MSI-X entry 1 and the IMS slot, leaving both slots unmasked (a careless guest).
    let Slot::MsiX(freed) = msix[1].0 else {
        unreachable!()
    };
    let Slot::Ims(freed_ims) = ims[0].0 else {
        unreachable!()
    };
    let free = |kind, first| IndexRange {
        kind,
        first,
        count: 1,
    };
    rig.channel
        .driver()
        .free(DEV_A, free(Kind::MsiX, freed))
        .unwrap();
    rig.channel
        .driver()
        .free(DEV_A, free(Kind::Ims, freed_ims))
        .unwrap();
    assert_eq!(rig.channel.vm().occupancy().routes, 1);
    for slot in [msix[1].0, ims[0].0] {
        let err = rig.a.fire(&rig.host, slot).unwrap_err();
        assert!(
            matches!(
                err,
                PassthroughError::Fault { fault, .. } if fault.source_id == RID_A
                    && matches!(fault.reason, FaultReason::Remap(RemapFault::EntryNotPresent { .. }))
            ),
            "{err:?}"
        );
    }

    // Device B sends device A's live message: the IRTE names A's requester ID.
    rig.b
        .tables()
        .program(Slot::MsiX(0), live_message, None)
        .unwrap();
    let err = rig.b.fire(&rig.host, Slot::MsiX(0)).unwrap_err();
    assert!(
        matches!(
            err,
            PassthroughError::Fault { fault, .. } if fault.source_id == RID_B
                && matches!(fault.reason, FaultReason::Remap(RemapFault::SourceIdMismatch { expected: RID_A, .. }))
        ),
        "{err:?}"
    );
    // A masked slot sends nothing now: it holds the interrupt pending.
    rig.a.tables().mask(msix[0].0).unwrap();
    assert!(matches!(
        rig.a.fire(&rig.host, msix[0].0),
        Err(PassthroughError::Masked(_))
    ));

    let faults = rig.host.faults();
    assert_eq!(faults.count, 3);
    assert!(
        faults
            .recent
            .iter()
            .all(|f| matches!(f.reason, FaultReason::Remap(_)))
    );
    assert_eq!(rig.host.delivered(), 3, "no fault reached a route");
    rig.check_exact();

    // The grant that is still live delivers once unmasked again: first the interrupt held
    // while it was masked (once), then a new one.
    rig.a
        .tables()
        .program(msix[0].0, live_message, None)
        .unwrap();
    rig.send_pending(msix[0].0, msix[0].1);
    assert!(rig.a.poll_pending(&rig.host).is_empty(), "sent once");
    rig.fire(msix[0].0, msix[0].1);
    rig.check_exact();
}

#[test]
fn exhausted_routes_are_a_typed_refusal_and_earlier_grants_keep_working() {
    // Eight GSIs: the VM runs out of guest routes long before anything else.
    let Some(mut rig) = Rig::new(Some(24..32)) else {
        return;
    };
    let msix = rig.alloc_and_program(
        Kind::MsiX,
        &targets(&[(0, 0x90), (1, 0x91), (0, 0x92), (1, 0x93), (0, 0x94)]),
    );
    let occupancy = rig.host.occupancy();
    let ims_targets = targets(&[(1, 0xA0), (0, 0xA1), (1, 0xA2), (0, 0xA3)]);
    let mut grants = [Grant::new(0, MsiMessage::default()); 4];
    let alloc = Alloc {
        kind: Kind::Ims,
        index: IndexSpec::Any,
        min: 4,
        max: 4,
        pasid: Some(PASID),
        targets: &ims_targets,
        targeting: Targeting::PerVector,
    };
    let err = rig
        .channel
        .driver()
        .alloc(DEV_A, alloc, &mut grants)
        .unwrap_err();
    assert_eq!(
        err.refusal(),
        Some(Refusal::NoSpace {
            resource: Resource::GuestRoute,
            available: 3
        })
    );
    assert_eq!(err.exhausted(), Some(Resource::GuestRoute));
    assert_eq!(rig.host.occupancy(), occupancy, "a refusal holds nothing");
    assert_eq!(rig.counters.commits(), 1, "and commits nothing");

    // What the refusal offered is there; then nothing is.
    let ims = rig.alloc_and_program(Kind::Ims, &ims_targets[..3]);
    let err = rig
        .channel
        .driver()
        .alloc_irq_at(
            DEV_B,
            Kind::MsiX,
            IndexSpec::Any,
            Target::new(0, 0xB0),
            None,
        )
        .unwrap_err();
    assert_eq!(
        err.refusal(),
        Some(Refusal::NoSpace {
            resource: Resource::GuestRoute,
            available: 0
        })
    );
    rig.channel
        .vm()
        .with_routes(|r| assert_eq!((r.live(), r.available()), (8, 0)));

    for &(slot, target) in msix.iter().chain(&ims) {
        rig.fire(slot, target);
    }
    rig.check_exact();

    // Freeing one route makes room for exactly one more, which delivers too.
    let Slot::MsiX(last) = msix[4].0 else {
        unreachable!()
    };
    let range = IndexRange {
        kind: Kind::MsiX,
        first: last,
        count: 1,
    };
    rig.a.tables().mask(msix[4].0).unwrap();
    rig.channel.driver().free(DEV_A, range).unwrap();
    let grant = rig
        .channel
        .driver()
        .alloc_irq_at(
            DEV_B,
            Kind::MsiX,
            IndexSpec::At(2),
            Target::new(1, 0xB1),
            None,
        )
        .unwrap();
    rig.b
        .tables()
        .program(Slot::MsiX(2), grant.message(), None)
        .unwrap();
    let delivery = rig.b.fire(&rig.host, Slot::MsiX(2)).unwrap();
    assert_eq!(delivery.to(), Some((1, 0xB1)));
    rig.expected.insert((1, 0xB1), 1);
    rig.check_exact();
    rig.host.check_invariants().unwrap();
}
