//! Benchmarks timed inside the guest with the TSC. Every figure is reported in cycles; the
//! VMM converts them with its own calibration and counts the exits it handled meanwhile.

use crate::alloc::Shape;
use crate::commands::{Guest, MAX_TARGETS, Outcome, kind};
use crate::cpu;
use crate::devices::Slot;
use crate::state::{Held, records};
use pvirq_guest::proto::{CompatMsi, IndexRange, IndexSpec, Kind, Target, Targeting};
use pvirq_guest_image_abi::layout::{NULL_MMIO, PLAIN_IRQFD_VECTOR};

/// How long one fire round may wait for its interrupt.
const ROUND_MS: u64 = 1000;
/// The vector the pvirq fire benchmark asks for.
const FIRE_VECTOR: u8 = 0x50;

/// The vector of bring-up vector `i`: spread over 64 vectors from 0x40.
fn bringup_vector(i: usize) -> u8 {
    0x40 + (i % 64) as u8
}

/// Frees every live slot of `kind` the guest holds on `device` (not timed).
fn free_all(guest: &mut Guest, device: u32, kind: Kind) -> Result<(), Outcome> {
    let dev = guest.device(device)?;
    let Some(recs) = records(device as usize) else {
        return Err(Outcome::Bad);
    };
    let mut live = [0u32; MAX_TARGETS];
    let mut n = 0;
    for (slot, r) in recs.iter() {
        let index = match (slot, kind) {
            (Slot::MsiX(i), Kind::MsiX) | (Slot::Ims(i), Kind::Ims) => i,
            _ => continue,
        };
        if r.held == Held::Live
            && let Some(entry) = live.get_mut(n)
        {
            dev.set_masked(slot, true);
            *entry = index;
            n += 1;
        }
    }
    for &index in live.iter().take(n) {
        let range = IndexRange {
            kind,
            first: index,
            count: 1,
        };
        guest.driver()?.free(device, range)?;
        if let Some(r) = Slot::of(kind, index).and_then(|s| recs.get_mut(s)) {
            r.held = Held::None;
        }
    }
    Ok(())
}

/// `a[0]` device, `a[1]` vectors, `a[2]` kind (1 MSI-X, 2 IMS).
pub fn pvirq_bringup(guest: &mut Guest) -> Outcome {
    let (device, n) = (guest.mb.arg(0), guest.mb.arg(1) as usize);
    let Some(alloc_kind) = kind(guest.mb.arg(2)).filter(|k| *k != Kind::Msi) else {
        return Outcome::Bad;
    };
    let Ok(count) = u16::try_from(n) else {
        return Outcome::Bad;
    };
    if n > MAX_TARGETS {
        return Outcome::Bad;
    }
    for (i, t) in guest.scratch.targets.iter_mut().take(n).enumerate() {
        *t = Target::new(0, bringup_vector(i));
    }
    let t0 = cpu::rdtsc();
    let shape = Shape {
        kind: alloc_kind,
        index: IndexSpec::Any,
        targeting: Targeting::PerVector,
        pasid: None,
        spread_over: 0,
    };
    let granted = match guest.alloc_and_program(device, shape, (count, count)) {
        Ok(g) => g,
        Err(e) => return e.into(),
    };
    let t1 = cpu::rdtsc();
    guest.mb.result64(0, t1 - t0);
    guest.mb.result(2, granted as u32);
    // Left held: the VMM resets the device after reading the exit counters.
    Outcome::Ok
}

/// `a[0]` device, `a[1]` entries: what a guest without pvirq does — compose its own
/// messages and program them into a trapped table. `a[2]` = 1: only disable MSI-X (the
/// clean-up after a run, kept out of the measured command).
pub fn trapped_bringup(guest: &mut Guest) -> Outcome {
    let (device, n) = (guest.mb.arg(0), guest.mb.arg(1));
    let Ok(dev) = guest.device_or_raw(device) else {
        return Outcome::Bad;
    };
    if guest.mb.arg(2) == 1 {
        dev.disable_msix();
        return Outcome::Ok;
    }
    let t0 = cpu::rdtsc();
    for i in 0..n {
        let message = CompatMsi::fixed(0, bringup_vector(i as usize)).message();
        if !dev.program(Slot::MsiX(i), message, None) {
            return Outcome::Bad;
        }
    }
    let t1 = cpu::rdtsc();
    guest.mb.result64(0, t1 - t0);
    Outcome::Ok
}

/// `a[0]` rounds, `a[1]` device, `a[2]` kind, `a[3]` = 1: ask the device not to interrupt
/// for completions (the driver polls anyway).
pub fn alloc_round_trip(guest: &mut Guest) -> Outcome {
    let (rounds, device) = (guest.mb.arg(0), guest.mb.arg(1));
    let Some(alloc_kind) = kind(guest.mb.arg(2)) else {
        return Outcome::Bad;
    };
    let quiet = guest.mb.arg(3) == 1;
    if let Ok(d) = guest.driver() {
        d.set_interrupts(!quiet);
    }
    let targets = [Target::new(0, 0x60)];
    let (mut alloc_cycles, mut free_cycles) = (0u64, 0u64);
    for _ in 0..rounds {
        let driver = match guest.driver() {
            Ok(d) => d,
            Err(e) => return e,
        };
        let mut grants = [pvirq_guest::proto::Grant::new(0, Default::default())];
        let t0 = cpu::rdtsc();
        let index = match driver.alloc_irq_vectors(device, alloc_kind, 1, &targets, &mut grants) {
            Ok(a) => a.grants.first().map(|g| g.index()).unwrap_or(0),
            Err(e) => return e.into(),
        };
        let t1 = cpu::rdtsc();
        let range = IndexRange {
            kind: alloc_kind,
            first: index,
            count: 1,
        };
        if let Err(e) = driver.free(device, range) {
            return e.into();
        }
        let t2 = cpu::rdtsc();
        alloc_cycles += t1 - t0;
        free_cycles += t2 - t1;
    }
    if let Ok(d) = guest.driver() {
        d.set_interrupts(true);
    }
    guest.mb.result64(0, alloc_cycles);
    guest.mb.result64(2, free_cycles);
    Outcome::Ok
}

/// `a[0]` rounds.
pub fn bare_exit(guest: &mut Guest) -> Outcome {
    let rounds = guest.mb.arg(0);
    let t0 = cpu::rdtsc();
    for i in 0..rounds {
        // SAFETY: NULL_MMIO is the VMM's null register window, identity-mapped, uncached.
        unsafe { core::ptr::write_volatile(NULL_MMIO as *mut u32, i) };
    }
    guest.mb.result64(0, cpu::rdtsc() - t0);
    Outcome::Ok
}

/// `a[0]` rounds, `a[1]` device, `a[2]` kind, `a[4]` 1 = the plain irqfd instead.
pub fn fire(guest: &mut Guest) -> Outcome {
    let (rounds, device, plain) = (guest.mb.arg(0), guest.mb.arg(1), guest.mb.arg(4) == 1);
    let Ok(dev) = guest.device_or_raw(device) else {
        return Outcome::Bad;
    };
    let (slot, vector) = if plain {
        (None, PLAIN_IRQFD_VECTOR)
    } else {
        let Some(alloc_kind) = kind(guest.mb.arg(2)).filter(|k| *k != Kind::Msi) else {
            return Outcome::Bad;
        };
        if let Some(t) = guest.scratch.targets.first_mut() {
            *t = Target::new(0, FIRE_VECTOR);
        }
        let shape = Shape {
            kind: alloc_kind,
            index: IndexSpec::Any,
            targeting: Targeting::PerVector,
            pasid: None,
            spread_over: 0,
        };
        if let Err(e) = guest.alloc_and_program(device, shape, (1, 1)) {
            return e.into();
        }
        let index = guest.scratch.grants.first().map(|g| g.index()).unwrap_or(0);
        (Slot::of(alloc_kind, index), FIRE_VECTOR)
    };
    let (mut to_handler, mut to_seen, mut lost) = (0u64, 0u64, 0u32);
    for _ in 0..rounds {
        let before = cpu::count(0, vector);
        let t0 = cpu::rdtsc();
        match slot {
            Some(s) => dev.ring(s),
            None => dev.ring_plain(),
        }
        if !cpu::spin_until(ROUND_MS, || cpu::count(0, vector) != before) {
            lost += 1;
            continue;
        }
        let seen = cpu::rdtsc();
        to_handler += cpu::last_interrupt_tsc(0).saturating_sub(t0);
        to_seen += seen - t0;
    }
    guest.mb.result64(0, to_handler);
    guest.mb.result64(2, to_seen);
    guest.mb.result(4, lost);
    if let Some(s) = slot {
        let k = match s {
            Slot::MsiX(_) => Kind::MsiX,
            Slot::Ims(_) => Kind::Ims,
        };
        if let Err(e) = free_all(guest, device, k) {
            return e;
        }
    }
    Outcome::Ok
}
