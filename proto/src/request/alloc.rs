//! The body of ALLOC (spec §4.5): which indices, how many, and where the vectors go.

use crate::request::target::Target;
use crate::types::Kind;

/// Which table indices an ALLOC asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexSpec {
    /// Any free indices the device chooses (flag `ANY_INDEX`; MSI always uses this form or
    /// `At(0)`).
    Any,
    /// *(extension, bit 11)* Any free indices that form one run (flags `ANY_INDEX` and
    /// `ANY_CONTIGUOUS`). An MSI block is contiguous by nature: this changes nothing for it.
    AnyContiguous,
    /// Exactly `first..first + n` for the `n` vectors granted.
    At(u32),
}

/// Where the granted vectors go (spec §4.5, *Targets*).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Targeting {
    /// One target per vector that may be granted, exactly `max` of them: grant `i` goes to
    /// `targets[i]` (version 1's form).
    #[default]
    PerVector,
    /// *(extension, bit 10; flag `SPREAD`)* The `n` granted vectors are spread over the
    /// `t` targets (1 ≤ t ≤ `max_batch`): grant `i` goes to `targets[⌊i × t / n⌋]`.
    Spread,
    /// *(extension, bit 8; flag `PARKED`)* No targets: every grant is parked (spec §3.5).
    Parked,
}

impl Targeting {
    /// Where grant `i` of `n` granted vectors goes, given the request's `targets`; `None`
    /// for a parked grant, or when `i` or the targets do not fit the form (`i ≥ n`, too few
    /// targets).
    pub fn target_of(self, i: usize, n: usize, targets: &[Target]) -> Option<Target> {
        if i >= n {
            return None;
        }
        match self {
            Targeting::PerVector => targets.get(i).copied(),
            Targeting::Spread => spread_position(i, n, targets.len())
                .and_then(|position| targets.get(position).copied()),
            Targeting::Parked => None,
        }
    }
}

/// The position `⌊i × t / n⌋` of the target that grant `i` of `n` takes among `t` spread
/// targets (spec §4.5), or `None` when `i ≥ n` or there is no target. Consecutive vectors
/// share a target when `n > t`; every `(t/n)`-th target is taken when `n < t`, as Linux
/// spreads affinity.
pub fn spread_position(i: usize, n: usize, t: usize) -> Option<usize> {
    if i >= n || t == 0 {
        return None;
    }
    // u128: the product of two `usize`s cannot overflow it, whatever the platform.
    let position = (i as u128) * (t as u128) / (n as u128);
    usize::try_from(position).ok()
}

/// An ALLOC request's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alloc<'a> {
    /// The interrupt mechanism.
    pub kind: Kind,
    /// Which indices.
    pub index: IndexSpec,
    /// Fewest vectors the driver accepts (at least 1).
    pub min: u16,
    /// Most vectors the driver wants.
    pub max: u16,
    /// The PASID the IMS slots will carry, if any.
    pub pasid: Option<u32>,
    /// How `targets` is read.
    pub targeting: Targeting,
    /// The destinations: exactly `max` of them ([`Targeting::PerVector`]), 1 to `max_batch`
    /// ([`Targeting::Spread`]), or none ([`Targeting::Parked`]).
    pub targets: &'a [Target],
}

impl<'a> Alloc<'a> {
    /// Linux's `pci_alloc_irq_vectors` shape: between `min` and `targets.len()` vectors of
    /// `kind` at indices the device chooses, no PASID; vector `i` goes to `targets[i]`.
    ///
    /// More than 65,535 targets cannot be expressed; `max` saturates and encoding then
    /// reports the mismatch.
    pub fn any(kind: Kind, min: u16, targets: &'a [Target]) -> Self {
        let max = u16::try_from(targets.len()).unwrap_or(u16::MAX);
        Alloc {
            kind,
            index: IndexSpec::Any,
            min,
            max,
            pasid: None,
            targeting: Targeting::PerVector,
            targets,
        }
    }

    /// Where grant `i` goes when `n` vectors are granted ([`Targeting::target_of`]).
    pub fn target_of(&self, i: usize, n: usize) -> Option<Target> {
        self.targeting.target_of(i, n, self.targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_follows_the_floor_formula_both_ways() {
        // n > t: consecutive vectors share a target.
        let got: std::vec::Vec<_> = (0..6).map(|i| spread_position(i, 6, 4).unwrap()).collect();
        assert_eq!(got, [0, 0, 1, 2, 2, 3]);
        // n < t: every (t/n)-th target.
        let got: std::vec::Vec<_> = (0..3).map(|i| spread_position(i, 3, 8).unwrap()).collect();
        assert_eq!(got, [0, 2, 5]);
        assert_eq!(spread_position(3, 3, 8), None);
        assert_eq!(spread_position(0, 1, 0), None);
        assert_eq!(spread_position(4095, 4096, 4096), Some(4095));
    }

    #[test]
    fn target_of_reads_the_targets_as_the_form_says() {
        let targets = [
            Target::new(0, 0x30),
            Target::new(1, 0x31),
            Target::new(2, 0x32),
        ];
        assert_eq!(
            Targeting::PerVector.target_of(1, 2, &targets),
            Some(targets[1])
        );
        assert_eq!(Targeting::PerVector.target_of(2, 2, &targets), None);
        assert_eq!(
            Targeting::Spread.target_of(1, 2, &targets),
            Some(targets[1])
        );
        assert_eq!(
            Targeting::Spread.target_of(5, 6, &targets),
            Some(targets[2])
        );
        assert_eq!(Targeting::Parked.target_of(0, 1, &targets), None);
        let alloc = Alloc {
            targeting: Targeting::Spread,
            ..Alloc::any(Kind::MsiX, 1, &targets)
        };
        assert_eq!(alloc.target_of(3, 4,), Some(targets[2]));
    }
}
