//! Concurrency (issue 7): many VMs, each in its own thread with its own channel, storm one
//! deliberately small host pool with ALLOC / FREE / RETARGET / QUERY / RESET, some of
//! them resetting their virtio device mid-storm. A monitor thread samples the host and
//! every VM throughout: no quota or table is ever exceeded and the host never hands out
//! more than it has ([DEV-16]). Each VM checks every answer against its own bookkeeping,
//! which only it can change ([DEV-17]). Afterwards every resource is accounted for.
//!
//! Bounded: a fixed number of operations per thread; no timing assertions.

use pvirq_host::Vm;
use pvirq_host::model::ModelHost;
use pvirq_host::model::VectorConfig;
use pvirq_proto::{
    Grant, IndexRange, IndexSpec, Kind, MsiMessage, Refusal, Resource, Target, Targeting,
};
use pvirq_sim::Channel;
use pvirq_tests::setup::{channel, dev, host_with_vectors, irtes_used, vm_config};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, mpsc};
use std::thread;

const VMS: usize = 8;
const OPS: usize = 4000;
const QUOTA: u32 = 24;
const MSIX: u16 = 16;
const IMS: u32 = 16;
const MSI: u16 = 4;
/// The shared pool: far fewer IRTEs and host vectors than the VMs' quotas add up to, and
/// fewer host vectors than one VM's quota, so that even a VM running alone meets a shared
/// shortage whatever the threads' interleaving.
const IRTES: u32 = 22;
const VECTORS: u8 = 20;

/// A small deterministic generator (xorshift64*), one per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn table_size(kind: Kind) -> u32 {
    match kind {
        Kind::Msi => u32::from(MSI),
        Kind::MsiX => u32::from(MSIX),
        Kind::Ims => IMS,
    }
}

/// One VM's storm: its channel and what it knows it holds.
struct Storm {
    ch: Channel,
    held: BTreeSet<(Kind, u32)>,
    rng: Rng,
    generation: u16,
    index: usize,
    /// NO_SPACE refusals seen, by resource code.
    shortages: [u64; 6],
}

impl Storm {
    fn open(host: &ModelHost, index: usize, generation: u16, vms: &mpsc::Sender<Vm>) -> Channel {
        let rid = 0x1000 + (index as u16) * 0x10 + generation;
        let ch = channel(host, vm_config(QUOTA, vec![dev(rid, MSI, MSIX, IMS)]));
        vms.send(ch.vm().clone()).unwrap();
        ch
    }

    fn count(&self, kind: Kind) -> u32 {
        self.held.iter().filter(|(k, _)| *k == kind).count() as u32
    }

    fn remaining(&self) -> u32 {
        QUOTA - self.held.len() as u32
    }

    fn target(&mut self) -> Target {
        Target::new(self.rng.below(4) as u32, 0x20 + self.rng.below(0xE0) as u8)
    }

    fn alloc(&mut self) {
        let kind =
            [Kind::MsiX, Kind::Ims, Kind::MsiX, Kind::Ims, Kind::Msi][self.rng.below(5) as usize];
        let (min, max, index) = if kind == Kind::Msi {
            let max: u16 = 1 << self.rng.below(3);
            let min: u16 = 1 << self.rng.below(u64::from(max.trailing_zeros()) + 1);
            (min, max, IndexSpec::Any)
        } else {
            let min = 1 + self.rng.below(3) as u16;
            let max = min + self.rng.below(4) as u16;
            let index = if self.rng.below(3) == 0 {
                IndexSpec::At(self.rng.below(u64::from(table_size(kind))) as u32)
            } else {
                IndexSpec::Any
            };
            (min, max, index)
        };
        let t: Vec<Target> = (0..max).map(|_| self.target()).collect();
        let alloc = pvirq_proto::Alloc {
            kind,
            index,
            min,
            max,
            pasid: None,
            targeting: Targeting::PerVector,
            targets: &t,
        };
        let mut grants = vec![Grant::new(0, MsiMessage::default()); usize::from(max)];
        match self.ch.driver().alloc(0, alloc, &mut grants) {
            Ok(a) => {
                let n = a.grants.len();
                assert!((usize::from(min)..=usize::from(max)).contains(&n));
                let granted: Vec<u32> = a.grants.iter().map(Grant::index).collect();
                let quota_remaining = a.quota_remaining;
                for i in granted {
                    assert!(self.held.insert((kind, i)), "{kind}[{i}] granted twice");
                }
                assert_eq!(quota_remaining, self.remaining());
            }
            Err(e) => self.check_refusal(e.refusal().expect("a refusal"), kind, index, min, max),
        }
    }

    /// A refusal must be explained by this VM's own state, or by the shared pool.
    fn check_refusal(&mut self, r: Refusal, kind: Kind, index: IndexSpec, min: u16, max: u16) {
        let min = u32::from(min);
        let free_slots = table_size(kind) - self.count(kind);
        match r {
            Refusal::NoSpace {
                resource,
                available,
            } => {
                self.shortages[resource.to_wire() as usize] += 1;
                assert!(available < min, "{r}");
                assert!(available <= self.remaining(), "{r}");
                match resource {
                    Resource::VmQuota => assert!(self.remaining() < min, "{r}"),
                    Resource::DeviceSlots => {
                        assert!(self.remaining() >= min, "{r}: the quota binds first");
                        let slots = match (kind, index) {
                            (Kind::Msi, _) => table_size(kind),
                            _ => free_slots,
                        };
                        assert!(slots < min, "{r}: {slots} free slots");
                    }
                    // The shared pool: other VMs hold it.
                    Resource::Irte | Resource::HostVector => {}
                    other => panic!("{other} cannot run out here: {r}"),
                }
            }
            Refusal::IndexInUse { index: i } => {
                assert!(self.held.contains(&(kind, i)), "{r}: not held by us");
                if let IndexSpec::At(first) = index {
                    assert!((first..first + u32::from(max)).contains(&i), "{r}");
                } else {
                    assert_eq!((kind, i), (Kind::Msi, 0), "{r}");
                }
            }
            Refusal::IndexOutOfRange { index: i } => {
                let IndexSpec::At(first) = index else {
                    panic!("{r} for ANY_INDEX")
                };
                assert!(first + u32::from(max) > table_size(kind), "{r}");
                assert_eq!(i, first.max(table_size(kind)), "{r}");
            }
            other => panic!("unexpected refusal {other}"),
        }
    }

    /// A run of held indices starting at a random held vector (the whole block for MSI).
    fn held_run(&mut self) -> Option<IndexRange> {
        if self.held.is_empty() {
            return None;
        }
        let pick = self.rng.below(self.held.len() as u64) as usize;
        let (kind, first) = *self.held.iter().nth(pick)?;
        if kind == Kind::Msi {
            let count = self.count(Kind::Msi) as u16;
            return Some(IndexRange {
                kind,
                first: 0,
                count,
            });
        }
        let mut count = 1;
        let want = 1 + self.rng.below(3) as u16;
        while count < want && self.held.contains(&(kind, first + u32::from(count))) {
            count += 1;
        }
        Some(IndexRange { kind, first, count })
    }

    fn free(&mut self) {
        let Some(run) = self.held_run() else { return };
        let done = self.ch.driver().free(0, run).expect("FREE of held vectors");
        assert_eq!(done.count, u32::from(run.count));
        for i in run.indices() {
            assert!(self.held.remove(&(run.kind, i)));
        }
        assert_eq!(done.quota_remaining, self.remaining());
    }

    fn retarget(&mut self) {
        let Some(run) = self.held_run() else { return };
        let t: Vec<Target> = (0..run.count).map(|_| self.target()).collect();
        let done = self
            .ch
            .driver()
            .retarget(0, run, &t)
            .expect("RETARGET of held vectors");
        assert_eq!(
            (done.count, done.quota_remaining),
            (u32::from(run.count), self.remaining())
        );
    }

    fn query(&mut self) {
        let q = self.ch.driver().query(0).expect("QUERY");
        assert_eq!(q.info.granted, self.held.len() as u32);
        assert_eq!(q.quota_remaining, self.remaining());
        assert!(q.info.available <= self.remaining());
    }

    fn reset_op(&mut self) {
        let done = self.ch.driver().reset_device(0).expect("RESET");
        assert_eq!(done.count, self.held.len() as u32);
        self.held.clear();
        assert_eq!(done.quota_remaining, QUOTA);
    }

    /// Virtio device reset mid-storm: drop the driver, check the VM holds nothing, and come
    /// back as a new VM (new requester ID: the old VM lives on in the monitor's hands).
    fn virtio_reset(&mut self, host: &ModelHost, vms: &mpsc::Sender<Vm>) {
        self.generation += 1;
        let fresh = Storm::open(host, self.index, self.generation, vms);
        let old = std::mem::replace(&mut self.ch, fresh);
        let vm = old.vm().clone();
        drop(old);
        assert_eq!(vm.occupancy().held, 0, "[DEV-1]");
        assert!(vm.grants(0).is_empty());
        self.held.clear();
    }

    /// After each of its requests: what the host says this VM holds. Only this VM's own
    /// requests change its count, so checking after each of them sees every value it takes.
    fn check_occupancy(&self, host: &ModelHost, total_vectors: u32) {
        let occ = self.ch.vm().occupancy();
        assert!(occ.held <= QUOTA, "[DEV-16] {occ:?}");
        assert_eq!(occ.held as usize, self.held.len(), "{occ:?}");
        assert_eq!(occ.routes, occ.held, "{occ:?}");
        let pool = host.occupancy();
        assert!(pool.units[0].used <= IRTES, "{pool:?}");
        assert_eq!(
            pool.vectors_used + pool.vectors_free,
            total_vectors,
            "{pool:?}"
        );
    }

    /// The host's record of this VM's grants is exactly the VM's own.
    fn agree(&self) {
        let host_view: BTreeSet<(Kind, u32)> = self
            .ch
            .vm()
            .grants(0)
            .into_iter()
            .map(|(k, i, _)| (k, i))
            .collect();
        assert_eq!(host_view, self.held, "VM {}", self.index);
    }
}

fn storm(host: &ModelHost, index: usize, vms: &mpsc::Sender<Vm>, start: &Barrier) -> [u64; 6] {
    let mut s = Storm {
        ch: Storm::open(host, index, 0, vms),
        held: BTreeSet::new(),
        rng: Rng(0x9E37_79B9_7F4A_7C15 ^ ((index as u64 + 1) * 0x1000_0001)),
        generation: 0,
        index,
        shortages: [0; 6],
    };
    let total_vectors = u32::from(VECTORS);
    start.wait();
    for op in 0..OPS {
        if index.is_multiple_of(4) && (op == OPS / 3 || op == 2 * OPS / 3) {
            s.virtio_reset(host, vms);
        }
        match s.rng.below(20) {
            0..=8 => s.alloc(),
            9..=13 => s.free(),
            14..=16 => s.retarget(),
            17..=18 => s.query(),
            _ if s.rng.below(8) == 0 => s.reset_op(),
            _ => s.query(),
        }
        s.check_occupancy(host, total_vectors);
        if op % 500 == 0 {
            s.agree();
        }
    }
    s.agree();
    // Half the VMs give everything back through the protocol, half by virtio reset.
    let vm = s.ch.vm().clone();
    let shortages = s.shortages;
    if index.is_multiple_of(2) {
        while let Some(run) = s.held_run() {
            s.ch.driver().free(0, run).expect("final FREE");
            for i in run.indices() {
                s.held.remove(&(run.kind, i));
            }
        }
        s.agree();
    }
    drop(s);
    assert_eq!(vm.occupancy().held, 0);
    shortages
}

/// Raises the monitor's stop flag when dropped.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn vms_storm_one_small_pool_and_every_resource_is_accounted_for() {
    let vectors = VectorConfig {
        cpus: 1,
        first: 0x20,
        end: 0x20 + VECTORS,
        reserved: vec![],
    };
    let host = host_with_vectors(IRTES, vectors);
    let total_vectors = host.occupancy().vectors_free;
    let done = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<Vm>();
    let (host_ref, done_ref) = (&host, &done);
    let start = Barrier::new(VMS);
    let (samples, seen) = thread::scope(|scope| {
        let monitor = scope.spawn(move || {
            let mut vms: Vec<Vm> = Vec::new();
            let mut samples = 0u64;
            let mut peak = 0;
            loop {
                // Read the flag first: the last sample is taken after every storm ended.
                let finished = done_ref.load(Ordering::SeqCst);
                vms.extend(rx.try_iter());
                let pool = host_ref.occupancy();
                for unit in &pool.units {
                    assert!(unit.used <= unit.capacity, "{pool:?}");
                }
                assert_eq!(
                    pool.vectors_used + pool.vectors_free,
                    total_vectors,
                    "{pool:?}"
                );
                peak = peak.max(pool.units[0].used);
                for vm in &vms {
                    let occ = vm.occupancy();
                    assert!(occ.held <= occ.quota, "[DEV-16] {occ:?}");
                    assert_eq!(occ.per_device.iter().sum::<u32>(), occ.held, "{occ:?}");
                    assert!(occ.per_device[0] <= u32::from(MSI + MSIX) + IMS, "{occ:?}");
                    assert!(occ.routes <= occ.quota, "{occ:?}");
                }
                samples += 1;
                if finished {
                    return (samples, vms, peak);
                }
                thread::yield_now();
            }
        });
        // Stops the monitor however the storms end (a failed storm must not hang the test).
        let _stop = Stop(done_ref);
        let storms: Vec<_> = (0..VMS)
            .map(|i| {
                let (host, tx, start) = (&host, tx.clone(), &start);
                scope.spawn(move || storm(host, i, &tx, start))
            })
            .collect();
        drop(tx);
        let mut shortages = [0u64; 6];
        for s in storms {
            for (total, n) in shortages.iter_mut().zip(s.join().unwrap()) {
                *total += n;
            }
        }
        done.store(true, Ordering::SeqCst);
        let (samples, vms, peak) = monitor.join().unwrap();
        ((samples, peak, shortages), vms)
    });
    let (samples, peak, shortages) = samples;
    eprintln!("{samples} samples, peak IRTE use {peak}, NO_SPACE by resource {shortages:?}");
    assert!(samples > 0);
    // The shared pool did run out (see VECTORS), and the VMs were told so.
    assert!(
        shortages[Resource::HostVector.to_wire() as usize] > 0,
        "{shortages:?}"
    );
    // Every VM is still alive (the monitor kept them) and holds nothing; so neither does
    // the host.
    let generations = VMS + 2 * VMS.div_ceil(4);
    assert_eq!(seen.len(), generations);
    assert_eq!(host.occupancy().vms as usize, generations);
    let pool = host.occupancy();
    assert_eq!((irtes_used(&host), pool.vectors_used), (0, 0), "{pool:?}");
    host.check_invariants().unwrap();
    drop(seen);
    assert_eq!(host.occupancy().vms, 0);
}
