//! The calls of the extensions in the shape of Linux's irq-domain operations (spec §3.5,
//! §4.4–§4.7): `alloc` reserves everything with no target yet (ALLOC `PARKED`),
//! `activate` and `set_affinity` give targets (RETARGET), `deactivate` parks again
//! (RETARGET `PARK`), `free` releases what one allocation gave (FREE `LIST`). Spreading
//! over a set of CPUs once the count is known is ALLOC `SPREAD`; device identity and free
//! runs are the extended QUERY.

use crate::api::{Allocation, Done, Queried};
use crate::grants::GrantRecord;
use crate::transport::Transport;
use crate::{Driver, Error, Hal};
use pvirq_proto::{
    Alloc, DeviceInfoExt, IndexList, IndexRange, IndexSpec, Indices, Kind, Le32, Operation,
    Retarget, RetargetTo, Target, Targeting, feature,
};

/// The indices `entries` (strictly increasing) of `kind` as a FREE or RETARGET list (needs
/// `INDEX_LIST`); [`Error::Encode`] names the first entry out of order.
///
/// Entries travel little-endian: build them with [`Le32::new`].
pub fn index_list(kind: Kind, entries: &[Le32]) -> Result<Indices<'_>, Error> {
    let indices = IndexList::new(entries).map_err(Error::Encode)?;
    Ok(Indices::List { kind, indices })
}

impl<H: Hal, T: Transport, const SLOTS: usize> Driver<H, T, SLOTS> {
    /// QUERY with `INFO`: the device's limits and, separately, what only `INFO` reports —
    /// which PCI function (and PASID) it is, its message format, whether its grants can be
    /// posted, its share, its longest free runs, and the drops of its parked grants
    /// (spec §4.4). Bind a handle to its device by (`segment`, `bus`, `devfn`, `pasid`).
    pub fn device_info(&mut self, device: u32) -> Result<(Queried, DeviceInfoExt), Error> {
        if !self.has(feature::INFO) {
            return Err(Error::NotNegotiated {
                needed: feature::INFO,
            });
        }
        let queried = self.query(device)?;
        // Decoding under INFO always yields the extension; its absence is a malformed reply.
        let ext = queried
            .info
            .ext
            .ok_or(Error::Malformed(pvirq_proto::Error::LengthMismatch {
                expected: pvirq_proto::RESPONSE_HEADER_LEN + crate::driver::QUERY_BODY_INFO_LEN,
                got: pvirq_proto::RESPONSE_HEADER_LEN + crate::driver::QUERY_BODY_LEN,
            }))?;
        Ok((queried, ext))
    }

    /// The irq-domain `alloc` (spec §3.5): between `min` and `max` vectors of `kind`,
    /// reserved with everything delivery needs and parked — no target yet, message final,
    /// so the driver may program them at once and keep them masked until
    /// [`Driver::activate`]. Needs `PARKED`; with `index` [`IndexSpec::AnyContiguous`]
    /// also `CONTIGUOUS`.
    #[allow(clippy::too_many_arguments)]
    pub fn alloc_parked<'g, G: GrantRecord>(
        &mut self,
        device: u32,
        kind: Kind,
        index: IndexSpec,
        min: u16,
        max: u16,
        pasid: Option<u32>,
        grants: &'g mut [G],
    ) -> Result<Allocation<'g, G>, Error> {
        let alloc = Alloc {
            kind,
            index,
            min,
            max,
            pasid,
            targeting: Targeting::Parked,
            targets: &[],
        };
        self.alloc(device, alloc, grants)
    }

    /// `pci_alloc_irq_vectors_affinity` with the spread done by the device (spec §4.5):
    /// between `min` and `max` vectors of `kind`, the `n` granted spread evenly over
    /// `targets` (grant `i` to `targets[⌊i × t / n⌋]`, [`pvirq_proto::spread_position`]),
    /// so a short grant is spread too. Needs `SPREAD`.
    #[allow(clippy::too_many_arguments)]
    pub fn alloc_spread<'g, G: GrantRecord>(
        &mut self,
        device: u32,
        kind: Kind,
        index: IndexSpec,
        min: u16,
        max: u16,
        targets: &[Target],
        grants: &'g mut [G],
    ) -> Result<Allocation<'g, G>, Error> {
        let alloc = Alloc {
            kind,
            index,
            min,
            max,
            pasid: None,
            targeting: Targeting::Spread,
            targets,
        };
        self.alloc(device, alloc, grants)
    }

    /// The irq-domain `activate`: gives the named grants their targets, one per index in
    /// order (RETARGET; activates parked grants, moves active ones, all or nothing). The
    /// messages do not change: nothing is written to the assigned device. A list needs
    /// `INDEX_LIST`; activating parked grants needs `PARKED` only to have parked them.
    pub fn activate(
        &mut self,
        device: u32,
        indices: Indices<'_>,
        targets: &[Target],
    ) -> Result<Done, Error> {
        let retarget = Retarget {
            indices,
            to: RetargetTo::Targets(targets),
        };
        self.call_done(device, Operation::Retarget(retarget))
    }

    /// The irq-domain `set_affinity` of one vector: moves grant `index` to `target`
    /// (RETARGET of a run of one; the message stays the same).
    pub fn set_affinity(
        &mut self,
        device: u32,
        kind: Kind,
        index: u32,
        target: Target,
    ) -> Result<Done, Error> {
        let range = IndexRange {
            kind,
            first: index,
            count: 1,
        };
        self.retarget(device, range, &[target])
    }

    /// The irq-domain `deactivate`: parks the named grants again (RETARGET `PARK`, spec
    /// §3.5); they keep every resource and their message, and interrupts to them are
    /// dropped, so mask them first (spec DRV-7). Needs `PARKED`.
    pub fn deactivate(&mut self, device: u32, indices: Indices<'_>) -> Result<Done, Error> {
        let retarget = Retarget {
            indices,
            to: RetargetTo::Park,
        };
        self.call_done(device, Operation::Retarget(retarget))
    }
}
