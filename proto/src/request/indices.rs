//! Which granted vectors a FREE or RETARGET names: a run of indices, or *(extension,
//! bit 12)* a strictly increasing list (spec §4.6, §4.7).

use crate::error::Error;
use crate::le::Le32;
use crate::types::Kind;
use core::fmt;
use core::mem::size_of;

/// Bytes of one index-list entry on the wire.
pub(crate) const INDEX_ENTRY_LEN: usize = size_of::<Le32>();

/// A run of indices of one kind: the body of FREE, and of RETARGET before its targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IndexRange {
    /// The interrupt mechanism.
    pub kind: Kind,
    /// First index of the run.
    pub first: u32,
    /// Length of the run (at least 1).
    pub count: u16,
}

impl IndexRange {
    /// The indices of the run. Decoding guarantees it does not overflow.
    pub fn indices(&self) -> impl Iterator<Item = u32> + use<> {
        let first = self.first;
        (0..u32::from(self.count)).map(move |i| first.wrapping_add(i))
    }
}

/// A strictly increasing list of indices, borrowed from its wire form (4-byte little-endian
/// entries). Every `IndexList` is strictly increasing: [`IndexList::new`] and decoding
/// check it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndexList<'a>(&'a [Le32]);

impl<'a> IndexList<'a> {
    /// The list of `entries`, which must be strictly increasing
    /// ([`Error::IndexListOrder`] names the first entry that is not).
    pub fn new(entries: &'a [Le32]) -> Result<Self, Error> {
        let mut previous: Option<u32> = None;
        for (entry, index) in entries.iter().map(|e| e.get()).enumerate() {
            if previous.is_some_and(|p| index <= p) {
                return Err(Error::IndexListOrder {
                    entry: u32::try_from(entry).unwrap_or(u32::MAX),
                    index,
                });
            }
            previous = Some(index);
        }
        Ok(IndexList(entries))
    }

    /// The list held by `bytes`, a whole number of 4-byte entries (the caller checked the
    /// length), checked in one pass (spec §8: linear in its length).
    pub(crate) fn from_wire(bytes: &'a [u8]) -> Result<Self, Error> {
        let entries: &[Le32] =
            bytemuck::try_cast_slice(bytes).map_err(|_| Error::LengthMismatch {
                expected: bytes.len() / INDEX_ENTRY_LEN * INDEX_ENTRY_LEN,
                got: bytes.len(),
            })?;
        Self::new(entries)
    }

    /// The entries as they travel on the wire.
    pub fn as_wire(&self) -> &'a [Le32] {
        self.0
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the list has no entry (never true of a decoded one).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entry `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<u32> {
        self.0.get(i).map(|e| e.get())
    }

    /// The indices, in (increasing) list order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        self.0.iter().map(|e| e.get())
    }
}

impl fmt::Debug for IndexList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for IndexList<'_> {
    /// Canonical text: `[1,5,9]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, index) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{index}")?;
        }
        f.write_str("]")
    }
}

/// The granted vectors a FREE or RETARGET names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Indices<'a> {
    /// A run `first..first + count` (version 1's form).
    Run(IndexRange),
    /// *(extension, bit 12)* A strictly increasing list (flag `LIST`).
    List {
        /// The interrupt mechanism.
        kind: Kind,
        /// The indices.
        indices: IndexList<'a>,
    },
}

impl<'a> Indices<'a> {
    /// The interrupt mechanism.
    pub const fn kind(&self) -> Kind {
        match self {
            Indices::Run(r) => r.kind,
            Indices::List { kind, .. } => *kind,
        }
    }

    /// How many indices are named: the request's `count` (saturating at 65,535 for a list
    /// too long to encode, which encoding refuses).
    pub fn count(&self) -> u16 {
        match self {
            Indices::Run(r) => r.count,
            Indices::List { indices, .. } => u16::try_from(indices.len()).unwrap_or(u16::MAX),
        }
    }

    /// Whether this is a list (flag `LIST`).
    pub const fn is_list(&self) -> bool {
        matches!(self, Indices::List { .. })
    }

    /// The named indices, in request order: the order in which NOT_GRANTED looks for the
    /// first that is not granted, and the order of RETARGET's targets.
    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        let (run, list) = match self {
            Indices::Run(r) => (Some(r.indices()), None),
            Indices::List { indices, .. } => (None, Some(indices.iter())),
        };
        run.into_iter().flatten().chain(list.into_iter().flatten())
    }
}

impl From<IndexRange> for Indices<'_> {
    fn from(range: IndexRange) -> Self {
        Indices::Run(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_must_increase_strictly_and_name_the_first_offender() {
        let ok = [Le32::new(1), Le32::new(5), Le32::new(9)];
        let list = IndexList::new(&ok).unwrap();
        assert_eq!(list.iter().collect::<std::vec::Vec<_>>(), [1, 5, 9]);
        assert_eq!((list.len(), list.get(2), list.get(3)), (3, Some(9), None));
        assert_eq!(format!("{list}"), "[1,5,9]");
        let equal = [Le32::new(1), Le32::new(2), Le32::new(2), Le32::new(1)];
        assert_eq!(
            IndexList::new(&equal),
            Err(Error::IndexListOrder { entry: 2, index: 2 })
        );
        let down = [Le32::new(u32::MAX), Le32::new(0)];
        assert_eq!(
            IndexList::new(&down),
            Err(Error::IndexListOrder { entry: 1, index: 0 })
        );
        assert!(IndexList::new(&[]).unwrap().is_empty());
    }

    #[test]
    fn runs_and_lists_iterate_in_request_order() {
        let run: Indices = IndexRange {
            kind: Kind::MsiX,
            first: u32::MAX - 1,
            count: 2,
        }
        .into();
        assert_eq!(
            run.iter().collect::<std::vec::Vec<_>>(),
            [u32::MAX - 1, u32::MAX]
        );
        assert_eq!(
            (run.kind(), run.count(), run.is_list()),
            (Kind::MsiX, 2, false)
        );
        let entries = [Le32::new(0), Le32::new(7)];
        let list = Indices::List {
            kind: Kind::Ims,
            indices: IndexList::new(&entries).unwrap(),
        };
        assert_eq!(list.iter().collect::<std::vec::Vec<_>>(), [0, 7]);
        assert_eq!(
            (list.kind(), list.count(), list.is_list()),
            (Kind::Ims, 2, true)
        );
    }
}
