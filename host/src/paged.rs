//! `PagedMap`: values by `u32` index in pages of 32, allocated when first used — no
//! hashing, no per-entry key, memory that follows the indices in use (an IMS table may
//! have a million slots and a few grants).
//!
//! A page that empties is freed, except the last [`SPARE_PAGES`] to empty, kept for reuse,
//! so that taking and giving back the same indices over and over (one index, or a batch of
//! up to 256) does not allocate each time. Each page keeps a mask of its occupied slots,
//! so that walking every value (what the invariant checks do after every request) costs
//! the values held, not the pages' 32 slots each.

/// Entries per page.
const PAGE: usize = 32;

/// Empty pages kept for reuse: a batch of 256 indices' worth, what one request of the
/// largest usual table (a 256-vector ALLOC, then its FREE) empties and fills again.
const SPARE_PAGES: usize = 8;

#[derive(Debug)]
struct Page<T> {
    /// Bit `i`: slot `i` holds a value.
    used: u32,
    slots: [Option<T>; PAGE],
}

impl<T> Page<T> {
    fn empty() -> Box<Self> {
        Box::new(Page {
            used: 0,
            slots: std::array::from_fn(|_| None),
        })
    }

    /// The occupied slots' values, by ascending slot.
    fn values(&self) -> impl Iterator<Item = (usize, &T)> + '_ {
        let mut mask = self.used;
        std::iter::from_fn(move || {
            while mask != 0 {
                let at = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                if let Some(Some(v)) = self.slots.get(at) {
                    return Some((at, v));
                }
            }
            None
        })
    }
}

/// Values by index.
#[derive(Debug)]
pub(crate) struct PagedMap<T> {
    pages: Vec<Option<Box<Page<T>>>>,
    spare: Vec<Box<Page<T>>>,
    len: u32,
}

impl<T> Default for PagedMap<T> {
    fn default() -> Self {
        PagedMap {
            pages: Vec::new(),
            spare: Vec::new(),
            len: 0,
        }
    }
}

fn slot(index: u32) -> (usize, usize) {
    (index as usize / PAGE, index as usize % PAGE)
}

impl<T> PagedMap<T> {
    /// The value at `index`.
    pub(crate) fn get(&self, index: &u32) -> Option<&T> {
        let (page, at) = slot(*index);
        self.pages.get(page)?.as_deref()?.slots.get(at)?.as_ref()
    }

    /// The value at `index`, to change it in place.
    pub(crate) fn get_mut(&mut self, index: &u32) -> Option<&mut T> {
        let (page, at) = slot(*index);
        self.pages
            .get_mut(page)?
            .as_deref_mut()?
            .slots
            .get_mut(at)?
            .as_mut()
    }

    /// Number of values.
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    /// Stores `value` at `index`, returning the one it replaces.
    pub(crate) fn insert(&mut self, index: u32, value: T) -> Option<T> {
        let (p, at) = slot(index);
        if self.pages.len() <= p {
            self.pages.resize_with(p + 1, || None);
        }
        let spare = &mut self.spare;
        let page = self
            .pages
            .get_mut(p)?
            .get_or_insert_with(|| spare.pop().unwrap_or_else(Page::empty));
        let previous = page.slots.get_mut(at)?.replace(value);
        if previous.is_none() {
            page.used |= 1 << at;
            self.len += 1;
        }
        previous
    }

    /// Takes the value at `index` out.
    pub(crate) fn remove(&mut self, index: &u32) -> Option<T> {
        let (p, at) = slot(*index);
        let entry = self.pages.get_mut(p)?;
        let page = entry.as_deref_mut()?;
        let value = page.slots.get_mut(at)?.take()?;
        page.used &= !(1 << at);
        self.len -= 1;
        if page.used == 0
            && let Some(empty) = entry.take()
            && self.spare.len() < SPARE_PAGES
        {
            self.spare.push(empty);
        }
        Some(value)
    }

    /// Every value, by ascending index.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> + '_ {
        self.pages.iter().enumerate().flat_map(|(p, page)| {
            page.iter()
                .flat_map(move |page| page.values().map(move |(i, v)| ((p * PAGE + i) as u32, v)))
        })
    }

    /// Every index, by ascending index.
    pub(crate) fn keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter().map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_by_index_across_pages_with_the_last_empty_pages_kept() {
        let mut map = PagedMap::default();
        assert_eq!(map.insert(70, 'a'), None);
        assert_eq!(map.insert(3, 'b'), None);
        assert_eq!(map.insert(3, 'c'), Some('b'));
        assert_eq!(map.len(), 2);
        assert_eq!(map.get(&3), Some(&'c'));
        assert_eq!(map.get(&4), None);
        assert_eq!(map.get(&1_000_000), None);
        *map.get_mut(&70).unwrap() = 'd';
        assert_eq!(map.iter().collect::<Vec<_>>(), [(3, &'c'), (70, &'d')]);
        assert_eq!(map.remove(&70), Some('d'));
        assert_eq!(map.remove(&70), None);
        assert_eq!(map.remove(&3), Some('c'));
        assert_eq!(map.len(), 0);
        assert_eq!(map.iter().count(), 0);
        // The pages emptied last are kept and reused.
        assert_eq!(map.spare.len(), 2);
        assert_eq!(map.insert(40, 'e'), None);
        assert_eq!(map.spare.len(), 1);
        assert_eq!(map.keys().collect::<Vec<_>>(), [40]);
    }

    #[test]
    fn at_most_a_batch_of_empty_pages_is_kept() {
        let mut map = PagedMap::default();
        let indices = 0..(PAGE * (SPARE_PAGES + 3)) as u32;
        for i in indices.clone() {
            map.insert(i, i);
        }
        assert_eq!(map.pages.iter().flatten().count(), SPARE_PAGES + 3);
        for i in indices.clone() {
            assert_eq!(map.remove(&i), Some(i));
        }
        assert_eq!(map.spare.len(), SPARE_PAGES);
        assert_eq!(map.pages.iter().flatten().count(), 0);
        // Filling again takes the spares first.
        for i in indices.take(PAGE * SPARE_PAGES) {
            map.insert(i, i);
        }
        assert!(map.spare.is_empty());
    }
}
