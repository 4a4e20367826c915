//! The free GSIs of a route table: a bitmap handing out the lowest free one first.
//!
//! Lowest-first keeps a VM's GSIs dense (KVM sizes its routing lookup by the highest GSI)
//! and makes allocation order predictable. Taking and returning are O(1) amortized: a
//! cursor remembers the lowest word that may hold a free bit.

/// Free offsets in `0..len`, lowest first.
#[derive(Debug)]
pub(super) struct FreeGsis {
    /// Bit `i % 64` of word `i / 64` is set when offset `i` is free.
    words: Vec<u64>,
    /// How many bits are set.
    count: usize,
    /// Offsets are below this.
    end: usize,
    /// No word before this one has a set bit.
    lowest_word: usize,
}

impl FreeGsis {
    /// Offsets `0..len`, all free.
    pub(super) fn all(len: usize) -> Self {
        let mut words = vec![u64::MAX; len.div_ceil(64)];
        if let Some(last) = words.last_mut()
            && len % 64 != 0
        {
            *last = (1u64 << (len % 64)) - 1;
        }
        Self {
            words,
            count: len,
            end: len,
            lowest_word: 0,
        }
    }

    /// How many offsets are free.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Takes the lowest free offset.
    pub(super) fn take_lowest(&mut self) -> Option<usize> {
        while let Some(word) = self.words.get_mut(self.lowest_word) {
            if *word != 0 {
                let bit = word.trailing_zeros() as usize;
                *word &= !(1u64 << bit);
                self.count -= 1;
                return Some(self.lowest_word * 64 + bit);
            }
            self.lowest_word += 1;
        }
        None
    }

    /// Returns `offset` to the pool. Offsets out of range or already free are ignored.
    pub(super) fn put(&mut self, offset: usize) {
        if offset >= self.end {
            return;
        }
        let index = offset / 64;
        let bit = 1u64 << (offset % 64);
        if let Some(word) = self.words.get_mut(index)
            && *word & bit == 0
        {
            *word |= bit;
            self.count += 1;
            self.lowest_word = self.lowest_word.min(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_the_lowest_free_offset_until_none_is_left() {
        let mut free = FreeGsis::all(130);
        let taken: Vec<_> = (0..130).map(|_| free.take_lowest().unwrap()).collect();
        assert_eq!(taken, (0..130).collect::<Vec<_>>());
        assert_eq!((free.len(), free.take_lowest()), (0, None));
    }

    #[test]
    fn returned_offsets_come_back_lowest_first() {
        let mut free = FreeGsis::all(200);
        for _ in 0..200 {
            free.take_lowest();
        }
        for offset in [150, 3, 70, 3] {
            free.put(offset);
        }
        free.put(200); // out of range: ignored
        assert_eq!(free.len(), 3);
        assert_eq!(free.take_lowest(), Some(3));
        assert_eq!(free.take_lowest(), Some(70));
        free.put(0);
        assert_eq!(free.take_lowest(), Some(0));
        assert_eq!(free.take_lowest(), Some(150));
        assert_eq!(free.take_lowest(), None);
    }

    #[test]
    fn a_range_that_fills_whole_words_has_no_phantom_offsets() {
        let mut free = FreeGsis::all(128);
        assert_eq!(free.len(), 128);
        let last = (0..128).filter_map(|_| free.take_lowest()).last();
        assert_eq!((last, free.take_lowest()), (Some(127), None));
        assert_eq!(FreeGsis::all(0).len(), 0);
    }
}
