//! FREE and RETARGET by index list: what one ALLOC gave, however scattered, freed,
//! activated, moved or parked in one request (`INDEX_LIST`), or one request per run of
//! consecutive indices for a driver that did not negotiate it. The irq-domain `free`,
//! `activate`, `set_affinity` and `deactivate` of a kernel driver.

use crate::commands::{Guest, MAX_TARGETS, Outcome, kind};
use crate::devices::Slot;
use crate::state::{Held, records};
use crate::topology::{NO_APIC, apic_of_target};
use pvirq_guest::proto::{IndexRange, Indices, Kind, Le32, Target, feature};
use pvirq_guest::{Done, Error, index_list};

/// The runs of consecutive indices in sorted, distinct `indices`: (offset in the list,
/// first index, count).
fn runs(indices: &[u32]) -> impl Iterator<Item = (usize, u32, u16)> + '_ {
    let mut at = 0;
    core::iter::from_fn(move || {
        let first = *indices.get(at)?;
        let start = at;
        while at < indices.len()
            && indices.get(at).copied() == first.checked_add((at - start) as u32)
            && at - start < usize::from(u16::MAX)
        {
            at += 1;
        }
        Some((start, first, (at - start) as u16))
    })
}

impl Guest {
    /// Reads `n` (index, target) pairs: indices from the input list, targets after them
    /// when `with_targets`; sorted by index, which must be distinct.
    fn read_pairs(&mut self, n: usize, with_targets: bool) -> Result<(), Outcome> {
        if n > MAX_TARGETS {
            return Err(Outcome::Bad);
        }
        for (i, pair) in self.scratch.pairs.iter_mut().take(n).enumerate() {
            let target = if with_targets {
                let vector =
                    u8::try_from(self.mb.input(n + 2 * i + 1)).map_err(|_| Outcome::Bad)?;
                Target::new(self.mb.input(n + 2 * i), vector)
            } else {
                Target::new(0, 0)
            };
            *pair = (self.mb.input(i), target);
        }
        let pairs = self.scratch.pairs.get_mut(..n).ok_or(Outcome::Bad)?;
        pairs.sort_unstable_by_key(|p| p.0);
        if pairs
            .windows(2)
            .any(|w| w.first().map(|p| p.0) == w.get(1).map(|p| p.0))
        {
            return Err(Outcome::Bad);
        }
        for (i, (index, target)) in pairs.iter().enumerate() {
            if let (Some(x), Some(l), Some(t)) = (
                self.scratch.indices.get_mut(i),
                self.scratch.list.get_mut(i),
                self.scratch.targets.get_mut(i),
            ) {
                *x = *index;
                *l = Le32::new(*index);
                *t = *target;
            }
        }
        Ok(())
    }

    /// Masks (or unmasks) every slot of the first `n` sorted indices.
    fn mask_listed(&self, device: u32, kind: Kind, n: usize, masked: bool) {
        let Ok(dev) = self.device(device) else {
            return;
        };
        for index in self.scratch.indices.iter().take(n) {
            if let Some(slot) = Slot::of(kind, *index) {
                dev.set_masked(slot, masked);
            }
        }
    }

    /// Runs `op` once over the whole list (`INDEX_LIST`) or once per run; the total done
    /// and the requests sent. `op` gets the indices and the offset of their first entry.
    fn per_list(
        &mut self,
        kind: Kind,
        n: usize,
        mut op: impl FnMut(&mut Guest, Indices<'_>, usize) -> Result<Done, Error>,
    ) -> Result<(u32, u32), Error> {
        let lists = self
            .driver
            .as_ref()
            .is_some_and(|d| d.has(feature::INDEX_LIST));
        if lists {
            // The list lives in the scratch buffer; a copy keeps `op` free to borrow the
            // guest (a list is small next to the request it makes).
            let mut copy = [Le32::new(0); MAX_TARGETS];
            for (c, l) in copy.iter_mut().zip(self.scratch.list.iter().take(n)) {
                *c = *l;
            }
            let list = index_list(kind, copy.get(..n).unwrap_or_default())?;
            return op(self, list, 0).map(|d| (d.count, 1));
        }
        let mut sorted = [0u32; MAX_TARGETS];
        for (s, i) in sorted.iter_mut().zip(self.scratch.indices.iter().take(n)) {
            *s = *i;
        }
        let (mut done, mut requests) = (0, 0);
        for (at, first, count) in runs(sorted.get(..n).unwrap_or_default()) {
            let range = IndexRange { kind, first, count };
            done += op(self, Indices::Run(range), at)?.count;
            requests += 1;
        }
        Ok((done, requests))
    }

    /// The `free_list` command.
    pub fn free_list(&mut self) -> Outcome {
        let (device, careless) = (self.mb.arg(0), self.mb.arg(3) == 1);
        let Some(kind) = kind(self.mb.arg(1)) else {
            return Outcome::Bad;
        };
        let n = self.mb.arg(2) as usize;
        if let Err(e) = self.read_pairs(n, false) {
            return e;
        }
        if self.driver.is_none() {
            return Outcome::NotReady;
        }
        if !careless {
            // Masked and quiet before FREE (spec DRV-7).
            self.mask_listed(device, kind, n, true);
        }
        let freed = self.per_list(kind, n, |guest, indices, at| {
            let driver = guest.driver.as_mut().ok_or(Error::NoDevice)?;
            let done = driver.free_indices(device, indices)?;
            guest.retire(device, kind, at, indices_len(&indices));
            Ok(done)
        });
        match freed {
            Ok((count, requests)) => {
                self.mb.result(0, count);
                self.mb.result(1, requests);
                Outcome::Ok
            }
            Err(e) => e.into(),
        }
    }

    /// Marks `count` listed slots from offset `at` freed.
    fn retire(&self, device: u32, kind: Kind, at: usize, count: usize) {
        let Some(recs) = records(device as usize) else {
            return;
        };
        for index in self.scratch.indices.iter().skip(at).take(count) {
            if let Some(r) = Slot::of(kind, *index).and_then(|s| recs.get_mut(s))
                && r.held == Held::Live
            {
                r.held = Held::Freed;
            }
        }
    }

    /// The `retarget_list` command.
    pub fn retarget_list(&mut self) -> Outcome {
        let device = self.mb.arg(0);
        let Some(kind) = kind(self.mb.arg(1)) else {
            return Outcome::Bad;
        };
        let n = self.mb.arg(2) as usize;
        let park = match self.mb.arg(3) {
            0 => true,
            1 => false,
            _ => return Outcome::Bad,
        };
        if let Err(e) = self.read_pairs(n, !park) {
            return e;
        }
        let Some(apic_ids) = self.driver.as_ref().map(|d| d.targets_name_apic_ids()) else {
            return Outcome::NotReady;
        };
        if park {
            // Masked before PARK: interrupts to a parked grant are dropped (spec §3.5).
            self.mask_listed(device, kind, n, true);
        }
        let moved = self.per_list(kind, n, |guest, indices, at| {
            let count = indices_len(&indices);
            let Guest {
                driver, scratch, ..
            } = guest;
            let driver = driver.as_mut().ok_or(Error::NoDevice)?;
            let done = if park {
                driver.deactivate(device, indices)?
            } else {
                let targets = scratch.targets.get(at..at + count).unwrap_or_default();
                driver.activate(device, indices, targets)?
            };
            guest.record_targets(device, kind, at, count, park, apic_ids);
            Ok(done)
        });
        match moved {
            Ok((count, _)) => {
                self.mb.result(0, count);
                Outcome::Ok
            }
            Err(e) => e.into(),
        }
    }

    /// Records the new targets (or the parking) of `count` listed slots from offset `at`,
    /// and unmasks those that now have a target: the message never changed, so the slot
    /// may fire as soon as the host routes it.
    fn record_targets(
        &self,
        device: u32,
        kind: Kind,
        at: usize,
        count: usize,
        park: bool,
        apic_ids: bool,
    ) {
        let (Ok(dev), Some(recs)) = (self.device(device), records(device as usize)) else {
            return;
        };
        let listed = self.scratch.indices.iter().zip(&self.scratch.targets);
        for (index, target) in listed.skip(at).take(count) {
            let Some(slot) = Slot::of(kind, *index) else {
                continue;
            };
            let Some(r) = recs.get_mut(slot).filter(|r| r.held == Held::Live) else {
                continue;
            };
            if park {
                r.parked = true;
                r.apic = NO_APIC;
            } else {
                r.parked = false;
                r.vcpu = target.vcpu();
                r.apic = apic_of_target(target.vcpu(), apic_ids);
                r.vector = target.vector();
                dev.set_masked(slot, false);
            }
        }
    }
}

/// How many indices `indices` names.
fn indices_len(indices: &Indices<'_>) -> usize {
    match indices {
        Indices::Run(range) => usize::from(range.count),
        Indices::List { indices, .. } => indices.len(),
    }
}
