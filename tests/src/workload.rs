//! A guest's interrupt setup on two pass-through devices, for the snapshot, restore and
//! migration tests: the guest driver allocates every kind (MSI-X on both devices, IMS with
//! a PASID, a multi-MSI block), retargets some vectors and frees one, and programs each
//! grant into its device's storage; afterwards every grant is fired from its device and
//! must land on its target.
//!
//! The devices' MSI-X tables and IMS slots ([`Devices`]) are the devices' own state: a
//! migration carries them, so the destination's devices ([`Devices::on`], with the
//! destination's requester IDs) send what the guest programmed on the source.

use pvirq_host::model::{Delivery, Fault, ModelHost};
use pvirq_host::routes::RouteBook;
use pvirq_host::{DeviceSpec, GuestDest, VmConfig};
use pvirq_proto::{Alloc, Grant, IndexRange, IndexSpec, Kind, MsiMessage, Target, Targeting};
use pvirq_sim::Channel;
use pvirq_sim::passthrough::{
    DeviceTables, PassthroughDevice, PassthroughError, Slot, TableRegion,
};
use std::sync::Mutex;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Where the devices' tables live: a region standing for their BARs.
const BAR: u64 = 0xFEB0_0000;
/// The PASID the IMS grants are for.
pub const PASID: u32 = 0x42;
/// Device handles.
pub const DEV_A: u32 = 0;
/// Device handles.
pub const DEV_B: u32 = 1;
/// Device A's multi-MSI block size.
const MSI_MAX: u16 = 4;

/// The two assigned devices' interrupt storage: A has MSI, 16 MSI-X entries and 16 IMS
/// slots; B has 8 MSI-X entries.
#[derive(Clone, Debug)]
pub struct Devices {
    a: DeviceTables,
    b: DeviceTables,
}

/// The two devices as one host sees them (its requester IDs).
#[derive(Debug)]
pub struct Assigned {
    /// Device A.
    pub a: PassthroughDevice,
    /// Device B.
    pub b: PassthroughDevice,
}

/// One grant as the guest programmed it, and where it must land.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Programmed {
    /// Device handle.
    pub device: u32,
    /// Kind.
    pub kind: Kind,
    /// Index in the device's table (for MSI, the vector in the block).
    pub index: u32,
    /// What the device sends (for MSI, the block's message with the vector in its data).
    pub message: MsiMessage,
    /// Where it must land.
    pub target: Target,
}

impl Default for Devices {
    fn default() -> Self {
        Self::new()
    }
}

impl Devices {
    /// Fresh tables, every slot masked.
    pub fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(BAR), 0x4000)]).expect("BAR");
        let region = |at: u64, entries: u32| {
            Some(TableRegion {
                base: GuestAddress(BAR + at),
                entries,
            })
        };
        Devices {
            a: DeviceTables::new(mem.clone(), region(0, 16), region(0x800, 16)).expect("A"),
            b: DeviceTables::new(mem, region(0x1000, 8), None).expect("B"),
        }
    }

    /// The devices on a host where they have requester IDs `rid_a` and `rid_b`.
    pub fn on(&self, rid_a: u16, rid_b: u16) -> Assigned {
        Assigned {
            a: PassthroughDevice::new(rid_a, self.a.clone()),
            b: PassthroughDevice::new(rid_b, self.b.clone()),
        }
    }

    fn tables(&self, device: u32) -> &DeviceTables {
        if device == DEV_A { &self.a } else { &self.b }
    }

    /// The guest programs `p` into its device's table slot and unmasks it (MSI lives in
    /// config space: nothing to do here).
    pub fn program(&self, p: &Programmed) {
        if let Some(slot) = Slot::for_grant(p.kind, p.index) {
            let pasid = (p.kind == Kind::Ims).then_some(PASID);
            self.tables(p.device)
                .program(slot, p.message, pasid)
                .expect("program");
        }
    }
}

impl Assigned {
    /// How the VMM describes them (A with its MSI block).
    pub fn specs(&self) -> Vec<DeviceSpec> {
        vec![
            DeviceSpec {
                msi_max: MSI_MAX,
                ..self.a.spec()
            },
            self.b.spec(),
        ]
    }

    fn device(&self, handle: u32) -> &PassthroughDevice {
        if handle == DEV_A { &self.a } else { &self.b }
    }

    /// The device fires `p`: from its table slot, or (MSI) its MSI capability.
    pub fn fire(&self, host: &ModelHost, p: &Programmed) -> Result<Delivery, Fault> {
        let device = self.device(p.device);
        match Slot::for_grant(p.kind, p.index) {
            None => host.fire(device.requester_id(), p.message),
            Some(slot) => match device.fire(host, slot) {
                Ok(delivery) => Ok(delivery),
                Err(PassthroughError::Fault { fault, .. }) => Err(fault),
                Err(other) => panic!("{slot}: {other}"),
            },
        }
    }
}

/// The VM's quota: the workload holds 14 vectors, so the quota binds before the tables.
pub const QUOTA: u32 = 20;

/// A VM configuration for `assigned`: quota [`QUOTA`], `vcpus` vCPUs.
pub fn vm_config(assigned: &Assigned, vcpus: u32) -> VmConfig {
    VmConfig {
        quota: QUOTA,
        num_vcpus: vcpus,
        max_batch: 64,
        devices: assigned.specs(),
        ..VmConfig::default()
    }
}

/// `n` targets over `vcpus` vCPUs from `first` on, one vector each.
fn targets(n: u8, first: u8, vcpus: u32) -> Vec<Target> {
    (0..n)
        .map(|i| Target::new(u32::from(i) % vcpus, first + i))
        .collect()
}

fn alloc(ch: &mut Channel, device: u32, alloc: Alloc<'_>) -> Vec<Grant> {
    let mut grants = vec![Grant::new(0, MsiMessage::default()); usize::from(alloc.max)];
    let granted = ch
        .driver()
        .alloc(device, alloc, &mut grants)
        .expect("alloc");
    assert_eq!(granted.grants.len(), usize::from(alloc.max));
    grants
}

/// The workload, through the guest driver; returns what it programmed.
pub fn run(ch: &mut Channel, devices: &Devices, vcpus: u32) -> Vec<Programmed> {
    let mut out = Vec::new();
    let mut record = |device: u32, kind: Kind, grants: &[Grant], targets: &[Target]| {
        for (g, t) in grants.iter().zip(targets) {
            out.push(Programmed {
                device,
                kind,
                index: g.index(),
                message: g.message(),
                target: *t,
            });
        }
    };
    let t = targets(5, 0x40, vcpus);
    let g = alloc(ch, DEV_A, Alloc::any(Kind::MsiX, 5, &t));
    record(DEV_A, Kind::MsiX, &g, &t);
    let t = targets(3, 0x50, vcpus);
    let g = alloc(ch, DEV_B, Alloc::any(Kind::MsiX, 3, &t));
    record(DEV_B, Kind::MsiX, &g, &t);
    let t = targets(3, 0x60, vcpus);
    let ims = Alloc {
        kind: Kind::Ims,
        index: IndexSpec::At(3),
        min: 3,
        max: 3,
        pasid: Some(PASID),
        targeting: Targeting::PerVector,
        targets: &t,
    };
    let g = alloc(ch, DEV_A, ims);
    record(DEV_A, Kind::Ims, &g, &t);
    // Multi-MSI: one message for the block; vector i is sent with i in its data.
    let t = targets(MSI_MAX as u8, 0x70, vcpus);
    let g = alloc(ch, DEV_A, Alloc::any(Kind::Msi, MSI_MAX, &t));
    for (i, target) in t.iter().enumerate() {
        let mut message = g[0].message();
        message.data |= i as u32;
        out.push(Programmed {
            device: DEV_A,
            kind: Kind::Msi,
            index: i as u32,
            message,
            target: *target,
        });
    }
    // Two of A's MSI-X vectors move; one of B's is freed.
    let moved = targets(2, 0x80, vcpus);
    let moved: Vec<Target> = moved
        .iter()
        .map(|t| Target::new((t.vcpu() + 1) % vcpus, t.vector()))
        .collect();
    retarget(ch, &mut out, DEV_A, Kind::MsiX, 1, &moved);
    let freed = out
        .iter()
        .position(|p| p.device == DEV_B && p.index == 2)
        .expect("B's MSI-X 2");
    out.remove(freed);
    ch.driver()
        .free(
            DEV_B,
            IndexRange {
                kind: Kind::MsiX,
                first: 2,
                count: 1,
            },
        )
        .expect("free");
    for p in &out {
        devices.program(p);
    }
    out
}

/// Retargets `device`'s `kind` vectors from `first` on to `to`, through the driver, and
/// records the new targets in `programmed`.
pub fn retarget(
    ch: &mut Channel,
    programmed: &mut [Programmed],
    device: u32,
    kind: Kind,
    first: u32,
    to: &[Target],
) {
    let range = IndexRange {
        kind,
        first,
        count: to.len() as u16,
    };
    ch.driver().retarget(device, range, to).expect("retarget");
    moved(programmed, device, kind, first, to);
}

/// Records that `device`'s `kind` vectors from `first` on now go to `to`.
pub fn moved(programmed: &mut [Programmed], device: u32, kind: Kind, first: u32, to: &[Target]) {
    for (i, t) in to.iter().enumerate() {
        let p = programmed
            .iter_mut()
            .find(|p| (p.device, p.kind, p.index) == (device, kind, first + i as u32))
            .expect("a programmed grant");
        p.target = *t;
    }
}

/// Every programmed grant, fired from its device on `host`, lands on its target (APIC ID
/// = vCPU index), and the VM's route `book` records exactly that delivery.
pub fn check_delivery(
    host: &ModelHost,
    assigned: &Assigned,
    programmed: &[Programmed],
    book: &Mutex<RouteBook>,
) {
    for p in programmed {
        let before = book.lock().expect("book").delivered();
        let delivery = assigned
            .fire(host, p)
            .unwrap_or_else(|f| panic!("{p:?}: {f:?}"));
        let want = (p.target.vcpu(), p.target.vector());
        assert_eq!(delivery.to(), Some(want), "{p:?}");
        let book = book.lock().expect("book");
        assert_eq!(book.delivered(), before + 1, "{p:?}");
        let dest = GuestDest {
            apic_id: want.0,
            vector: want.1,
        };
        assert_eq!(book.deliveries().last(), Some(dest), "{p:?}");
    }
}
