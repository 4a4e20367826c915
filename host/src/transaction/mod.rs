//! Request handling: each request is a transaction over the VM's devices, their backends
//! and the VM's guest routes (one file per operation).
//!
//! Order for every operation (`docs/architecture.md`): check everything that can be
//! checked without reserving; stage the guest routes, each held by a batch that aborts on
//! drop; have the device's backend back the vectors, held by a value that disables them
//! on drop; write the reply into the guest's buffer; only then commit the routes (one
//! commit per request) and turn the reservations into grants. If the write fails,
//! dropping the reservations rolls everything back and the chain is returned with used
//! length 0. If the commit fails after the write, everything is rolled back and the reply
//! is overwritten with the refusal: the guest sees the reply only when the chain is
//! returned, so it never sees an acknowledgement for something that does not exist
//! ([DEV-11], [DEV-12]).
//!
//! FREE, RESET and RETARGET stage their route changes the same way and release host
//! resources only after the commit, so they are all-or-nothing too.
//!
//! Requests are decoded against the features the driver negotiated, and every shape the
//! decoder gives is handled: APIC-ID targets, SPREAD and PARKED targeting, ANY_CONTIGUOUS,
//! index lists, PARK (spec §4.5–§4.7). Beside the file per operation: `targets` (where
//! vectors go), `indices` (which indices an ALLOC takes), `named` (which grants a FREE or
//! RETARGET names), `sizing` (how many, or which resource is short). A reply says only
//! what the driver negotiated: 24-byte records and the extended QUERY body with `INFO`,
//! and a code it did not negotiate as version 1 says it (`reply`), so a version-1 driver
//! gets version 1's bytes ([DEV-24]).
//!
//! The module is a set of free functions over a VM's state (`state::VmState`), called by
//! the [`crate::Vm`] handle with the VM's lock held: `handle` for a request, `restore`
//! for a snapshot. It never names the handle, so `vm` depends on it and not
//! the other way round.

mod alloc;
mod available;
mod backed;
mod free;
mod indices;
mod named;
mod query;
mod reply;
mod restore;
mod retarget;
mod sizing;
mod targets;

pub(crate) use available::recheck_available;
pub use reply::{BufferSink, Handled, ReplySink};
pub(crate) use restore::restore;

use crate::backend::BackendError;
use crate::bitmap::floor_pow2;
use crate::config::{DeviceSpec, VmConfig};
use crate::routes::RouteError;
use crate::state::{DeviceState, VmState};
use pvirq_proto::{
    Field, Kind, Negotiated, Operation, RESPONSE_HEADER_LEN, Refusal, Request, Resource, Status,
    feature,
};
use reply::{Ctx, Echo};

fn kind_feature(kind: Kind) -> u64 {
    match kind {
        Kind::Msi => feature::MSI,
        Kind::MsiX => feature::MSIX,
        Kind::Ims => feature::IMS,
    }
}

/// Whether the device has `kind` and the driver negotiated it.
fn usable(spec: &DeviceSpec, features: u64, kind: Kind) -> bool {
    spec.supports(kind) && features & kind_feature(kind) != 0
}

/// The size of a device's `kind` table as the guest sees it: MSI blocks are bounded by
/// what the host's remapping hardware allows too (VT-d: ECAP.MHMV).
fn table_size(dev: &DeviceState, kind: Kind) -> u32 {
    let size = dev.spec.table_size(kind);
    if kind == Kind::Msi {
        size.min(floor_pow2(dev.backend.max_msi_block().min(32)))
    } else {
        size
    }
}

/// The guest-visible refusal for a backend that did not back a request.
fn backend_refusal(e: &BackendError) -> Refusal {
    match *e {
        BackendError::Exhausted { resource, supplied } => Refusal::NoSpace {
            resource,
            available: supplied,
        },
        // Told as `irte` to a driver without `INFO` (spec §3.3).
        BackendError::Fragmented { largest } => Refusal::NoSpace {
            resource: Resource::IrteFragmented,
            available: largest,
        },
        // The table cannot grow now: as far as this VM can tell, no slot is free until it
        // frees what it holds of this kind.
        BackendError::NoResize { .. } => Refusal::NoSpace {
            resource: Resource::DeviceSlots,
            available: 0,
        },
        BackendError::Unsupported(_) => Refusal::Unsupported { field: Field::Kind },
        BackendError::Errno { resource, .. } => Refusal::DeviceError { resource },
        BackendError::NotAnEventFd { .. } => Refusal::DeviceError {
            resource: Resource::GuestRoute,
        },
    }
}

/// The refusal for a route that could not be added: NO_SPACE with the count staged before
/// it (the routes it had supplied), or DEVICE_ERROR.
fn route_refusal(e: &RouteError, supplied: u32) -> Refusal {
    match e {
        RouteError::Exhausted => Refusal::NoSpace {
            resource: Resource::GuestRoute,
            available: supplied,
        },
        _ => route_failure(e),
    }
}

/// The refusal for a route layer that failed to carry out an operation on what it already
/// holds (moving, removing, committing): always DEVICE_ERROR. A shortage reported there
/// is no shortage of anything the guest asked for, so NO_SPACE (whose `info` promises a
/// grantable count, spec §5.1) would mislead it.
fn route_failure(_: &RouteError) -> Refusal {
    Refusal::DeviceError {
        resource: Resource::GuestRoute,
    }
}

/// Handles one request (`request` = the readable bytes) of the VM whose configuration is
/// `config` and whose state is `st` (the caller holds its lock), writing the reply to
/// `sink`.
pub(crate) fn handle(
    config: &VmConfig,
    st: &mut VmState,
    request: &[u8],
    sink: &mut dyn ReplySink,
) -> Handled {
    let echo = Request::peek_header(request)
        .map(|h| Echo {
            opcode: h.opcode,
            device: h.device.get(),
            tag: h.tag.get(),
        })
        .unwrap_or_default();
    let mut ctx = Ctx {
        echo,
        sink,
        features: st.features,
    };
    if ctx.sink.capacity() < RESPONSE_HEADER_LEN {
        // Not even a refusal fits: say nothing, change nothing.
        return ctx.dropped();
    }
    let negotiated = Negotiated::new(config.max_batch, st.features);
    let request = match Request::decode(request, negotiated) {
        Ok(r) => r,
        Err(e) => return ctx.refuse(e.refusal()),
    };
    let needed = request.max_response_len(st.features);
    if ctx.sink.capacity() < needed {
        return ctx.refuse(Refusal::ResponseTooSmall {
            needed: needed as u32,
        });
    }
    let handled = match &request.op {
        Operation::Query => query::query(&mut ctx, config, st, request.device),
        Operation::Alloc(a) => alloc::alloc(&mut ctx, config, st, request.device, a),
        Operation::Free(indices) => free::free(&mut ctx, config, st, request.device, Some(indices)),
        Operation::Reset => free::free(&mut ctx, config, st, request.device, None),
        Operation::Retarget(r) => retarget::retarget(&mut ctx, config, st, request.device, r),
    };
    after_request(config, st, &request, &handled);
    handled
}

/// The AVAILABLE event's hooks (spec §12): a NO_SPACE refusal of an ALLOC arms it for the
/// device, and vectors this VM freed may fire the armed ones. Both do nothing unless the
/// driver negotiated the event queue.
fn after_request(config: &VmConfig, st: &mut VmState, request: &Request<'_>, handled: &Handled) {
    match (&request.op, handled.status) {
        (Operation::Alloc(a), Some(Status::NoSpace)) => st.events.arm(request.device, a.min),
        (Operation::Free(_) | Operation::Reset, Some(Status::Ok)) => recheck_available(config, st),
        _ => {}
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod restore_tests;

#[cfg(test)]
mod ext_tests;
