//! The `alloc` command: one ALLOC in any of its shapes (any index, from an index, any
//! contiguous run; a target per vector, spread over a set, or parked), with Linux's
//! fallback on NO_SPACE; every grant programmed into its slot, unmasked if it has a target
//! and left masked if parked, and recorded with where its interrupt should arrive.

use crate::commands::{Guest, MAX_TARGETS, Outcome, kind};
use crate::devices::Slot;
use crate::state::{Held, Record, records};
use crate::topology::{NO_APIC, apic_of_target};
use pvirq_guest::Error;
use pvirq_guest::proto::{Alloc, IndexSpec, Kind, Refusal, Targeting, spread_position};
use pvirq_guest_image_abi::mailbox::{
    GRANT_WORDS, INDEX_ANY, INDEX_ANY_CONTIGUOUS, INDEX_AT, TARGETING_PARKED, TARGETING_PER_VECTOR,
    TARGETING_SPREAD, grant_flags,
};

/// How many allocation attempts a Linux-style fallback makes.
const MAX_ATTEMPTS: u32 = 4;

/// How one ALLOC asks, besides its count.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// The interrupt kind.
    pub kind: Kind,
    /// Where the indices go.
    pub index: IndexSpec,
    /// Where the vectors go.
    pub targeting: Targeting,
    /// The IMS PASID.
    pub pasid: Option<u32>,
    /// Targets in the scratch buffer for [`Targeting::Spread`] (per-vector targeting uses
    /// `max` of them, parked none).
    pub spread_over: usize,
}

impl Guest {
    /// Sends one ALLOC of `shape` for between `min` and `max` vectors; on success programs
    /// every grant, records it and returns how many (the grants stay in the scratch
    /// buffer).
    pub fn alloc_and_program(
        &mut self,
        device: u32,
        shape: Shape,
        (min, max): (u16, u16),
    ) -> Result<usize, Error> {
        let wanted = match shape.targeting {
            Targeting::PerVector => usize::from(max),
            Targeting::Spread => shape.spread_over,
            Targeting::Parked => 0,
        };
        let targets = self.scratch.targets.get(..wanted).unwrap_or_default();
        let alloc = Alloc {
            kind: shape.kind,
            index: shape.index,
            min,
            max,
            pasid: shape.pasid,
            targeting: shape.targeting,
            targets,
        };
        let Some(driver) = self.driver.as_mut() else {
            return Err(Error::NoDevice);
        };
        let apic_ids = driver.targets_name_apic_ids();
        let allocation = driver.alloc(device, alloc, &mut self.scratch.grants)?;
        let count = allocation.grants.len();
        let dev = self.devices.get(device as usize).copied().flatten();
        let (Some(dev), Some(recs)) = (dev, records(device as usize)) else {
            return Ok(count);
        };
        for (i, grant) in allocation.grants.iter().enumerate() {
            let Some(slot) = Slot::of(shape.kind, grant.index()) else {
                continue;
            };
            let target = match shape.targeting {
                Targeting::PerVector => targets.get(i),
                Targeting::Spread => {
                    spread_position(i, count, targets.len()).and_then(|p| targets.get(p))
                }
                Targeting::Parked => None,
            }
            .filter(|_| !grant.parked());
            let record = match target {
                Some(t) => {
                    dev.program(slot, grant.message(), shape.pasid);
                    Record {
                        held: Held::Live,
                        message: grant.message(),
                        vcpu: t.vcpu(),
                        apic: apic_of_target(t.vcpu(), apic_ids),
                        vector: t.vector(),
                        parked: false,
                    }
                }
                None => {
                    // Parked: the message is final, so it goes in now, masked until the
                    // grant is activated (spec §3.5).
                    dev.program_masked(slot, grant.message(), shape.pasid);
                    Record {
                        held: Held::Live,
                        message: grant.message(),
                        apic: NO_APIC,
                        parked: true,
                        ..Record::EMPTY
                    }
                }
            };
            if let Some(r) = recs.get_mut(slot) {
                *r = record;
            }
        }
        Ok(count)
    }

    /// The ALLOC's shape from the command's arguments.
    fn shape(&self) -> Option<Shape> {
        let index = match self.mb.arg(2) {
            INDEX_ANY => IndexSpec::Any,
            INDEX_AT => IndexSpec::At(self.mb.arg(3)),
            INDEX_ANY_CONTIGUOUS => IndexSpec::AnyContiguous,
            _ => return None,
        };
        let targeting = match self.mb.arg(10) {
            TARGETING_PER_VECTOR => Targeting::PerVector,
            TARGETING_SPREAD => Targeting::Spread,
            TARGETING_PARKED => Targeting::Parked,
            _ => return None,
        };
        Some(Shape {
            kind: kind(self.mb.arg(1))?,
            index,
            targeting,
            pasid: (self.mb.arg(6) == 1).then(|| self.mb.arg(7)),
            spread_over: self.mb.arg(9) as usize,
        })
    }

    /// Lists the first `count` grants of the scratch buffer in the report.
    fn report_grants(&self, count: usize) {
        for (i, g) in self.scratch.grants.iter().take(count).enumerate() {
            let m = g.message();
            let words = [
                g.index(),
                m.address as u32,
                (m.address >> 32) as u32,
                m.data,
                grant_flags(g.mode().to_wire(), g.parked(), g.pasid().is_some()),
                g.pasid().unwrap_or(0),
            ];
            for (k, w) in words.into_iter().enumerate() {
                self.mb.output(GRANT_WORDS * i + k, w);
            }
        }
    }

    /// The `alloc` command.
    pub fn alloc(&mut self) -> Outcome {
        let device = self.mb.arg(0);
        let Some(shape) = self.shape() else {
            return Outcome::Bad;
        };
        let (Ok(min), Ok(max)) = (u16::try_from(self.mb.arg(4)), u16::try_from(self.mb.arg(5)))
        else {
            return Outcome::Bad;
        };
        let linux_fallback = self.mb.arg(8) == 1;
        if let Err(e) = self.read_targets(self.mb.arg(9) as usize) {
            return e;
        }
        if usize::from(max) > MAX_TARGETS {
            return Outcome::Bad;
        }
        let (mut min, mut max) = (min, max);
        let mut attempts = 1;
        let mut first_refusal: Option<Refusal> = None;
        loop {
            match self.alloc_and_program(device, shape, (min, max)) {
                Ok(count) => {
                    self.mb.result(0, count as u32);
                    self.mb.result(1, attempts);
                    if let Some(r) = first_refusal {
                        let (s, d, i) = r.to_wire();
                        self.mb.result(2, u32::from(s));
                        self.mb.result(3, u32::from(d));
                        self.mb.result(4, i);
                    }
                    self.report_grants(count);
                    return Outcome::Ok;
                }
                Err(e) => {
                    // Linux's pci_alloc_irq_vectors fallback: ask again for what the host
                    // said it can give, within the caller's range.
                    let retry = match e.refusal() {
                        Some(Refusal::NoSpace { available, .. })
                            if linux_fallback
                                && available >= 1
                                && available < u32::from(max)
                                && attempts < MAX_ATTEMPTS =>
                        {
                            u16::try_from(available).ok()
                        }
                        _ => None,
                    };
                    match (retry, e.refusal()) {
                        (Some(n), Some(r)) => {
                            first_refusal.get_or_insert(r);
                            attempts += 1;
                            (min, max) = (n, n);
                        }
                        _ => {
                            self.mb.result(1, attempts);
                            return e.into();
                        }
                    }
                }
            }
        }
    }
}
