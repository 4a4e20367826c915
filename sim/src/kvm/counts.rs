//! `InterruptCounts`: which (vCPU, vector) pairs received how many interrupts.

use std::collections::BTreeMap;

/// Nonzero interrupt counts, by (vCPU index, vector).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterruptCounts(BTreeMap<(usize, u8), u64>);

impl InterruptCounts {
    /// Interrupts `vcpu` received on `vector`.
    pub fn get(&self, vcpu: usize, vector: u8) -> u64 {
        self.0.get(&(vcpu, vector)).copied().unwrap_or(0)
    }

    /// Interrupts received in all.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Whether no interrupt was received.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The counts, by ascending (vCPU, vector).
    pub fn iter(&self) -> impl Iterator<Item = ((usize, u8), u64)> + '_ {
        self.0.iter().map(|(key, count)| (*key, *count))
    }

    /// The same counts without `vector` (e.g. a barrier's).
    pub fn without_vector(mut self, vector: u8) -> Self {
        self.0.retain(|(_, v), _| *v != vector);
        self
    }
}

impl FromIterator<((usize, u8), u64)> for InterruptCounts {
    /// Builds counts, dropping zeros so equal counts compare equal.
    fn from_iter<I: IntoIterator<Item = ((usize, u8), u64)>>(iter: I) -> Self {
        Self(iter.into_iter().filter(|(_, count)| *count != 0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_are_dropped_and_missing_pairs_read_zero() {
        let counts: InterruptCounts = [((0, 0x40), 2), ((1, 0x41), 0), ((1, 0x20), 1)]
            .into_iter()
            .collect();
        assert_eq!(counts.get(0, 0x40), 2);
        assert_eq!(counts.get(1, 0x41), 0);
        assert_eq!(counts.total(), 3);
        assert_eq!(counts.iter().count(), 2);
        let without = counts.without_vector(0x20);
        assert_eq!(without, [((0, 0x40), 2)].into_iter().collect());
    }
}
