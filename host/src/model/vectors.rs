//! Host CPU vectors: a per-CPU vector matrix in the spirit of Linux's `kernel/irq/matrix.c`.
//!
//! Each vector goes to the CPU with the most free vectors, as Linux's
//! `matrix_find_best_cpu()` does, but without its O(#CPUs) scan: CPUs sit in buckets
//! indexed by their free count (intrusive doubly linked lists), and the highest non-empty
//! bucket is tracked. An allocation or release moves one CPU between adjacent buckets and
//! moves the "highest" mark by at most one, and finds a free vector with a
//! `trailing_zeros` over four 64-bit words: O(1) however full the pool is.

use crate::error::{ConfigError, HostError};

/// A host interrupt vector on one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostVector {
    /// The CPU.
    pub cpu: u32,
    /// The vector on that CPU.
    pub vector: u8,
}

/// Shape of the shipped matrix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorConfig {
    /// Number of host CPUs.
    pub cpus: u32,
    /// First usable vector (Linux: `FIRST_EXTERNAL_VECTOR`, 0x20).
    pub first: u8,
    /// One past the last usable vector (Linux: `FIRST_SYSTEM_VECTOR`, 0xEC).
    pub end: u8,
    /// Vectors inside the range that the system keeps for itself (e.g. 0x80, the IA-32
    /// syscall vector).
    pub reserved: Vec<u8>,
}

impl Default for VectorConfig {
    fn default() -> Self {
        VectorConfig {
            cpus: 2,
            first: 0x20,
            end: 0xEC,
            reserved: vec![0x80],
        }
    }
}

const NONE: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct Cpu {
    /// Bit set = vector free.
    free_bits: [u64; 4],
    free: u32,
    prev: u32,
    next: u32,
}

/// The shipped vector matrix.
#[derive(Clone, Debug)]
pub struct VectorMatrix {
    cpus: Vec<Cpu>,
    /// `heads[k]`: first CPU with exactly `k` free vectors.
    heads: Vec<u32>,
    /// Highest `k` with a non-empty bucket.
    max_free: usize,
    total_free: u32,
    per_cpu: u32,
    /// The usable (non-system) vectors of every CPU.
    usable: [u64; 4],
}

impl VectorMatrix {
    /// A matrix as `config` describes.
    pub fn new(config: &VectorConfig) -> Result<Self, HostError> {
        if config.cpus == 0 {
            return Err(ConfigError::NoHostCpus.into());
        }
        if config.first >= config.end {
            return Err(ConfigError::EmptyVectorRange {
                first: config.first,
                end: config.end,
            }
            .into());
        }
        let mut bits = [0u64; 4];
        for v in config.first..config.end {
            if !config.reserved.contains(&v)
                && let Some(word) = bits.get_mut(usize::from(v / 64))
            {
                *word |= 1 << (v % 64);
            }
        }
        let per_cpu: u32 = bits.iter().map(|w| w.count_ones()).sum();
        if per_cpu == 0 {
            return Err(ConfigError::NoUsableVector.into());
        }
        let mut matrix = VectorMatrix {
            cpus: vec![
                Cpu {
                    free_bits: bits,
                    free: per_cpu,
                    prev: NONE,
                    next: NONE,
                };
                config.cpus as usize
            ],
            heads: vec![NONE; per_cpu as usize + 1],
            max_free: per_cpu as usize,
            total_free: per_cpu.saturating_mul(config.cpus),
            per_cpu,
            usable: bits,
        };
        // Push in reverse so that CPU 0 heads its bucket: ties go to the lowest CPU first.
        for cpu in (0..config.cpus).rev() {
            matrix.push(cpu);
        }
        Ok(matrix)
    }

    fn push(&mut self, cpu: u32) {
        let Some(free) = self.cpus.get(cpu as usize).map(|c| c.free as usize) else {
            return;
        };
        let old_head = self.heads.get(free).copied().unwrap_or(NONE);
        if let Some(c) = self.cpus.get_mut(cpu as usize) {
            c.prev = NONE;
            c.next = old_head;
        }
        if let Some(h) = self.cpus.get_mut(old_head as usize) {
            h.prev = cpu;
        }
        if let Some(head) = self.heads.get_mut(free) {
            *head = cpu;
        }
    }

    fn unlink(&mut self, cpu: u32) {
        let Some((prev, next, free)) = self
            .cpus
            .get(cpu as usize)
            .map(|c| (c.prev, c.next, c.free as usize))
        else {
            return;
        };
        match self.cpus.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => {
                if let Some(head) = self.heads.get_mut(free) {
                    *head = next;
                }
            }
        }
        if let Some(n) = self.cpus.get_mut(next as usize) {
            n.prev = prev;
        }
    }

    fn bucket_empty(&self, k: usize) -> bool {
        self.heads.get(k).is_none_or(|h| *h == NONE)
    }

    /// Free vectors of each CPU, for occupancy reports.
    pub fn free_per_cpu(&self) -> Vec<u32> {
        self.cpus.iter().map(|c| c.free).collect()
    }
}

impl VectorMatrix {
    /// Number of CPUs (vectors live on `0..cpus()`).
    pub fn cpus(&self) -> u32 {
        self.cpus.len() as u32
    }

    /// Vectors that can still be allocated.
    pub fn available(&self) -> u32 {
        self.total_free
    }

    /// Vectors currently allocated (system vectors excluded).
    pub fn allocated(&self) -> u32 {
        self.per_cpu * self.cpus.len() as u32 - self.total_free
    }

    /// Allocates one vector on the least-loaded CPU; `None` when none is left.
    pub fn alloc(&mut self) -> Option<HostVector> {
        if self.total_free == 0 {
            return None;
        }
        let cpu = self
            .heads
            .get(self.max_free)
            .copied()
            .filter(|c| *c != NONE)?;
        self.unlink(cpu);
        let c = self.cpus.get_mut(cpu as usize)?;
        let (w, word) = c.free_bits.iter_mut().enumerate().find(|(_, w)| **w != 0)?;
        let bit = word.trailing_zeros();
        *word &= !(1u64 << bit);
        c.free -= 1;
        self.total_free -= 1;
        self.push(cpu);
        // The CPU left the top bucket for the one just below, so that one is non-empty.
        if self.bucket_empty(self.max_free) && self.max_free > 0 {
            self.max_free -= 1;
        }
        Some(HostVector {
            cpu,
            vector: (w as u32 * 64 + bit) as u8,
        })
    }

    /// Releases a vector (no-op if it is not allocated).
    pub fn free(&mut self, vector: HostVector) {
        if self.is_allocated(vector) {
            self.unlink(vector.cpu);
            if let Some(c) = self.cpus.get_mut(vector.cpu as usize) {
                if let Some(word) = c.free_bits.get_mut(usize::from(vector.vector / 64)) {
                    *word |= 1 << (vector.vector % 64);
                }
                c.free += 1;
                self.max_free = self.max_free.max(c.free as usize);
            }
            self.total_free += 1;
            self.push(vector.cpu);
        }
    }

    /// Whether `vector` is currently allocated.
    pub fn is_allocated(&self, vector: HostVector) -> bool {
        let Some(c) = self.cpus.get(vector.cpu as usize) else {
            return false;
        };
        let w = usize::from(vector.vector / 64);
        let bit = 1u64 << (vector.vector % 64);
        let usable = self.usable.get(w).is_some_and(|u| u & bit != 0);
        usable && c.free_bits.get(w).is_some_and(|word| word & bit == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matrix(cpus: u32) -> VectorMatrix {
        VectorMatrix::new(&VectorConfig {
            cpus,
            ..VectorConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn system_vectors_are_never_handed_out() {
        let mut m = matrix(1);
        assert_eq!(m.available(), 0xEC - 0x20 - 1);
        let mut seen = Vec::new();
        while let Some(v) = m.alloc() {
            seen.push(v.vector);
        }
        assert_eq!(seen.len(), 0xEC - 0x20 - 1);
        assert!(!seen.contains(&0x80));
        assert!(seen.iter().all(|v| (0x20..0xEC).contains(v)));
        assert_eq!(m.alloc(), None);
        assert!(!m.is_allocated(HostVector {
            cpu: 0,
            vector: 0x80
        }));
    }

    #[test]
    fn vectors_spread_over_the_least_loaded_cpu() {
        let mut m = matrix(4);
        let mut cpus: Vec<u32> = (0..8).map(|_| m.alloc().unwrap().cpu).collect();
        assert_eq!(cpus[..4], [0, 1, 2, 3]);
        cpus.sort();
        assert_eq!(cpus, [0, 0, 1, 1, 2, 2, 3, 3]);
        // Free two on CPU 2: it is now the least loaded and gets the next two.
        m.free(HostVector {
            cpu: 2,
            vector: 0x20,
        });
        m.free(HostVector {
            cpu: 2,
            vector: 0x21,
        });
        assert_eq!(m.alloc().unwrap().cpu, 2);
        assert_eq!(m.alloc().unwrap().cpu, 2);
    }

    #[test]
    fn free_of_an_unallocated_vector_changes_nothing() {
        let mut m = matrix(2);
        let v = m.alloc().unwrap();
        let before = m.available();
        m.free(HostVector {
            cpu: 1,
            vector: v.vector,
        });
        m.free(HostVector {
            cpu: 7,
            vector: 0x30,
        });
        m.free(HostVector {
            cpu: 0,
            vector: 0xF0,
        });
        assert_eq!(m.available(), before);
        m.free(v);
        m.free(v);
        assert_eq!(m.available(), before + 1);
    }

    proptest! {
        /// After any sequence, each allocation lands on a CPU with the most free vectors,
        /// and the counters agree with the bitmaps.
        #[test]
        fn always_picks_a_cpu_with_the_most_free(cpus in 1u32..9, ops in prop::collection::vec(any::<Option<prop::sample::Index>>(), 0..600)) {
            let mut m = matrix(cpus);
            let mut held: Vec<HostVector> = Vec::new();
            for op in ops {
                match op {
                    None => {
                        let best = m.free_per_cpu().into_iter().max().unwrap();
                        match m.alloc() {
                            Some(v) => {
                                prop_assert_eq!(m.free_per_cpu()[v.cpu as usize] + 1, best);
                                prop_assert!(!held.contains(&v));
                                held.push(v);
                            }
                            None => prop_assert_eq!(best, 0),
                        }
                    }
                    Some(i) if !held.is_empty() => {
                        let v = held.swap_remove(i.index(held.len()));
                        m.free(v);
                    }
                    Some(_) => {}
                }
                prop_assert_eq!(m.allocated() as usize, held.len());
                prop_assert_eq!(m.free_per_cpu().iter().sum::<u32>(), m.available());
            }
        }
    }
}
