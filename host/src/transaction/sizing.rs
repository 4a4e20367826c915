//! How many vectors a request can be granted, and which resource to name when fewer than
//! its minimum can ([DEV-6], [DEV-7]).
//!
//! The core knows its own limits exactly (quota, the device's share, device slots,
//! routes); the host's come from the backend's advisory [`HostSupply`], absent where the
//! host cannot tell (VFIO). A figure the host does not give is not a limit here: the
//! backend's own answer to the reservation decides.

use crate::backend::HostSupply;
use crate::bitmap::floor_pow2;
use pvirq_proto::{Kind, Refusal, Resource};

/// What the device's table can supply.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slots {
    /// The most vectors the table can take in the shape asked for: free slots, or the
    /// longest free run for ANY_CONTIGUOUS.
    pub(crate) usable: u32,
    /// Free slots counted one by one: a shortfall of `usable` with this many free is
    /// fragmentation (`slots-fragmented`), not a shortage.
    pub(crate) free: u32,
}

impl Slots {
    /// A table that supplies `n`, fragmentation aside.
    pub(crate) fn exactly(n: u32) -> Self {
        Slots { usable: n, free: n }
    }
}

/// Every resource's figure for one request, in the order NO_SPACE names them (spec §3.3).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Supply {
    /// What the VM's quota leaves.
    pub(crate) quota: u32,
    /// What the device's share leaves (spec §3.7).
    pub(crate) share: u32,
    pub(crate) slots: Slots,
    pub(crate) host: HostSupply,
    /// Whether the grants will be posted: no host vector is consumed then ([DEV-25]).
    pub(crate) posted: bool,
    pub(crate) routes: u32,
}

impl Supply {
    /// Per resource, in §3.3 order, how many vectors of `kind` it can supply; `None` for a
    /// figure the host does not give.
    fn per_resource(&self, kind: Kind) -> [(Resource, Option<u32>); 6] {
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
            (Resource::DeviceShare, Some(self.share)),
            (Resource::DeviceSlots, Some(self.slots.usable)),
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
    /// count overall (not that resource's own figure). Where enough slots or remapping
    /// entries are free but not in the shape asked for, the cause is named as
    /// fragmentation (`slots-fragmented`, `irte-fragmented`; a version-1 driver is told
    /// the resource itself).
    pub(crate) fn size(&self, kind: Kind, min: u32, max: u32) -> Result<u32, Refusal> {
        let n = self.grantable(kind, max);
        if n >= min {
            return Ok(n);
        }
        let short = self
            .per_resource(kind)
            .iter()
            .find(|(_, s)| s.is_some_and(|s| s < min))
            .map_or(Resource::None, |(r, _)| *r);
        let resource = match short {
            Resource::DeviceSlots if self.slots.free >= min => Resource::SlotsFragmented,
            Resource::Irte if kind == Kind::Msi && self.host.irte.is_some_and(|f| f >= min) => {
                Resource::IrteFragmented
            }
            other => other,
        };
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
            share: 100,
            slots: Slots::exactly(50),
            host: HostSupply {
                irte,
                irte_block: irte.map(floor_pow2),
                host_vectors: vectors,
            },
            posted: false,
            routes,
        }
    }

    fn no_space(resource: Resource, available: u32) -> Result<u32, Refusal> {
        Err(Refusal::NoSpace {
            resource,
            available,
        })
    }

    #[test]
    fn the_first_short_resource_is_named_with_the_overall_grantable_count() {
        // IRTEs short (3) and routes tighter (2): IRTE comes first in §3.3 order, and
        // `available` is the overall figure, 2.
        let s = supply(Some(3), Some(10), 2);
        assert_eq!(s.size(Kind::MsiX, 4, 8), no_space(Resource::Irte, 2));
        assert_eq!(s.size(Kind::MsiX, 2, 8), Ok(2));
    }

    #[test]
    fn the_section_3_3_order_is_quota_share_slots_irte_vector_route() {
        // Every resource short of 8; each one lifted in turn names the next.
        let mut s = Supply {
            quota: 7,
            share: 6,
            slots: Slots { usable: 5, free: 5 },
            host: HostSupply {
                irte: Some(4),
                irte_block: Some(4),
                host_vectors: Some(3),
            },
            posted: false,
            routes: 2,
        };
        assert_eq!(s.size(Kind::MsiX, 8, 8), no_space(Resource::VmQuota, 2));
        s.quota = 100;
        assert_eq!(s.size(Kind::MsiX, 8, 8), no_space(Resource::DeviceShare, 2));
        s.share = 100;
        assert_eq!(s.size(Kind::MsiX, 8, 8), no_space(Resource::DeviceSlots, 2));
        s.slots = Slots::exactly(100);
        assert_eq!(s.size(Kind::MsiX, 8, 8), no_space(Resource::Irte, 2));
        s.host.irte = Some(100);
        assert_eq!(s.size(Kind::MsiX, 8, 8), no_space(Resource::HostVector, 2));
        s.host.host_vectors = None;
        assert_eq!(s.size(Kind::MsiX, 8, 8), no_space(Resource::GuestRoute, 2));
        s.routes = 8;
        assert_eq!(s.size(Kind::MsiX, 8, 8), Ok(8));
    }

    #[test]
    fn fragmentation_is_named_when_enough_are_free_in_the_wrong_shape() {
        // 10 slots free, longest run 3: a run of 4 is fragmentation, a run of 11 shortage.
        let mut s = supply(Some(64), Some(64), 64);
        s.slots = Slots {
            usable: 3,
            free: 10,
        };
        assert_eq!(
            s.size(Kind::MsiX, 4, 8),
            no_space(Resource::SlotsFragmented, 3)
        );
        assert_eq!(
            s.size(Kind::MsiX, 11, 11),
            no_space(Resource::DeviceSlots, 3)
        );
        // 31 IRTEs free, no aligned block above 1: an MSI block of 2 is fragmentation.
        let mut s = supply(Some(31), Some(64), 64);
        s.host.irte_block = Some(1);
        assert_eq!(
            s.size(Kind::Msi, 2, 4),
            no_space(Resource::IrteFragmented, 1)
        );
        s.host.irte = Some(1);
        assert_eq!(s.size(Kind::Msi, 2, 4), no_space(Resource::Irte, 1));
        // The version-1 codes these become.
        let v1 = |r: Result<u32, Refusal>| r.unwrap_err().for_features(pvirq_proto::feature::V1);
        assert_eq!(
            v1(no_space(Resource::SlotsFragmented, 3)),
            Refusal::NoSpace {
                resource: Resource::DeviceSlots,
                available: 3
            }
        );
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
