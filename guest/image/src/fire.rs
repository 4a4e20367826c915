//! The `fire` command: the guest rings the doorbell of every slot it holds with a target,
//! one at a time, waits for each interrupt where it expects it, and reports what its
//! handlers counted, by APIC ID and vector.

use crate::commands::{ARRIVAL_MS, Guest, Outcome, SILENCE_MS};
use crate::cpu;
use crate::state::{Held, records};
use crate::topology::{apic_of_vcpu, vcpu_count};
use pvirq_guest_image_abi::layout::{PLAIN_IRQFD_VECTOR, PVIRQ_VECTOR};

/// The most vCPUs a fire step watches.
const MAX_FIRE_VCPUS: usize = 16;
/// Counters per watched vCPU.
const VECTORS: usize = 256;

/// The vCPUs a fire step watches, by APIC ID, in vCPU order.
struct Watched {
    apics: [u8; MAX_FIRE_VCPUS],
    len: usize,
}

impl Watched {
    fn new() -> Self {
        let mut w = Watched {
            apics: [0; MAX_FIRE_VCPUS],
            len: 0,
        };
        for index in 0..vcpu_count().min(MAX_FIRE_VCPUS) {
            if let (Some(id), Some(slot)) = (apic_of_vcpu(index as u32), w.apics.get_mut(w.len)) {
                *slot = id;
                w.len += 1;
            }
        }
        w
    }

    fn iter(&self) -> impl Iterator<Item = (usize, u8)> + '_ {
        self.apics.iter().copied().take(self.len).enumerate()
    }

    /// Where (`apic`, `vector`)'s counter sits in a snapshot.
    fn key(&self, apic: u8, vector: u8) -> Option<usize> {
        let position = self.iter().find(|(_, id)| *id == apic)?.0;
        Some(position * VECTORS + usize::from(vector))
    }

    /// Every watched counter, copied: the "before" of a fire step.
    fn snapshot(&self, out: &mut [u32; VECTORS * MAX_FIRE_VCPUS]) {
        for (position, apic) in self.iter() {
            for vector in 0..=255u8 {
                if let Some(c) = out.get_mut(position * VECTORS + usize::from(vector)) {
                    *c = cpu::count(apic, vector);
                }
            }
        }
    }
}

impl Guest {
    /// The `fire` command.
    pub fn fire(&mut self) -> Outcome {
        let device = self.mb.arg(0);
        let include_freed = self.mb.arg(1) == 1;
        let (Ok(dev), Some(recs)) = (self.device(device), records(device as usize)) else {
            return Outcome::Bad;
        };
        let watched = Watched::new();
        let mut before = [0u32; VECTORS * MAX_FIRE_VCPUS];
        watched.snapshot(&mut before);
        let mut expected = [0u32; VECTORS * MAX_FIRE_VCPUS];
        let (mut rung, mut missing) = (0u32, 0u32);
        // Slots with a target one at a time: ring, then wait for that interrupt, so that two
        // interrupts to one (vCPU, vector) never merge in the APIC's request register.
        // Parked slots stay masked and unrung: nothing would be delivered.
        for (slot, r) in recs.iter().filter(|(_, r)| r.active()) {
            dev.ring(slot);
            rung += 1;
            let Some((key, e)) = watched
                .key(r.apic, r.vector)
                .and_then(|k| Some((k, expected.get_mut(k)?)))
            else {
                // A vCPU the guest does not watch: it cannot see the interrupt arrive.
                missing += 1;
                continue;
            };
            *e += 1;
            let want = before.get(key).copied().unwrap_or(0).wrapping_add(*e);
            let (apic, vector) = (r.apic, r.vector);
            if !cpu::spin_until(ARRIVAL_MS, || cpu::count(apic, vector) >= want) {
                missing += 1;
            }
        }
        if include_freed {
            // A careless guest: the freed slot's old message written back, unmasked, rung.
            for (slot, r) in recs.iter().filter(|(_, r)| r.held == Held::Freed) {
                dev.program(slot, r.message, None);
                dev.ring(slot);
                dev.set_masked(slot, true);
                rung += 1;
            }
        }
        // Whatever else is coming (a duplicate, a misroute, a freed message delivered).
        cpu::spin_until(SILENCE_MS, || false);
        let (mut arrived, mut unexpected, mut listed) = (0u32, 0u32, 0usize);
        for (position, apic) in watched.iter() {
            for vector in 0..=255u8 {
                if vector == PVIRQ_VECTOR || vector == PLAIN_IRQFD_VECTOR {
                    continue;
                }
                let key = position * VECTORS + usize::from(vector);
                let was = before.get(key).copied().unwrap_or(0);
                let delta = cpu::count(apic, vector).wrapping_sub(was);
                if delta == 0 {
                    continue;
                }
                let want = expected.get(key).copied().unwrap_or(0);
                arrived += delta.min(want);
                unexpected += delta.saturating_sub(want);
                let fits = self.mb.output(3 * listed, u32::from(apic))
                    && self.mb.output(3 * listed + 1, u32::from(vector))
                    && self.mb.output(3 * listed + 2, delta);
                if fits {
                    listed += 1;
                }
            }
        }
        self.mb.result(0, rung);
        self.mb.result(1, arrived);
        self.mb.result(2, unexpected);
        self.mb.result(3, missing);
        self.mb.result(4, listed as u32);
        Outcome::Ok
    }
}
