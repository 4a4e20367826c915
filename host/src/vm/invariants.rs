//! What must hold in the VM core between requests, whatever the backends:
//!
//! - a device's tables agree with its records; an MSI block is `0..n`, n a power of two;
//! - the VM's held count equals its grants and never exceeds its quota, and no device holds
//!   more than its share (spec §3.7, [DEV-16]) — except that a limit lowered below what is
//!   held revokes nothing: the VM or device may stay above it until it frees, never grow;
//! - every grant has its own live route, in the state its record says (parked or to its
//!   destination), and there are no other live routes;
//! - every destination is one of the VM's APIC IDs, at a vector ≥ 0x20.
//!
//! The modelled host checks more on top ([`crate::model::ModelHost::check_invariants`]).

use crate::backend::GuestDest;
use crate::check_set::check_set;
use crate::config::VmConfig;
use crate::routes::{RouteId, RouteState};
use crate::state::VmState;
use pvirq_proto::{Kind, MIN_GUEST_VECTOR};

/// One way the VM core's books disagree with themselves or with its routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VmViolation {
    /// A device's table has a different number of used slots than of records.
    #[error("dev {handle} {kind}: {records} records but {used} slots used")]
    SlotCount {
        /// The device handle.
        handle: usize,
        /// The kind.
        kind: Kind,
        /// Grant records.
        records: u32,
        /// Slots taken in the table.
        used: u32,
    },
    /// The MSI grants of a device are not one block `0..n`, n a power of two.
    #[error("dev {handle}: MSI block is not 0..{granted}")]
    MsiBlock {
        /// The device handle.
        handle: usize,
        /// MSI grants.
        granted: u32,
    },
    /// Two grants record the same route.
    #[error("route {0} shared by two grants")]
    SharedRoute(RouteId),
    /// A grant's route is not live in the state its record says.
    #[error("dev {handle} {kind} {index}: route {route} is {live:?}, record says {expected:?}")]
    RouteState {
        /// The device handle.
        handle: usize,
        /// The kind.
        kind: Kind,
        /// The index.
        index: u32,
        /// The route.
        route: RouteId,
        /// What the route layer has.
        live: Option<RouteState>,
        /// What the record says.
        expected: RouteState,
    },
    /// A grant delivers to an APIC ID that is not the VM's, or below vector 0x20.
    #[error("dev {handle} {kind} {index}: destination {dest:?} is not the VM's")]
    Destination {
        /// The device handle.
        handle: usize,
        /// The kind.
        kind: Kind,
        /// The index.
        index: u32,
        /// The destination recorded.
        dest: GuestDest,
    },
    /// The held count is not the number of grants.
    #[error("held {held} but {grants} grants")]
    HeldCount {
        /// The VM's held count.
        held: u32,
        /// Grants over all devices.
        grants: u64,
    },
    /// The VM holds more than its quota.
    #[error("held {held} over quota {quota}")]
    OverQuota {
        /// The VM's held count.
        held: u32,
        /// Its quota.
        quota: u32,
    },
    /// A device holds more than its share.
    #[error("dev {handle}: {granted} granted over its share of {share}")]
    OverShare {
        /// The device handle.
        handle: usize,
        /// Vectors it holds.
        granted: u32,
        /// Its share.
        share: u32,
    },
    /// The route layer has a different number of live routes than there are grants.
    #[error("{live} live routes for {grants} grants")]
    LiveRoutes {
        /// Live routes.
        live: u32,
        /// Grants over all devices.
        grants: u64,
    },
}

/// Every violation of the VM core's invariants in `st`, the state of a VM configured by
/// `config`.
pub(crate) fn violations(config: &VmConfig, st: &VmState) -> Vec<VmViolation> {
    let mut errors = Vec::new();
    let mut routes = check_set(st.held as usize);
    let mut total: u64 = 0;
    for (handle, dev) in st.devices.iter().enumerate() {
        // A share lowered below what the device held revokes nothing (as for the quota).
        // A device without a share of its own is bounded by the quota, checked below.
        if let Some(share) = dev.spec.share
            && dev.grants.granted() > share
            && dev.grants.granted() > dev.granted_over_share
        {
            errors.push(VmViolation::OverShare {
                handle,
                granted: dev.grants.granted(),
                share,
            });
        }
        for kind in Kind::ALL.iter().copied() {
            let table = dev.grants.table(kind);
            let granted = table.granted();
            total += u64::from(granted);
            let used = table.size() - table.free.free_count();
            if used != granted {
                errors.push(VmViolation::SlotCount {
                    handle,
                    kind,
                    records: granted,
                    used,
                });
            }
            if kind == Kind::Msi
                && granted > 0
                && !(granted.is_power_of_two()
                    && (0..granted).all(|i| table.records.get(&i).is_some()))
            {
                errors.push(VmViolation::MsiBlock { handle, granted });
            }
            for (index, record) in table.records.iter() {
                if !routes.insert(record.route) {
                    errors.push(VmViolation::SharedRoute(record.route));
                }
                let expected = RouteState::of(record.dest);
                let live = st.routes.route(record.route);
                if live != Some(expected) {
                    errors.push(VmViolation::RouteState {
                        handle,
                        kind,
                        index,
                        route: record.route,
                        live,
                        expected,
                    });
                }
                if let Some(dest) = record.dest
                    && (!config.apic_ids.contains(dest.apic_id, config.num_vcpus)
                        || dest.vector < MIN_GUEST_VECTOR)
                {
                    errors.push(VmViolation::Destination {
                        handle,
                        kind,
                        index,
                        dest,
                    });
                }
            }
        }
    }
    if u64::from(st.held) != total {
        errors.push(VmViolation::HeldCount {
            held: st.held,
            grants: total,
        });
    }
    // A quota lowered below what the VM held revokes nothing: the VM may stay over it,
    // never grow while over it.
    if st.held > config.quota && st.held > st.held_over_quota {
        errors.push(VmViolation::OverQuota {
            held: st.held,
            quota: config.quota,
        });
    }
    if u64::from(st.routes.live()) != total {
        errors.push(VmViolation::LiveRoutes {
            live: st.routes.live(),
            grants: total,
        });
    }
    errors
}
