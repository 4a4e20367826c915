//! A free-index bitmap with summary levels: finds the lowest free index, or the lowest free
//! naturally aligned block of 1..=32 indices, in O(levels) (3 levels for 65,536 entries)
//! instead of the linear `bitmap_find_free_region` scan Linux's `alloc_irte()` does.
//!
//! Leaf words hold one bit per index (1 = free). For each block class `c` (block size
//! `1 << c`, c = 0..=5) a summary tree marks the leaf words that contain a free aligned block
//! of that size; every level above marks the words of the level below that are non-zero.
//! A block of at most 32 aligned entries never straddles a 64-bit word, so one leaf word
//! decides whether it fits. A change to a leaf word touches only the summaries whose answer
//! for that word changed (usually none). A bitmap built with [`IndexBitmap::singles`] keeps
//! only the single-index summary, for tables that never allocate blocks; block queries
//! on it fall back to a scan of the leaves.

/// The largest power of two ≤ `n` (0 for 0): the size of the largest MSI block `n`
/// vectors can hold.
pub(crate) fn floor_pow2(n: u32) -> u32 {
    if n == 0 {
        0
    } else {
        1 << (31 - n.leading_zeros())
    }
}

/// Block classes: sizes 1, 2, 4, 8, 16, 32.
const CLASSES: usize = 6;

/// Bits at the start of every aligned block of `1 << class` bits.
const fn start_mask(class: usize) -> u64 {
    match class {
        0 => u64::MAX,
        1 => 0x5555_5555_5555_5555,
        2 => 0x1111_1111_1111_1111,
        3 => 0x0101_0101_0101_0101,
        4 => 0x0001_0001_0001_0001,
        _ => 0x0000_0001_0000_0001,
    }
}

/// Positions (within `word`) where a free aligned block of `1 << class` entries starts.
fn block_starts(word: u64, class: usize) -> u64 {
    let mut m = word;
    let mut shift = 1;
    while shift < (1 << class) {
        m &= m >> shift;
        shift <<= 1;
    }
    m & start_mask(class)
}

/// Bit `c` set: `word` holds a free aligned block of `1 << c` entries (c = 0..=5).
fn block_classes(word: u64) -> u8 {
    let mut classes = 0;
    let mut m = word;
    for class in 0..CLASSES {
        if class > 0 {
            // Now bit i of `m`: the `1 << class` bits from i on are all free.
            m &= m >> (1 << (class - 1));
        }
        if m & start_mask(class) != 0 {
            classes |= 1 << class;
        }
    }
    classes
}

/// Positions (within `word`) where `len` (1..=64) consecutive set bits start; a run that
/// would cross bit 63 does not count. O(log len): each step doubles the run length known
/// to start at every marked bit.
fn run_starts(word: u64, len: u32) -> u64 {
    let mut m = word;
    let mut known = 1;
    while known < len {
        let shift = (len - known).min(known);
        m &= m >> shift;
        known += shift;
    }
    m
}

/// The longest run of set bits inside `word`: a binary search over [`run_starts`].
fn longest_run(word: u64) -> u32 {
    let (mut lo, mut hi) = (0u32, 64u32);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if run_starts(word, mid) != 0 {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// The positions of the set bits of `word`, lowest first.
fn set_bits(mut word: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if word == 0 {
            return None;
        }
        let bit = word.trailing_zeros() as usize;
        word &= word - 1;
        Some(bit)
    })
}

/// One summary tree: `levels[0]` has a bit per leaf word, each higher level a bit per word
/// of the level below; the top level is a single word.
#[derive(Clone, Debug)]
struct Summary {
    levels: Vec<Vec<u64>>,
}

impl Summary {
    fn new(leaf_words: usize) -> Self {
        let mut levels = Vec::new();
        let mut bits = leaf_words;
        loop {
            let words = bits.div_ceil(64).max(1);
            levels.push(vec![0u64; words]);
            if words == 1 {
                break;
            }
            bits = words;
        }
        Summary { levels }
    }

    /// Sets or clears the bit of leaf word `i`, propagating up while a word changes
    /// between zero and non-zero.
    fn set(&mut self, mut i: usize, on: bool) {
        for level in &mut self.levels {
            let Some(word) = level.get_mut(i / 64) else {
                return;
            };
            let was_nonzero = *word != 0;
            if on {
                *word |= 1 << (i % 64);
            } else {
                *word &= !(1 << (i % 64));
            }
            if (*word != 0) == was_nonzero {
                return;
            }
            i /= 64;
        }
    }

    /// Lowest leaf word whose bit is set.
    fn first(&self) -> Option<usize> {
        let mut i = 0usize;
        for level in self.levels.iter().rev() {
            let word = *level.get(i)?;
            if word == 0 {
                return None;
            }
            i = i * 64 + word.trailing_zeros() as usize;
        }
        Some(i)
    }

    fn any(&self) -> bool {
        self.levels
            .last()
            .and_then(|top| top.first())
            .is_some_and(|w| *w != 0)
    }
}

/// A set of `len` indices, each free or used, with O(levels) search for free ones.
#[derive(Clone, Debug)]
pub struct IndexBitmap {
    len: u32,
    free: u32,
    leaves: Vec<u64>,
    /// One summary per tracked block class, from class 0 (single indices) up.
    summaries: Vec<Summary>,
}

impl IndexBitmap {
    /// A bitmap of `len` indices, all free, that finds free aligned blocks of 1..=32.
    pub fn new(len: u32) -> Self {
        Self::with_classes(len, CLASSES)
    }

    /// A bitmap of `len` indices, all free, that finds free single indices in O(levels);
    /// block queries scan the leaves.
    pub fn singles(len: u32) -> Self {
        Self::with_classes(len, 1)
    }

    fn with_classes(len: u32, classes: usize) -> Self {
        let words = (len as usize).div_ceil(64).max(1);
        let mut leaves = vec![u64::MAX; words];
        let tail = len as usize % 64;
        if let Some(last) = leaves.last_mut() {
            if len == 0 {
                *last = 0;
            } else if tail != 0 {
                *last = (1u64 << tail) - 1;
            }
        }
        let mut bitmap = IndexBitmap {
            len,
            free: len,
            leaves,
            summaries: (0..classes).map(|_| Summary::new(words)).collect(),
        };
        for i in 0..words {
            let word = bitmap.leaves.get(i).copied().unwrap_or(0);
            for (class, summary) in bitmap.summaries.iter_mut().enumerate() {
                summary.set(i, block_starts(word, class) != 0);
            }
        }
        bitmap
    }

    /// Number of indices.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Number of free indices.
    pub fn free_count(&self) -> u32 {
        self.free
    }

    /// Whether `index` exists and is free.
    pub fn is_free(&self, index: u32) -> bool {
        index < self.len
            && self
                .leaves
                .get(index as usize / 64)
                .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Sets leaf word `w` to `word` and updates the summaries whose answer changed.
    fn set_word(&mut self, w: usize, word: u64) {
        let Some(leaf) = self.leaves.get_mut(w) else {
            return;
        };
        let old = std::mem::replace(leaf, word);
        if self.summaries.len() == 1 {
            // A table of single indices keeps only "has a free index": no block classes.
            if (old == 0) != (word == 0)
                && let Some(summary) = self.summaries.first_mut()
            {
                summary.set(w, word != 0);
            }
            return;
        }
        let new = block_classes(word);
        let mut changed = block_classes(old) ^ new;
        while changed != 0 {
            let class = changed.trailing_zeros() as usize;
            changed &= changed - 1;
            if let Some(summary) = self.summaries.get_mut(class) {
                summary.set(w, new & (1 << class) != 0);
            }
        }
    }

    /// Marks `index` used. Returns false (and changes nothing) if it was not free.
    pub fn take(&mut self, index: u32) -> bool {
        if !self.is_free(index) {
            return false;
        }
        let w = index as usize / 64;
        let word = self.leaves.get(w).copied().unwrap_or(0);
        self.set_word(w, word & !(1 << (index % 64)));
        self.free -= 1;
        true
    }

    /// Marks `index` free. Returns false (and changes nothing) if it was already free or
    /// does not exist.
    pub fn put(&mut self, index: u32) -> bool {
        if index >= self.len || self.is_free(index) {
            return false;
        }
        let w = index as usize / 64;
        let word = self.leaves.get(w).copied().unwrap_or(0);
        self.set_word(w, word | 1 << (index % 64));
        self.free += 1;
        true
    }

    /// Takes the `n` lowest free indices (all of them if fewer are free), handing each to
    /// `taken_index` lowest first; how many it took. One leaf-word update per word touched
    /// rather than one per index: a batch of 256 costs 4 summary updates, not 256.
    pub fn take_lowest(&mut self, n: u32, mut taken_index: impl FnMut(u32)) -> u32 {
        let mut taken = 0;
        while taken < n {
            let Some(first) = self.first_free() else {
                break;
            };
            let w = first as usize / 64;
            let word = self.leaves.get(w).copied().unwrap_or(0);
            let mut left = word;
            while left != 0 && taken < n {
                taken_index((w * 64) as u32 + left.trailing_zeros());
                left &= left - 1;
                taken += 1;
            }
            let took = word & !left;
            self.set_word(w, left);
            self.free -= took.count_ones();
        }
        taken
    }

    /// Marks every index of `indices` free, one leaf-word update per run of indices in the
    /// same word; how many were used before (indices already free or past the end are
    /// skipped, as [`IndexBitmap::put`] does).
    pub fn put_all(&mut self, indices: impl IntoIterator<Item = u32>) -> u32 {
        let mut put = 0;
        let mut pending: Option<(usize, u64)> = None;
        for index in indices {
            if index >= self.len {
                continue;
            }
            let w = index as usize / 64;
            let bit = 1u64 << (index % 64);
            let mask = match pending {
                Some((pw, mask)) if pw == w => mask,
                other => {
                    if let Some((pw, mask)) = other {
                        put += self.release_word(pw, mask);
                    }
                    0
                }
            };
            pending = Some((w, mask | bit));
        }
        if let Some((pw, mask)) = pending {
            put += self.release_word(pw, mask);
        }
        put
    }

    /// Frees the bits of `mask` in leaf word `w` that are used; how many that was.
    fn release_word(&mut self, w: usize, mask: u64) -> u32 {
        let word = self.leaves.get(w).copied().unwrap_or(0);
        let freed = mask & !word;
        if freed != 0 {
            self.set_word(w, word | freed);
            self.free += freed.count_ones();
        }
        freed.count_ones()
    }

    /// The free indices, lowest first.
    pub fn free_indices(&self) -> impl Iterator<Item = u32> + '_ {
        // The single-index summary marks the leaf words with a free index: skip the rest.
        let marks = self
            .summaries
            .first()
            .and_then(|s| s.levels.first())
            .map_or(&[][..], Vec::as_slice);
        marks
            .iter()
            .enumerate()
            .flat_map(|(i, mark)| set_bits(*mark).map(move |b| i * 64 + b))
            .flat_map(|w| {
                let word = self.leaves.get(w).copied().unwrap_or(0);
                set_bits(word).map(move |b| (w * 64 + b) as u32)
            })
    }

    /// The lowest free index, without taking it.
    pub fn first_free(&self) -> Option<u32> {
        self.first_free_block(1)
    }

    /// The lowest free naturally aligned block of `size` indices (a power of two ≤ 32),
    /// without taking it.
    pub fn first_free_block(&self, size: u32) -> Option<u32> {
        let class = Self::class(size)?;
        let w = match self.summaries.get(class) {
            Some(summary) => summary.first()?,
            None => self
                .leaves
                .iter()
                .position(|word| block_starts(*word, class) != 0)?,
        };
        let starts = block_starts(*self.leaves.get(w)?, class);
        if starts == 0 {
            return None;
        }
        Some((w * 64) as u32 + starts.trailing_zeros())
    }

    /// Whether a free aligned block of `size` indices exists: O(1) (a scan if the bitmap
    /// does not track blocks of that size).
    pub fn has_free_block(&self, size: u32) -> bool {
        let Some(class) = Self::class(size) else {
            return false;
        };
        match self.summaries.get(class) {
            Some(summary) => summary.any(),
            None => self.first_free_block(size).is_some(),
        }
    }

    /// The largest power of two ≤ `cap` (and ≤ 32) for which a free aligned block exists,
    /// or 0.
    pub fn largest_free_block(&self, cap: u32) -> u32 {
        let mut size = 32u32;
        while size > 0 {
            if size <= cap && self.has_free_block(size) {
                return size;
            }
            size /= 2;
        }
        0
    }

    /// The longest run of consecutive free indices: one pass over the leaf words,
    /// O(len / 64).
    pub fn longest_free_run(&self) -> u32 {
        let (mut best, mut run) = (0u64, 0u64);
        for &word in &self.leaves {
            if word == u64::MAX {
                run += 64;
                continue;
            }
            // The run carried from the words below ends in this word's low bits.
            best = best
                .max(run + u64::from(word.trailing_ones()))
                .max(u64::from(longest_run(word)));
            run = u64::from(word.leading_ones());
        }
        // Bits past `len` are never free, so no run reaches beyond the table.
        u32::try_from(best.max(run)).unwrap_or(u32::MAX)
    }

    /// The lowest index at which `n` (≥ 1) consecutive indices are free, without taking
    /// them: one pass over the leaf words, O(len / 64).
    pub fn first_free_run(&self, n: u32) -> Option<u32> {
        if n == 0 {
            return None;
        }
        let n64 = u64::from(n);
        // The run of free indices that reaches the top of the words seen so far.
        let (mut run, mut start) = (0u64, 0u64);
        for (w, &word) in self.leaves.iter().enumerate() {
            let base = w as u64 * 64;
            if word == u64::MAX {
                if run == 0 {
                    start = base;
                }
                run += 64;
            } else {
                if run > 0 && run + u64::from(word.trailing_ones()) >= n64 {
                    return u32::try_from(start).ok();
                }
                if n <= 64 {
                    let starts = run_starts(word, n);
                    if starts != 0 {
                        return u32::try_from(base + u64::from(starts.trailing_zeros())).ok();
                    }
                }
                run = u64::from(word.leading_ones());
                start = base + 64 - run;
            }
            if run >= n64 {
                return u32::try_from(start).ok();
            }
        }
        None
    }

    fn class(size: u32) -> Option<usize> {
        (size.is_power_of_two() && size <= 32).then(|| size.trailing_zeros() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lowest_free_index_and_aligned_blocks() {
        let mut b = IndexBitmap::new(200);
        assert_eq!(b.free_count(), 200);
        assert_eq!(b.first_free(), Some(0));
        assert!(b.take(0));
        assert!(!b.take(0));
        assert_eq!(b.first_free(), Some(1));
        // Index 0 used: the first aligned 4-block starts at 4, the first 32-block at 32.
        assert_eq!(b.first_free_block(4), Some(4));
        assert_eq!(b.first_free_block(32), Some(32));
        assert!(b.put(0));
        assert!(!b.put(0));
        assert_eq!(b.first_free_block(32), Some(0));
        assert!(!b.is_free(200));
        assert!(!b.take(200));
    }

    #[test]
    fn the_tail_beyond_len_is_never_free() {
        let mut b = IndexBitmap::new(70);
        for i in 0..64 {
            assert!(b.take(i));
        }
        // 64..70 are free, but no aligned 8-block fits below 70.
        assert_eq!(b.first_free_block(4), Some(64));
        assert_eq!(b.first_free_block(8), None);
        assert_eq!(b.largest_free_block(32), 4);
    }

    #[test]
    fn a_full_large_table_reports_nothing_free() {
        let mut b = IndexBitmap::new(65_536);
        for i in 0..65_536 {
            assert!(b.take(i));
        }
        assert_eq!(b.first_free(), None);
        assert_eq!(b.free_count(), 0);
        assert!(b.put(40_000));
        assert_eq!(b.first_free(), Some(40_000));
        assert_eq!(b.largest_free_block(32), 1);
    }

    #[test]
    fn an_empty_table_has_nothing() {
        let b = IndexBitmap::new(0);
        assert_eq!(b.len(), 0);
        assert_eq!(b.first_free(), None);
        assert_eq!(b.largest_free_block(32), 0);
    }

    #[test]
    fn free_indices_are_listed_lowest_first_and_skip_full_words() {
        let mut b = IndexBitmap::singles(300);
        for i in 0..256 {
            assert!(b.take(i));
        }
        assert!(b.put(3));
        assert!(b.put(130));
        let free: Vec<u32> = b.free_indices().take(4).collect();
        assert_eq!(free, [3, 130, 256, 257]);
        assert_eq!(b.free_indices().count(), 46);
        assert_eq!(IndexBitmap::new(0).free_indices().count(), 0);
    }

    #[test]
    fn runs_inside_a_word_and_across_words() {
        assert_eq!(run_starts(0b0111_0110, 2), 0b0011_0010);
        assert_eq!(run_starts(u64::MAX, 64), 1);
        assert_eq!(run_starts(u64::MAX >> 1, 64), 0);
        assert_eq!((longest_run(0), longest_run(u64::MAX)), (0, 64));
        assert_eq!(longest_run(0b1110_1111_0011), 4);
        let mut b = IndexBitmap::singles(300);
        // Used: 3, and 100..=190: free runs 0..3, 4..100, 191..300.
        b.take(3);
        for i in 100..=190 {
            b.take(i);
        }
        assert_eq!(b.longest_free_run(), 109);
        assert_eq!(b.first_free_run(3), Some(0));
        assert_eq!(b.first_free_run(4), Some(4));
        assert_eq!(b.first_free_run(96), Some(4));
        assert_eq!(b.first_free_run(97), Some(191));
        assert_eq!(b.first_free_run(109), Some(191));
        assert_eq!(b.first_free_run(110), None);
        assert_eq!(b.first_free_run(0), None);
        assert_eq!(IndexBitmap::new(0).longest_free_run(), 0);
        assert_eq!(IndexBitmap::new(128).first_free_run(128), Some(0));
    }

    proptest! {
        /// The per-class answers of one pass agree with each class computed alone.
        #[test]
        fn block_classes_agree_with_block_starts(word in any::<u64>()) {
            for class in 0..CLASSES {
                prop_assert_eq!(block_classes(word) & (1 << class) != 0, block_starts(word, class) != 0);
            }
        }

        /// A batch take and a batch put do what as many single takes and puts do.
        #[test]
        fn batches_agree_with_single_operations(len in 1u32..3000, used in prop::collection::vec(0u32..3000, 0..300), n in 0u32..400, back in prop::collection::vec(0u32..3100, 0..300), singles in any::<bool>()) {
            let fresh = |len| if singles { IndexBitmap::singles(len) } else { IndexBitmap::new(len) };
            let (mut batch, mut single) = (fresh(len), fresh(len));
            for i in &used {
                batch.take(i % len);
                single.take(i % len);
            }
            let mut taken = Vec::new();
            let count = batch.take_lowest(n, |i| taken.push(i));
            let mut expected = Vec::new();
            while expected.len() < n as usize {
                let Some(i) = single.first_free() else { break };
                single.take(i);
                expected.push(i);
            }
            prop_assert_eq!(count as usize, taken.len());
            prop_assert_eq!(&taken, &expected);
            let mut order = back.clone();
            order.sort_unstable();
            let put = batch.put_all(order.iter().copied());
            let single_put = order.iter().filter(|i| single.put(**i)).count();
            prop_assert_eq!(put as usize, single_put);
            prop_assert_eq!(batch.free_count(), single.free_count());
            prop_assert_eq!(batch.free_indices().collect::<Vec<_>>(), single.free_indices().collect::<Vec<_>>());
            for size in [1u32, 2, 4, 8, 16, 32] {
                prop_assert_eq!(batch.first_free_block(size), single.first_free_block(size));
                prop_assert_eq!(batch.has_free_block(size), single.has_free_block(size));
            }
        }

        /// The summary search agrees with a linear scan after any sequence of changes, with
        /// every block class tracked or only single indices.
        #[test]
        fn agrees_with_a_linear_scan(len in 1u32..5000, ops in prop::collection::vec((any::<bool>(), 0u32..5000), 0..400), singles in any::<bool>()) {
            let mut b = if singles { IndexBitmap::singles(len) } else { IndexBitmap::new(len) };
            let mut model = vec![true; len as usize];
            for (take, i) in ops {
                let i = i % len;
                if take {
                    prop_assert_eq!(b.take(i), model[i as usize]);
                    model[i as usize] = false;
                } else {
                    prop_assert_eq!(b.put(i), !model[i as usize]);
                    model[i as usize] = true;
                }
            }
            prop_assert_eq!(b.free_count() as usize, model.iter().filter(|f| **f).count());
            let free: Vec<u32> = (0..len).filter(|i| model[*i as usize]).collect();
            prop_assert_eq!(b.free_indices().collect::<Vec<_>>(), free);
            let mut longest = 0u32;
            let mut run = 0u32;
            for free in &model {
                run = if *free { run + 1 } else { 0 };
                longest = longest.max(run);
            }
            prop_assert_eq!(b.longest_free_run(), longest);
            for n in [1u32, 2, 3, 7, 63, 64, 65, 130, longest.max(1), longest + 1] {
                let linear = (0..len).find(|s| {
                    (*s..s.saturating_add(n)).all(|i| model.get(i as usize).copied().unwrap_or(false))
                });
                prop_assert_eq!(b.first_free_run(n), linear, "n={}", n);
            }
            for size in [1u32, 2, 4, 8, 16, 32] {
                let linear = (0..len).step_by(size as usize).find(|s| {
                    (*s..s + size).all(|i| model.get(i as usize).copied().unwrap_or(false))
                });
                prop_assert_eq!(b.first_free_block(size), linear);
            }
        }
    }
}
