//! What a step states it must come to (`expect = { ... }`): each field set is checked.

use pvirq_proto::{EventType, GrantMode, MessageFormat, Resource, Status};

/// Expected outcomes of a step; each one set is checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// Final status.
    pub status: Option<Status>,
    /// Resource named by the refusal (the final one, or the one a fallback answered).
    pub resource: Option<Resource>,
    /// `available` of that refusal, or QUERY's `available`.
    pub available: Option<u32>,
    /// Vectors granted (ALLOC), freed (FREE, RESET, reset_vm), moved (RETARGET, PARK), or
    /// held by the device (QUERY).
    pub granted: Option<u32>,
    /// Whether the fallback policy retried.
    pub fallback: Option<bool>,
    /// VM quota left after the step.
    pub quota_left: Option<u32>,
    /// Vectors the VM holds after the step.
    pub vm_held: Option<u32>,
    /// The VM's quota after the step.
    pub vm_quota: Option<u32>,
    /// Free IRTEs over all units of the host the VM is on, after the step.
    pub irtes_free: Option<u32>,
    /// Free host vectors of the host the VM is on, after the step.
    pub vectors_free: Option<u32>,
    /// Interrupts delivered (fire).
    pub delivered: Option<u64>,
    /// Interrupts blocked (fire).
    pub blocked: Option<u64>,
    /// Host occupancy equals the snapshot of this name.
    pub host_equals: Option<String>,
    /// Every grant of the ALLOC has this delivery mode.
    pub mode: Option<GrantMode>,
    /// Every grant of the ALLOC is parked (`true`), or none is (`false`).
    pub parked: Option<bool>,
    /// The vCPU (index) each grant of the ALLOC goes to, in grant order.
    pub grant_vcpus: Option<Vec<u32>>,
    /// The types of the events the guest handled, in order (`events` steps).
    pub events: Option<Vec<EventType>>,
    /// How many REPROGRAM and REVOKE events the guest applied to its tables.
    pub applied: Option<u32>,
    /// A migration's fates.
    pub fates: Fates,
    /// Whether the migration happened (`false`: the destination refused, the VM stayed).
    pub migrated: Option<bool>,
    /// QUERY with `INFO`: the message format.
    pub format: Option<MessageFormat>,
    /// QUERY with `INFO`: the PCI function, `SSSS:BB:DD.F`.
    pub bdf: Option<String>,
    /// QUERY with `INFO`: the interface PASID (`None` checks there is none: not settable).
    pub interface_pasid: Option<u32>,
    /// QUERY with `INFO`: the device's share.
    pub share: Option<u32>,
    /// QUERY with `INFO`: whether the host can post its grants.
    pub can_post: Option<bool>,
    /// QUERY with `INFO`: the longest run of free MSI-X entries.
    pub msix_free_run: Option<u32>,
    /// QUERY with `INFO`: the longest run of free IMS slots.
    pub ims_free_run: Option<u32>,
}

/// How many grants a migration kept, reprogrammed and revoked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fates {
    /// Grants with the same message on the destination.
    pub kept: Option<u32>,
    /// Grants the destination gave a new message (REPROGRAM).
    pub reprogrammed: Option<u32>,
    /// Grants the destination could not back (REVOKE).
    pub revoked: Option<u32>,
}
