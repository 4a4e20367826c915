//! The argument of one `VFIO_DEVICE_SET_IRQS` call, built without the kernel so that its
//! exact bytes can be tested.

use pvirq_proto::Kind;
use std::mem::size_of;
use std::os::fd::RawFd;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, vfio_irq_set,
};

/// The fd that detaches a vector's trigger (the kernel frees its IRQ handler).
pub const DETACH: RawFd = -1;

/// The VFIO IRQ index of `kind`, or `None` for a kind VFIO has no index for (IMS).
pub fn vfio_index(kind: Kind) -> Option<u32> {
    match kind {
        Kind::Msi => Some(VFIO_PCI_MSI_IRQ_INDEX),
        Kind::MsiX => Some(VFIO_PCI_MSIX_IRQ_INDEX),
        Kind::Ims => None,
    }
}

/// One `VFIO_DEVICE_SET_IRQS` call with `ACTION_TRIGGER`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IrqSet<'a> {
    /// `DATA_EVENTFD`: vector `start + i` signals `fds[i]`; [`DETACH`] detaches it.
    Signal {
        /// The VFIO IRQ index (MSI or MSI-X).
        index: u32,
        /// The first vector.
        start: u32,
        /// One fd per vector from `start`.
        fds: &'a [RawFd],
    },
    /// `DATA_NONE` with count 0: disables the whole index and frees every host IRQ the
    /// kernel allocated for it.
    DisableAll {
        /// The VFIO IRQ index.
        index: u32,
    },
    /// `DATA_NONE` with a count: the kernel signals the trigger of every vector of
    /// `start..start + count` that has one, as if the device had raised it, and skips
    /// the vectors without (`vfio_pci_set_msi_trigger`); `EINVAL` while the index is off.
    /// Never issued by the backend: it is how a test reads VFIO's own state, which
    /// triggers the kernel holds.
    Fire {
        /// The VFIO IRQ index.
        index: u32,
        /// The first vector.
        start: u32,
        /// How many vectors from `start`.
        count: u32,
    },
}

impl IrqSet<'_> {
    /// The number of vectors the call covers.
    pub fn count(&self) -> u32 {
        match self {
            // A call never covers more vectors than a table has (≤ 2048).
            #[allow(clippy::cast_possible_truncation)]
            IrqSet::Signal { fds, .. } => fds.len() as u32,
            IrqSet::DisableAll { .. } => 0,
            IrqSet::Fire { count, .. } => *count,
        }
    }

    /// Writes the `struct vfio_irq_set` and its fd array into `words` (replacing what it
    /// held), in native byte order as the ioctl reads it. `u32` words keep the header
    /// and every fd aligned.
    pub fn encode(&self, words: &mut Vec<u32>) {
        const HEADER_WORDS: usize = size_of::<vfio_irq_set>() / size_of::<u32>();
        let (flags, index, start, fds): (u32, u32, u32, &[RawFd]) = match self {
            IrqSet::Signal { index, start, fds } => (
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                *index,
                *start,
                fds,
            ),
            IrqSet::DisableAll { index } => (
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                *index,
                0,
                &[],
            ),
            IrqSet::Fire { index, start, .. } => (
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                *index,
                *start,
                &[],
            ),
        };
        // At most a header and 2048 fds: far below u32::MAX bytes.
        #[allow(clippy::cast_possible_truncation)]
        let argsz = ((HEADER_WORDS + fds.len()) * size_of::<u32>()) as u32;
        words.clear();
        words.extend_from_slice(&[argsz, flags, index, start, self.count()]);
        debug_assert_eq!(words.len(), HEADER_WORDS);
        // The kernel reads the array as `s32`; -1 stays -1.
        #[allow(clippy::cast_sign_loss)]
        words.extend(fds.iter().map(|&fd| fd as u32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(set: &IrqSet<'_>) -> Vec<u8> {
        let mut words = Vec::new();
        set.encode(&mut words);
        words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    #[test]
    fn header_is_the_kernel_struct() {
        // argsz, flags, index, start, count: five u32, then the data.
        assert_eq!(size_of::<vfio_irq_set>(), 20);
    }

    #[test]
    fn one_msix_vector_at_its_own_index() {
        let set = IrqSet::Signal {
            index: VFIO_PCI_MSIX_IRQ_INDEX,
            start: 394,
            fds: &[7],
        };
        let mut expected = Vec::new();
        for w in [24u32, 0x4 | 0x20, 2, 394, 1, 7] {
            expected.extend_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(bytes(&set), expected);
    }

    #[test]
    fn a_batch_carries_one_fd_per_vector_and_detach_is_minus_one() {
        let set = IrqSet::Signal {
            index: VFIO_PCI_MSI_IRQ_INDEX,
            start: 3,
            fds: &[10, DETACH, 12],
        };
        let mut words = Vec::new();
        set.encode(&mut words);
        assert_eq!(words, [32, 0x24, 1, 3, 3, 10, u32::MAX, 12]);
        assert_eq!(set.count(), 3);
    }

    #[test]
    fn disable_all_is_data_none_with_count_zero() {
        let mut words = vec![99; 40];
        IrqSet::DisableAll {
            index: VFIO_PCI_MSIX_IRQ_INDEX,
        }
        .encode(&mut words);
        assert_eq!(words, [20, 0x1 | 0x20, 2, 0, 0]);
    }

    #[test]
    fn fire_is_data_none_with_the_range_and_no_data() {
        let mut words = Vec::new();
        IrqSet::Fire {
            index: VFIO_PCI_MSIX_IRQ_INDEX,
            start: 0,
            count: 2048,
        }
        .encode(&mut words);
        assert_eq!(words, [20, 0x1 | 0x20, 2, 0, 2048]);
    }

    #[test]
    fn kinds_map_to_vfio_indices() {
        assert_eq!(vfio_index(Kind::Msi), Some(1));
        assert_eq!(vfio_index(Kind::MsiX), Some(2));
        assert_eq!(vfio_index(Kind::Ims), None);
    }
}
