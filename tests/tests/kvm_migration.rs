//! Live migration between two real KVM VMs: the source VM's grants deliver into its vCPUs
//! through `KvmRoutes` (an irqfd per GSI in its routing table); the device is saved,
//! restored on a fresh VM of the destination host whose routes are the destination KVM
//! VM's, and the guest driver carries on. Every grant then lands on the destination VM's
//! vCPUs, counted there by the guest program. Until released the source still delivers;
//! once released, its routes are gone from its KVM routing table and nothing reaches its
//! vCPUs any more — not the devices' messages (the source host's remapping drops them), not
//! an eventfd signalled on one of its old GSIs.
//!
//! A second test migrates a driver that negotiated the event queue to a destination with
//! other occupancy: the grants the destination gives new messages are reprogrammed and land
//! on the destination VM's vCPUs, the ones it cannot back are revoked.
//!
//! Skipped (with a SKIPPED line) without `/dev/kvm`; failing instead with
//! `PVIRQ_REQUIRE_KVM=1`.

mod events_guest;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use events_guest::EventsGuest;
use pvirq_guest::Options;
use pvirq_host::Vm;
use pvirq_host::kvm::{Gsi, KvmRouteTable, KvmRoutes};
use pvirq_host::model::{ModelConfig, ModelHost, RemapConfig};
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::snapshot::Restored;
use pvirq_proto::{
    Alloc, EventBody, IndexSpec, Kind, Operation, Request, Resource, Status, Target, feature,
};
use pvirq_sim::Channel;
use pvirq_sim::kvm::{InterruptCounts, KvmGuest, require_kvm_or_skip};
use pvirq_tests::workload::{self, Assigned, DEV_A, DEV_B, Devices, Programmed};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Guard against hangs only; delivery takes microseconds.
const TIMEOUT: Duration = Duration::from_secs(5);
const GUEST_MEM: usize = 1 << 20;
const VCPUS: u32 = 2;
/// Sent to every vCPU before a final check; no grant uses it (lowest priority: once counted,
/// everything sent before it has been counted).
const BARRIER: u8 = 0x20;

/// One host: its kernel, a KVM VM whose vCPUs count interrupts, the VM's routing table.
struct Side {
    host: ModelHost,
    guest: KvmGuest,
    table: Arc<Mutex<KvmRouteTable>>,
    /// Interrupts each (vCPU, vector) should have counted so far.
    expected: BTreeMap<(usize, u8), u64>,
}

impl Side {
    fn new() -> Side {
        Side::on(ModelHost::new(&ModelConfig::default()).unwrap())
    }

    /// A side whose kernel is `host`.
    fn on(host: ModelHost) -> Side {
        let guest = KvmGuest::new(VCPUS as usize, GUEST_MEM).unwrap();
        Side {
            host,
            table: Arc::new(Mutex::new(guest.route_table())),
            guest,
            expected: BTreeMap::new(),
        }
    }

    /// A pvirq VM on this host whose routes are this KVM VM's.
    fn vm(&self, assigned: &Assigned) -> Vm {
        let routes =
            KvmRoutes::new(Arc::clone(&self.table), self.guest.vm_fd(), workload::QUOTA).unwrap();
        self.host
            .create_vm(workload::vm_config(assigned, VCPUS), Box::new(routes))
            .unwrap()
    }

    /// One more interrupt at `(vcpu, vector)` is expected: waits until the guest counted it.
    fn counted(&mut self, vcpu: u32, vector: u8) {
        let key = (vcpu as usize, vector);
        let count = self.expected.entry(key).or_default();
        *count += 1;
        let want = *count;
        let seen = self
            .guest
            .wait_until(|c| c.get(key.0, key.1) >= want, TIMEOUT);
        assert!(seen.is_ok(), "{key:?}: {seen:?}");
    }

    /// The device fires `p` on this host; it lands on its target's vCPU here.
    fn fire(&mut self, assigned: &Assigned, p: &Programmed) {
        let delivery = assigned
            .fire(&self.host, p)
            .unwrap_or_else(|f| panic!("{p:?}: {f:?}"));
        assert_eq!(delivery.to(), Some((p.target.vcpu(), p.target.vector())));
        self.counted(p.target.vcpu(), p.target.vector());
    }

    /// Every vCPU took everything sent to it, and nothing else arrived.
    fn check_exact(&self) {
        self.guest.barrier(BARRIER, TIMEOUT).unwrap();
        let expected: InterruptCounts = self.expected.clone().into_iter().collect();
        assert_eq!(self.guest.snapshot().without_vector(BARRIER), expected);
    }
}

#[test]
fn a_migration_between_two_kvm_vms_delivers_on_the_destinations_vcpus_and_the_released_source_gets_nothing()
 {
    if !require_kvm_or_skip() {
        return;
    }
    let (mut source_side, mut dest_side) = (Side::new(), Side::new());
    let devices = Devices::new();
    let on_source = devices.on(0x0100, 0x0101);
    let on_dest = devices.on(0x0300, 0x0301);
    let mut ch = Channel::for_vm(source_side.vm(&on_source), Options::default()).unwrap();
    let programmed = workload::run(&mut ch, &devices, VCPUS);
    for p in &programmed {
        source_side.fire(&on_source, p);
    }
    source_side.check_exact();

    // A second eventfd on each of the source's GSIs, as the source host's interrupt
    // handler of a grant would signal it: each reaches the grant's target.
    let routes: Vec<(u32, (u32, u8))> = (0..2)
        .flat_map(|d| ch.vm().grants(d))
        .map(|(_, _, r)| {
            let dest = r.dest.expect("a live grant");
            (r.route, (dest.apic_id, dest.vector))
        })
        .collect();
    assert_eq!(routes.len(), programmed.len());
    let probes: Vec<(EventFd, (u32, u8))> = routes
        .iter()
        .map(|&(gsi, dest)| {
            let evt = EventFd::new(EFD_NONBLOCK).unwrap();
            source_side.guest.vm_fd().register_irqfd(&evt, gsi).unwrap();
            (evt, dest)
        })
        .collect();
    for (evt, (vcpu, vector)) in &probes {
        evt.write(1).unwrap();
        source_side.counted(*vcpu, *vector);
    }

    // Migration: the destination gives every grant the same message.
    let state = ch.pause_and_save();
    let (guest, mut source) = ch.detach();
    let (dest, report) = guest.restore(dest_side.vm(&on_dest), &state).unwrap();
    let mut ch = guest.attach(dest);
    assert!(
        report.iter().all(|r| r.outcome == Restored::Kept),
        "{report:?}"
    );
    for p in &programmed {
        dest_side.fire(&on_dest, p);
    }
    dest_side.check_exact();
    // Until released, the source keeps every grant, and its routes still deliver.
    source_side.fire(&on_source, &programmed[0]);

    // Released: its routes leave its KVM routing table, and nothing reaches its vCPUs.
    assert_eq!(source.finish_migration() as usize, programmed.len());
    {
        let table = source_side.table.lock().unwrap();
        for (gsi, _) in &routes {
            assert_eq!(table.route(Gsi::new(*gsi)), None, "GSI {gsi}");
        }
    }
    for p in &programmed {
        assert!(on_source.fire(&source_side.host, p).is_err(), "{p:?}");
    }
    for (evt, _) in &probes {
        evt.write(1).unwrap();
    }
    source_side.check_exact();

    // The guest goes on at the destination.
    let target = Target::new(1, 0xC0);
    let grant = ch
        .driver()
        .alloc_irq_at(DEV_A, Kind::MsiX, IndexSpec::At(12), target, None)
        .unwrap();
    let extra = Programmed {
        device: DEV_A,
        kind: Kind::MsiX,
        index: 12,
        message: grant.message(),
        target,
    };
    devices.program(&extra);
    dest_side.fire(&on_dest, &extra);
    dest_side.check_exact();
    source_side.check_exact();
    drop(source);
    dest_side.host.check_invariants().unwrap();
}

/// A driver with the event queue migrates between two KVM VMs whose hosts differ: the
/// destination has 12 remapping entries and another VM holds 3 of them. A's MSI block
/// keeps its entries; A's MSI-X vectors get others (REPROGRAM), B's cannot be backed
/// (REVOKE). Reprogrammed, every grant left lands on the destination VM's vCPUs.
#[test]
fn a_migration_with_the_event_queue_reprograms_and_revokes_between_two_kvm_vms() {
    if !require_kvm_or_skip() {
        return;
    }
    let mut source_side = Side::new();
    let dest_host = ModelHost::new(&ModelConfig {
        remap: RemapConfig {
            units: 1,
            entries_per_unit: 12,
        },
        ..ModelConfig::default()
    })
    .unwrap();
    let squatter = dest_host
        .create_vm(
            pvirq_tests::setup::vm_config(8, vec![pvirq_tests::setup::dev(0x200, 0, 8, 0)]),
            Box::new(MemoryRoutes::kvm_like()),
        )
        .unwrap();
    let three = [Target::new(0, 0x30); 3];
    let taken = squatter.call(&Request {
        device: 0,
        tag: 0,
        op: Operation::Alloc(Alloc::any(Kind::MsiX, 3, &three)),
    });
    assert_eq!(taken[1], Status::Ok.to_wire());
    let mut dest_side = Side::on(dest_host);
    let devices = Devices::new();
    let on_source = devices.on(0x0100, 0x0101);
    let on_dest = devices.on(0x0300, 0x0301);
    let vm0 = source_side.vm(&on_source);
    let features = feature::V1 | feature::INFO | feature::EVENTS;
    let mut guest = EventsGuest::new(vm0.clone(), features, 12);
    let t: Vec<Target> = (0..5)
        .map(|i| Target::new(i % VCPUS, 0x40 + i as u8))
        .collect();
    for (device, alloc) in [
        (DEV_A, Alloc::any(Kind::MsiX, 5, &t)),
        (DEV_B, Alloc::any(Kind::MsiX, 3, &t[..3])),
        (DEV_A, Alloc::any(Kind::Msi, 4, &t[..4])),
    ] {
        let request = Request {
            device,
            tag: 1,
            op: Operation::Alloc(alloc),
        };
        assert_eq!(guest.call(&request).0, Status::Ok);
    }
    let mut granted: Vec<Programmed> = [DEV_A, DEV_B]
        .into_iter()
        .flat_map(|d| {
            vm0.grants(d).into_iter().map(move |(kind, index, r)| {
                let dest = r.dest.expect("active");
                Programmed {
                    device: d,
                    kind,
                    index,
                    message: r.message,
                    target: Target::new(dest.apic_id, dest.vector),
                }
            })
        })
        .collect();
    for p in &granted {
        devices.program(p);
        source_side.fire(&on_source, p);
    }
    source_side.check_exact();

    let state = guest.pause_and_save();
    let vm1 = dest_side.vm(&on_dest);
    let (front, report) = guest.restore_on(vm1.clone(), &state).unwrap();
    assert_eq!(
        report
            .iter()
            .filter(|r| r.outcome == Restored::Kept)
            .count(),
        4
    );
    // The source holds everything until confirmed: its routes still deliver.
    source_side.fire(&on_source, &granted[0]);
    let source = guest.attach(front);
    let mut revoked = Vec::new();
    for event in guest.events() {
        match event.body {
            EventBody::Reprogram {
                device,
                kind,
                index,
                message,
                ..
            } => {
                let p = granted
                    .iter_mut()
                    .find(|p| (p.device, p.kind, p.index) == (device, kind, index))
                    .expect("held");
                p.message = message;
                devices.program(p);
            }
            EventBody::Revoke {
                device,
                kind,
                index,
                reason,
            } => {
                assert_eq!((device, reason), (DEV_B, Resource::Irte));
                let at = granted
                    .iter()
                    .position(|p| (p.device, p.kind, p.index) == (device, kind, index))
                    .expect("held");
                revoked.push(granted.remove(at));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((granted.len(), revoked.len()), (9, 3));
    for p in &granted {
        dest_side.fire(&on_dest, p);
    }
    for r in &revoked {
        assert!(on_dest.fire(&dest_side.host, r).is_err(), "{r:?}");
    }
    dest_side.check_exact();
    assert_eq!(source.device().lock().unwrap().finish_migration(), 12);
    for p in &granted {
        assert!(on_source.fire(&source_side.host, p).is_err(), "{p:?}");
    }
    source_side.check_exact();
    dest_side.host.check_invariants().unwrap();
}
