//! The sets the invariant checks use to find a resource held twice: hashed with a cheap
//! multiply-and-fold instead of SipHash, and sized once. The checks run after every
//! request in tests and fuzzing, over keys (IRTE numbers, host vectors, route ids) that
//! come from the host's own allocators, so resistance to chosen keys buys nothing there.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// Folds each word written into the state with a multiply (the odd constant is 2^64
/// divided by the golden ratio, which spreads consecutive keys over the table).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FoldHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(K);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A set for the invariant checks.
pub(crate) type CheckSet<T> = HashSet<T, BuildHasherDefault<FoldHasher>>;

/// An empty [`CheckSet`] with room for `n` keys.
pub(crate) fn check_set<T>(n: usize) -> CheckSet<T> {
    CheckSet::with_capacity_and_hasher(n, BuildHasherDefault::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_held_twice() {
        let mut set = check_set(4);
        assert!(set.insert((0u16, 7u16)));
        assert!(set.insert((1, 7)));
        assert!(set.insert((7, 0)));
        assert!(!set.insert((0, 7)));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn different_keys_hash_apart() {
        let hash = |k: (u16, u16)| {
            let mut h = FoldHasher::default();
            std::hash::Hash::hash(&k, &mut h);
            h.finish()
        };
        assert_ne!(hash((0, 1)), hash((1, 0)));
        assert_ne!(hash((0, 1)), hash((0, 2)));
    }
}
