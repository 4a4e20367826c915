//! Interrupt remapping: a model of VT-d-style remapping units (IRTE tables).
//!
//! A remappable MSI carries an index into its unit's table instead of a destination; the
//! unit looks the entry up, checks that the sender's requester ID matches the entry's
//! source-id, and delivers to the entry's destination. That check is the guarantee that a
//! device can only fire interrupts the host granted to it.

use super::vectors::HostVector;
use crate::backend::GuestDest;
use crate::bitmap::IndexBitmap;
use crate::error::{ConfigError, HostError};
use pvirq_proto::{Kind, MsiMessage, RemappableMsi};

/// Where an IRTE sends its interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IrteDest {
    /// Remapped format: to a host CPU vector (whose handler forwards it to the guest).
    Remapped(HostVector),
    /// Posted format: straight into the posted-interrupt descriptor of the vCPU with this
    /// APIC ID, at this guest vector; no host vector is involved.
    Posted(GuestDest),
    /// Posted format with no vCPU yet (a parked grant, spec §3.5): interrupts are
    /// dropped until it is retargeted, which needs no resource it does not hold.
    PostedParked,
}

/// Which enabled vector an IRTE backs: its device's kind and index (the device is the
/// entry's source-id).
pub type IrteOwner = (Kind, u32);

/// One interrupt-remapping table entry, as the unit holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Irte {
    /// Requester ID of the only device allowed to use this entry.
    pub source_id: u16,
    /// Destination, once programmed; `None` while only reserved.
    pub dest: Option<IrteDest>,
    /// The vector it backs, once programmed.
    pub owner: Option<IrteOwner>,
}

/// Why a unit refused to deliver a message (an interrupt-remapping fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RemapFault {
    /// No device with this requester ID is registered with any unit.
    UnknownSource,
    /// The message is not a well-formed remappable MSI (compatibility format, bad bits).
    NotRemappable,
    /// The message selects an index beyond the unit's table.
    IndexOutOfRange {
        /// The selected index.
        index: u32,
    },
    /// The selected entry is not allocated.
    EntryNotPresent {
        /// The selected index.
        index: u32,
    },
    /// The entry belongs to another device.
    SourceIdMismatch {
        /// The selected index.
        index: u32,
        /// The entry's source-id.
        expected: u16,
    },
    /// The entry is reserved but has no destination yet.
    NotProgrammed {
        /// The selected index.
        index: u32,
    },
}

/// Shape of the shipped remapping model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemapConfig {
    /// Number of remapping units (IOMMUs).
    pub units: u16,
    /// Entries per unit's table (1..=65,536; VT-d has 65,536).
    pub entries_per_unit: u32,
}

impl Default for RemapConfig {
    fn default() -> Self {
        RemapConfig {
            units: 1,
            entries_per_unit: 65_536,
        }
    }
}

struct Unit {
    free: IndexBitmap,
    entries: Vec<Option<Irte>>,
}

/// The shipped model: VT-d-style tables with summary-bitmap allocation (O(levels) per
/// entry or aligned block, see [`IndexBitmap`]).
pub struct RemapUnits {
    units: Vec<Unit>,
}

impl RemapUnits {
    /// Units as `config` describes.
    pub fn new(config: RemapConfig) -> Result<Self, HostError> {
        if config.units == 0 {
            return Err(ConfigError::NoRemapUnits.into());
        }
        if config.entries_per_unit == 0 || config.entries_per_unit > 65_536 {
            return Err(ConfigError::RemapEntries(config.entries_per_unit).into());
        }
        let units = (0..config.units)
            .map(|_| Unit {
                free: IndexBitmap::new(config.entries_per_unit),
                entries: vec![None; config.entries_per_unit as usize],
            })
            .collect();
        Ok(RemapUnits { units })
    }

    fn unit(&self, unit: u16) -> Option<&Unit> {
        self.units.get(usize::from(unit))
    }

    fn unit_mut(&mut self, unit: u16) -> Option<&mut Unit> {
        self.units.get_mut(usize::from(unit))
    }
}

impl Unit {
    /// Takes `first..first + count`, all free (the caller found them so).
    fn claim(&mut self, first: u32, count: u32, source_id: u16) -> Option<u16> {
        let base = u16::try_from(first).ok()?;
        for index in first..first + count {
            if !self.free.take(index) {
                return None;
            }
            if let Some(slot) = self.entries.get_mut(index as usize) {
                *slot = Some(Irte {
                    source_id,
                    dest: None,
                    owner: None,
                });
            }
        }
        Some(base)
    }
}

impl RemapUnits {
    /// Number of units.
    pub fn units(&self) -> u16 {
        self.units.len() as u16
    }

    /// Table size of `unit` (0 if it does not exist).
    pub fn capacity(&self, unit: u16) -> u32 {
        self.unit(unit).map_or(0, |u| u.free.len())
    }

    /// Free entries of `unit`.
    pub fn free_entries(&self, unit: u16) -> u32 {
        self.unit(unit).map_or(0, |u| u.free.free_count())
    }

    /// Largest power of two ≤ `cap` (≤ 32) for which a free naturally aligned block exists.
    pub fn largest_block(&self, unit: u16, cap: u32) -> u32 {
        self.unit(unit)
            .map_or(0, |u| u.free.largest_free_block(cap))
    }

    /// Reserves one entry (the lowest free) for the device `source_id`; `None` if none is free.
    pub fn alloc(&mut self, unit: u16, source_id: u16) -> Option<u16> {
        let u = self.unit_mut(unit)?;
        let index = u.free.first_free()?;
        u.claim(index, 1, source_id)
    }

    /// Reserves the `n` lowest free entries of `unit` for `source_id`, or none of them if
    /// fewer than `n` are free; their indices appended to `out`, lowest first. The
    /// free-entry bitmap is updated a word at a time.
    pub fn alloc_lowest(&mut self, unit: u16, n: u32, source_id: u16, out: &mut Vec<u16>) -> bool {
        let Some(u) = self.unit_mut(unit) else {
            return false;
        };
        if u.free.free_count() < n {
            return false;
        }
        out.reserve(n as usize);
        let entries = &mut u.entries;
        u.free.take_lowest(n, |index| {
            if let Some(slot) = entries.get_mut(index as usize) {
                *slot = Some(Irte {
                    source_id,
                    dest: None,
                    owner: None,
                });
            }
            // Entries lie below 65,536 (checked at construction).
            out.push(index as u16);
        });
        true
    }

    /// Reserves exactly `first..first + count` for `source_id`, if all are free (and, for a
    /// block, `first` is aligned to `count`); its base.
    pub fn alloc_at(&mut self, unit: u16, first: u32, count: u32, source_id: u16) -> Option<u16> {
        let u = self.unit_mut(unit)?;
        let end = first.checked_add(count)?;
        if count == 0 || !first.is_multiple_of(count.next_power_of_two()) && count > 1 {
            return None;
        }
        if end > u.free.len() || !(first..end).all(|i| u.free.is_free(i)) {
            return None;
        }
        u.claim(first, count, source_id)
    }

    /// Reserves a naturally aligned block of `count` (power of two ≤ 32) entries; its base.
    pub fn alloc_block(&mut self, unit: u16, count: u32, source_id: u16) -> Option<u16> {
        let u = self.unit_mut(unit)?;
        let base = u.free.first_free_block(count)?;
        u.claim(base, count, source_id)
    }

    /// Sets the destination of a reserved entry and the vector it backs; false if the entry is not reserved.
    pub fn program(&mut self, unit: u16, index: u16, dest: IrteDest, owner: IrteOwner) -> bool {
        let entry = self
            .unit_mut(unit)
            .and_then(|u| u.entries.get_mut(usize::from(index)))
            .and_then(Option::as_mut);
        match entry {
            Some(entry) => {
                entry.dest = Some(dest);
                entry.owner = Some(owner);
                true
            }
            None => false,
        }
    }

    /// Releases the entries of `indices` (free ones are skipped), best given ascending: the
    /// bitmap is updated once per run of indices in the same word.
    pub fn free_all(&mut self, unit: u16, indices: &[u16]) {
        if let Some(u) = self.unit_mut(unit) {
            for index in indices {
                if !u.free.is_free(u32::from(*index))
                    && let Some(slot) = u.entries.get_mut(usize::from(*index))
                {
                    *slot = None;
                }
            }
            u.free.put_all(indices.iter().map(|i| u32::from(*i)));
        }
    }

    /// Releases an entry (no-op for a free one).
    pub fn free(&mut self, unit: u16, index: u16) {
        if let Some(u) = self.unit_mut(unit)
            && u.free.put(u32::from(index))
            && let Some(slot) = u.entries.get_mut(usize::from(index))
        {
            *slot = None;
        }
    }

    /// The entry at `index`, if allocated.
    pub fn entry(&self, unit: u16, index: u16) -> Option<Irte> {
        self.unit(unit)?
            .entries
            .get(usize::from(index))
            .copied()
            .flatten()
    }

    /// Resolves a message sent by `source_id` through `unit`, as the hardware would: the entry it selects.
    pub fn deliver(
        &self,
        unit: u16,
        source_id: u16,
        message: MsiMessage,
    ) -> Result<Irte, RemapFault> {
        let msi = RemappableMsi::decode(message).map_err(|_| RemapFault::NotRemappable)?;
        self.lookup(unit, source_id, msi.irte_index())
    }

    /// The entry at `index` of `unit` as the hardware checks it for a write from
    /// `source_id`: present, the sender's, programmed.
    pub fn lookup(&self, unit: u16, source_id: u16, index: u32) -> Result<Irte, RemapFault> {
        let u = self.unit(unit).ok_or(RemapFault::UnknownSource)?;
        let slot = u
            .entries
            .get(index as usize)
            .ok_or(RemapFault::IndexOutOfRange { index })?;
        let entry = slot.ok_or(RemapFault::EntryNotPresent { index })?;
        if entry.source_id != source_id {
            return Err(RemapFault::SourceIdMismatch {
                index,
                expected: entry.source_id,
            });
        }
        if entry.dest.is_none() {
            return Err(RemapFault::NotProgrammed { index });
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(entries: u32) -> RemapUnits {
        RemapUnits::new(RemapConfig {
            units: 2,
            entries_per_unit: entries,
        })
        .unwrap()
    }

    fn msg(handle: u16, sub: u16) -> MsiMessage {
        RemappableMsi {
            handle,
            subhandle: Some(sub),
        }
        .message()
    }

    #[test]
    fn blocks_are_naturally_aligned_and_units_independent() {
        let mut r = units(256);
        assert_eq!(r.alloc(0, 0x10), Some(0));
        assert_eq!(r.alloc_block(0, 8, 0x10), Some(8));
        assert_eq!(r.alloc_block(0, 32, 0x10), Some(32));
        assert_eq!(r.alloc(0, 0x10), Some(1));
        assert_eq!(r.free_entries(0), 256 - 42);
        assert_eq!(r.free_entries(1), 256);
        assert_eq!(r.alloc_block(1, 32, 0x10), Some(0));
    }

    #[test]
    fn exhaustion_is_reported_and_free_makes_room() {
        let mut r = units(2);
        assert_eq!(r.alloc(0, 1), Some(0));
        assert_eq!(r.alloc(0, 1), Some(1));
        assert_eq!(r.alloc(0, 1), None);
        r.free(0, 0);
        r.free(0, 0); // double free is a no-op
        assert_eq!(r.free_entries(0), 1);
        assert_eq!(r.alloc(0, 1), Some(0));
        assert_eq!(r.alloc(9, 1), None);
    }

    #[test]
    fn delivery_checks_presence_source_and_programming() {
        let mut r = units(64);
        let hv = HostVector {
            cpu: 1,
            vector: 0x40,
        };
        let base = r.alloc_block(0, 4, 0x0100).unwrap();
        assert_eq!(
            r.deliver(0, 0x0100, msg(base, 2)),
            Err(RemapFault::NotProgrammed { index: 2 })
        );
        assert!(r.program(0, base + 2, IrteDest::Remapped(hv), (Kind::Msi, 2)));
        let entry = r.deliver(0, 0x0100, msg(base, 2)).unwrap();
        assert_eq!(
            (entry.dest, entry.owner),
            (Some(IrteDest::Remapped(hv)), Some((Kind::Msi, 2)))
        );
        assert_eq!(
            r.deliver(0, 0x0200, msg(base, 2)),
            Err(RemapFault::SourceIdMismatch {
                index: 2,
                expected: 0x0100
            })
        );
        assert_eq!(
            r.deliver(0, 0x0100, msg(base, 5)),
            Err(RemapFault::EntryNotPresent { index: 5 })
        );
        assert_eq!(
            r.deliver(0, 0x0100, msg(60, 10)),
            Err(RemapFault::IndexOutOfRange { index: 70 })
        );
        let compat = pvirq_proto::CompatMsi::fixed(0, 0x40).message();
        assert_eq!(r.deliver(0, 0x0100, compat), Err(RemapFault::NotRemappable));
        r.free(0, base + 2);
        assert_eq!(
            r.deliver(0, 0x0100, msg(base, 2)),
            Err(RemapFault::EntryNotPresent { index: 2 })
        );
    }

    #[test]
    fn configuration_is_validated() {
        assert!(
            RemapUnits::new(RemapConfig {
                units: 0,
                entries_per_unit: 1
            })
            .is_err()
        );
        assert!(
            RemapUnits::new(RemapConfig {
                units: 1,
                entries_per_unit: 65_537
            })
            .is_err()
        );
    }
}
