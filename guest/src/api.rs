//! The calls a guest kernel makes, shaped after Linux's `pci_alloc_irq_vectors` and
//! `pci_msix_alloc_irq_at`: each submits one request, waits for it, and returns either the
//! result or an [`Error`] — a refusal carries the device's reason ([`Error::Refused`]).
//! The irq-domain shaped calls of the extensions are in `domain.rs`.

use crate::driver::{QUERY_BODY_INFO_LEN, QUERY_BODY_LEN, grant_len};
use crate::grants::{GrantRecord, convert_in_place, entries_for};
use crate::transport::Transport;
use crate::{Driver, Error, Hal};
use pvirq_proto::{
    Alloc, DeviceInfo, Grant, GrantInfo, IndexRange, IndexSpec, Indices, Kind, Opcode, Operation,
    Outcome, RESPONSE_HEADER_LEN, Response, Retarget, Target, Targeting, feature,
};

/// A QUERY result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Queried {
    /// The device's limits and state; with `INFO`, `info.ext` holds its identity, message
    /// format, share and free runs.
    pub info: DeviceInfo,
    /// The VM's remaining quota.
    pub quota_remaining: u32,
}

/// An ALLOC result: the granted vectors, copied into the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation<'g, G = Grant> {
    /// One grant per vector, in grant order (grant `i` goes to `targets[i]`, or to the
    /// spread position of `i`, or nowhere yet if parked). Program `message()` at `index()`
    /// and unmask.
    pub grants: &'g [G],
    /// The VM's remaining quota.
    pub quota_remaining: u32,
}

/// A FREE, RETARGET or RESET result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Done {
    /// Vectors freed, moved or reset.
    pub count: u32,
    /// The VM's remaining quota.
    pub quota_remaining: u32,
}

/// Turns a refusal into [`Error::Refused`]; any other response passes through.
pub fn into_result(response: Response<'_>) -> Result<Response<'_>, Error> {
    match response.outcome {
        Outcome::Refused(refusal) => Err(Error::Refused {
            opcode: Opcode::from_wire(response.opcode).unwrap_or(Opcode::Query),
            refusal,
        }),
        _ => Ok(response),
    }
}

pub(crate) fn unexpected(response: &Response<'_>) -> Error {
    Error::Malformed(pvirq_proto::Error::OutcomeMismatch(response.opcode))
}

fn done(response: Response<'_>) -> Result<Done, Error> {
    match into_result(response)?.outcome {
        Outcome::Freed {
            count,
            quota_remaining,
        }
        | Outcome::Retargeted {
            count,
            quota_remaining,
        }
        | Outcome::Reset {
            count,
            quota_remaining,
        } => Ok(Done {
            count,
            quota_remaining,
        }),
        _ => Err(unexpected(&response)),
    }
}

impl<H: Hal, T: Transport, const SLOTS: usize> Driver<H, T, SLOTS> {
    /// Runs a FREE, RETARGET or RESET: their replies are a header alone.
    pub(crate) fn call_done(&mut self, device: u32, op: Operation<'_>) -> Result<Done, Error> {
        let mut header = [0; RESPONSE_HEADER_LEN];
        done(self.call_into(device, op, &mut header, &mut [])?)
    }

    /// Asks for `device`'s limits (kinds, table sizes, vectors granted and available now;
    /// with `INFO` also its identity, message format, share and free runs in `info.ext`).
    /// The driver remembers the table sizes to check later grants and events against.
    pub fn query(&mut self, device: u32) -> Result<Queried, Error> {
        let mut header = [0; RESPONSE_HEADER_LEN];
        let mut body = [0; QUERY_BODY_INFO_LEN];
        let len = if self.has(feature::INFO) {
            QUERY_BODY_INFO_LEN
        } else {
            QUERY_BODY_LEN
        };
        let body = body.get_mut(..len).unwrap_or_default();
        let response = self.call_into(device, Operation::Query, &mut header, body)?;
        let response = into_result(response)?;
        match response.outcome {
            Outcome::Queried {
                info,
                quota_remaining,
            } => Ok(Queried {
                info,
                quota_remaining,
            }),
            _ => Err(unexpected(&response)),
        }
    }

    /// Allocates between `alloc.min` and `alloc.max` vectors and copies the grants into
    /// `grants`: version 1's [`Grant`] (index and message) or [`GrantInfo`] (with the
    /// delivery mode, parked flag and PASID), whatever the channel's layout
    /// ([`crate::GrantRecord`]). `grants` needs [`Driver::grant_entries`] entries: `max`,
    /// except a `Grant` buffer on a channel with `INFO`.
    ///
    /// Every shape of ALLOC goes through here: [`Targeting::Spread`],
    /// [`Targeting::Parked`] and [`IndexSpec::AnyContiguous`] need their feature bits
    /// ([`Error::NotNegotiated`] otherwise).
    ///
    /// The grants are copied out of the memory the device can write once, straight into
    /// `grants`, and validated there: what is returned is what was checked. After an error
    /// `grants` may hold bytes of the rejected reply; only what `Ok` returns is a grant.
    ///
    /// On [`Error::Refused`] nothing was granted; for NO_SPACE,
    /// [`Error::fallback_count`] says how many vectors the device could grant now.
    pub fn alloc<'g, G: GrantRecord>(
        &mut self,
        device: u32,
        alloc: Alloc<'_>,
        grants: &'g mut [G],
    ) -> Result<Allocation<'g, G>, Error> {
        let wire_len = grant_len(self.features);
        let max = usize::from(alloc.max);
        let needed = entries_for::<G>(max, wire_len);
        let got = grants.len();
        let room = grants
            .get_mut(..needed)
            .ok_or(Error::GrantBufferTooSmall { needed, got })?;
        let mut header = [0; RESPONSE_HEADER_LEN];
        let count = {
            // The reply's body is its grants: the caller's array, seen as bytes, receives
            // them, and is validated there.
            let body: &mut [u8] = bytemuck::cast_slice_mut(&mut *room);
            let body = body.get_mut(..max * wire_len).unwrap_or_default();
            let op = Operation::Alloc(alloc);
            let response = into_result(self.call_into(device, op, &mut header, body)?)?;
            match response.outcome {
                Outcome::Allocated {
                    grants: granted,
                    quota_remaining,
                } => (granted.len(), quota_remaining),
                _ => return Err(unexpected(&response)),
            }
        };
        let (n, quota_remaining) = count;
        // The validated records become the caller's type, in the caller's memory.
        let grants = convert_in_place(room, n, wire_len)
            .ok_or(Error::GrantBufferTooSmall { needed, got })?;
        Ok(Allocation {
            grants,
            quota_remaining,
        })
    }

    /// Linux's `pci_alloc_irq_vectors(dev, min, max, kind)`: between `min` and
    /// `targets.len()` vectors of `kind` at indices the device chooses, vector `i` to
    /// `targets[i]`.
    pub fn alloc_irq_vectors<'g, G: GrantRecord>(
        &mut self,
        device: u32,
        kind: Kind,
        min: u16,
        targets: &[Target],
        grants: &'g mut [G],
    ) -> Result<Allocation<'g, G>, Error> {
        let alloc = Alloc::any(kind, min, targets);
        self.alloc(device, alloc, grants)
    }

    /// Linux's `pci_msix_alloc_irq_at(dev, index, affinity)`: one vector of `kind` at
    /// `index` (or any), delivered to `target`, with an optional IMS PASID.
    pub fn alloc_irq_at(
        &mut self,
        device: u32,
        kind: Kind,
        index: IndexSpec,
        target: Target,
        pasid: Option<u32>,
    ) -> Result<Grant, Error> {
        let targets = [target];
        let alloc = Alloc {
            kind,
            index,
            min: 1,
            max: 1,
            pasid,
            targeting: Targeting::PerVector,
            targets: &targets,
        };
        // A `GrantInfo` holds one record of either layout.
        let mut grant = [GrantInfo::from_grant(Grant::new(0, Default::default()))];
        self.alloc(device, alloc, &mut grant)?;
        let [grant] = grant;
        Ok(grant.grant())
    }

    /// Frees a run of granted vectors. Mask them and quiesce the device first (spec DRV-7).
    pub fn free(&mut self, device: u32, range: IndexRange) -> Result<Done, Error> {
        self.call_done(device, Operation::Free(range.into()))
    }

    /// Moves a run of granted vectors to new destinations, one target per index. Nothing
    /// needs reprogramming: the messages stay the same.
    pub fn retarget(
        &mut self,
        device: u32,
        range: IndexRange,
        targets: &[Target],
    ) -> Result<Done, Error> {
        self.call_done(device, Operation::Retarget(Retarget::run(range, targets)))
    }

    /// Frees the named vectors: a run, or with `INDEX_LIST` a list ([`crate::index_list`]),
    /// so that everything one ALLOC gave, however scattered, goes in one request. Mask them
    /// and quiesce the device first (spec DRV-7). Linux's irq-domain `free`.
    pub fn free_indices(&mut self, device: u32, indices: Indices<'_>) -> Result<Done, Error> {
        self.call_done(device, Operation::Free(indices))
    }

    /// Frees every vector of `device` (the RESET operation; the virtio device and other
    /// devices are untouched). Mask them first (spec DRV-7).
    pub fn reset_device(&mut self, device: u32) -> Result<Done, Error> {
        self.call_done(device, Operation::Reset)
    }
}
