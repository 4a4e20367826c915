//! How many vectors a request can be granted, and which resource to name when fewer than
//! its minimum can ([DEV-6], [DEV-7]).
//!
//! The core knows its own limits exactly (quota, device slots, routes); the host's come
//! from the backend's advisory [`HostSupply`], absent where the host cannot tell (VFIO).
//! A figure the host does not give is not a limit here: the backend's own answer to the
//! reservation decides.

use crate::backend::HostSupply;
use crate::bitmap::floor_pow2;
use pvirq_proto::{Kind, Refusal, Resource};

/// Every resource's figure for one request, in the order NO_SPACE names them (spec §3.3).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Supply {
    pub(crate) quota: u32,
    pub(crate) slots: u32,
    pub(crate) host: HostSupply,
    /// Whether the grants will be posted: no host vector is consumed then.
    pub(crate) posted: bool,
    pub(crate) routes: u32,
}

impl Supply {
    /// Per resource, in §3.3 order, how many vectors of `kind` it can supply; `None` for a
    /// figure the host does not give.
    fn per_resource(&self, kind: Kind) -> [(Resource, Option<u32>); 5] {
        let irte = if kind == Kind::Msi {
            self.host.irte_block
        } else {
            self.host.irte
        };
        let vectors = if self.posted {
            None
        } else {
            self.host.host_vectors
        };
        [
            (Resource::VmQuota, Some(self.quota)),
            (Resource::DeviceSlots, Some(self.slots)),
            (Resource::Irte, irte),
            (Resource::HostVector, vectors),
            (Resource::GuestRoute, Some(self.routes)),
        ]
    }

    /// The largest grant ≤ `max` every resource supplies (a power of two for MSI).
    pub(crate) fn grantable(&self, kind: Kind, max: u32) -> u32 {
        let n = self
            .per_resource(kind)
            .iter()
            .filter_map(|(_, s)| *s)
            .fold(max, u32::min);
        if kind == Kind::Msi { floor_pow2(n) } else { n }
    }

    /// The count to ask the backend for, or the NO_SPACE refusal naming the first resource
    /// in §3.3 order that cannot supply `min`, with `available` = the largest grantable
    /// count overall (not that resource's own figure).
    pub(crate) fn size(&self, kind: Kind, min: u32, max: u32) -> Result<u32, Refusal> {
        let n = self.grantable(kind, max);
        if n >= min {
            return Ok(n);
        }
        let resource = self
            .per_resource(kind)
            .iter()
            .find(|(_, s)| s.is_some_and(|s| s < min))
            .map_or(Resource::None, |(r, _)| *r);
        Err(Refusal::NoSpace {
            resource,
            available: n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(irte: Option<u32>, vectors: Option<u32>, routes: u32) -> Supply {
        Supply {
            quota: 100,
            slots: 50,
            host: HostSupply {
                irte,
                irte_block: irte.map(floor_pow2),
                host_vectors: vectors,
            },
            posted: false,
            routes,
        }
    }

    #[test]
    fn the_first_short_resource_is_named_with_the_overall_grantable_count() {
        // IRTEs short (3) and routes tighter (2): IRTE comes first in §3.3 order, and
        // `available` is the overall figure, 2.
        let s = supply(Some(3), Some(10), 2);
        assert_eq!(
            s.size(Kind::MsiX, 4, 8),
            Err(Refusal::NoSpace {
                resource: Resource::Irte,
                available: 2
            })
        );
        assert_eq!(s.size(Kind::MsiX, 2, 8), Ok(2));
    }

    #[test]
    fn unknown_host_figures_do_not_limit_and_posted_grants_need_no_host_vector() {
        let s = supply(None, None, 40);
        assert_eq!(s.size(Kind::MsiX, 1, 64), Ok(40));
        let mut s = supply(Some(64), Some(0), 40);
        assert!(s.size(Kind::MsiX, 1, 8).is_err());
        s.posted = true;
        assert_eq!(s.size(Kind::MsiX, 1, 8), Ok(8));
        // MSI: the largest power of two.
        let s = supply(Some(6), Some(10), 40);
        assert_eq!(s.size(Kind::Msi, 1, 8), Ok(4));
    }
}
