//! Restoring a validated snapshot on a fresh VM: every grant re-reserved through the
//! destination's backends before the VM runs, one route commit for all of them.
//!
//! A grant whose host gives it the same message is kept as it was; one the host gives a
//! new message is reprogrammed (the driver is told, with the new message); one the host
//! cannot back at all is revoked (the driver is told why). The VM then holds exactly the
//! kept and reprogrammed grants.

use crate::backend::{BackendError, EnableRequest, Enabled, VectorSetup};
use crate::grants::GrantRecord;
use crate::routes::RouteBatch;
use crate::snapshot::{CheckedGrant, RestoreError, Restored, RestoredGrant};
use crate::state::VmState;
use pvirq_proto::{Kind, Resource};

/// Feature bit 7, POSTED (spec §2.2): grants may be posted.
const POSTED: u64 = 1 << 7;

/// The resource a refusal names, for a revoked grant.
fn revoked(e: &BackendError) -> Resource {
    match e {
        BackendError::Exhausted { resource, .. } | BackendError::Errno { resource, .. } => {
            *resource
        }
        BackendError::Fragmented { .. } => Resource::Irte,
        BackendError::NoResize { .. } => Resource::DeviceSlots,
        BackendError::Unsupported(_) | BackendError::NotAnEventFd { .. } => Resource::None,
    }
}

/// Restores the validated `grants` (per device, from a snapshot whose negotiated features
/// are `features`) on a VM that holds nothing yet: re-reserves every grant through the
/// devices' backends, commits the routes once, and sets the features. Returns each
/// grant's fate, in snapshot order per device.
pub(crate) fn restore(
    st: &mut VmState,
    grants: &[Vec<CheckedGrant>],
    features: u64,
) -> Result<Vec<RestoredGrant>, RestoreError> {
    if st.held > 0 {
        return Err(RestoreError::NotFresh(st.held));
    }
    let allow_posted = features & POSTED != 0;
    let mut batch = RouteBatch::new(st.routes.as_mut());
    let mut report = Vec::new();
    // Per device and kind: (index, route, setup, enabled) of what the host backed.
    let mut backed: Vec<Vec<(CheckedGrant, u32, Enabled)>> = Vec::new();
    for (handle, (dev, wanted)) in st.devices.iter_mut().zip(grants).enumerate() {
        let mut kept = Vec::new();
        for kind in Kind::ALL.iter().copied() {
            let group: Vec<CheckedGrant> =
                wanted.iter().copied().filter(|g| g.kind == kind).collect();
            if group.is_empty() {
                continue;
            }
            let mut setups = Vec::with_capacity(group.len());
            let mut routes = Vec::with_capacity(group.len());
            for g in &group {
                match batch.add(g.dest) {
                    Ok(route) => {
                        routes.push(route.id);
                        setups.push(VectorSetup {
                            index: g.index,
                            trigger: route.trigger,
                            dest: g.dest,
                            previous: Some(g.message),
                        });
                    }
                    Err(_) => {
                        // Routes ran out: what is left of the group is revoked.
                        break;
                    }
                }
            }
            let mut enabled = Vec::with_capacity(setups.len());
            let pasid = group.first().and_then(|g| g.pasid);
            let whole = EnableRequest {
                kind,
                vectors: &setups,
                min: setups.len(),
                pasid,
                allow_posted,
            };
            // One request carries one PASID: IMS grants made for different PASIDs (by
            // different ALLOCs) are backed one by one, each with its own.
            let one_pasid = group.iter().all(|g| g.pasid == pasid);
            let mut fates: Vec<Result<Enabled, Resource>> = Vec::with_capacity(group.len());
            match one_pasid.then(|| dev.backend.enable(&whole, &mut enabled)) {
                Some(Ok(())) => fates.extend(enabled.iter().map(|e| Ok(*e))),
                // A block is backed whole or not at all; other kinds vector by vector,
                // so that one shortage revokes as little as it must. (An MSI block never
                // has a PASID: the snapshot's validation refuses one.)
                Some(Err(e)) if kind == Kind::Msi => {
                    fates.extend(setups.iter().map(|_| Err(revoked(&e))))
                }
                Some(Err(_)) | None => {
                    for setup in &setups {
                        let one = EnableRequest {
                            vectors: std::slice::from_ref(setup),
                            min: 1,
                            pasid: group
                                .iter()
                                .find(|g| g.index == setup.index)
                                .and_then(|g| g.pasid),
                            ..whole
                        };
                        let mut out = Vec::with_capacity(1);
                        fates.push(match dev.backend.enable(&one, &mut out) {
                            Ok(()) => out.first().copied().ok_or(Resource::None),
                            Err(e) => Err(revoked(&e)),
                        });
                    }
                }
            }
            for (i, g) in group.iter().enumerate() {
                let fate = fates.get(i).copied().unwrap_or(Err(Resource::GuestRoute));
                let outcome = match (fate, routes.get(i)) {
                    (Ok(e), Some(route)) => {
                        kept.push((*g, *route, e));
                        if e.message == g.message {
                            Restored::Kept
                        } else {
                            Restored::Reprogrammed(e.message)
                        }
                    }
                    (Err(resource), route) => {
                        if let Some(route) = route {
                            let _ = batch.remove(*route);
                        }
                        Restored::Revoked(resource)
                    }
                    (Ok(_), None) => Restored::Revoked(Resource::GuestRoute),
                };
                report.push(RestoredGrant {
                    device: handle as u32,
                    kind,
                    index: g.index,
                    outcome,
                });
            }
        }
        backed.push(kept);
    }
    if batch.commit().is_err() {
        for (dev, kept) in st.devices.iter_mut().zip(&backed) {
            for (g, _, _) in kept {
                dev.backend.disable(g.kind, &[g.index]);
            }
        }
        return Err(RestoreError::Routes);
    }
    let mut held = 0;
    for (dev, kept) in st.devices.iter_mut().zip(backed) {
        for (g, route, e) in kept {
            dev.grants.table_mut(g.kind).insert(
                g.index,
                GrantRecord {
                    route,
                    dest: g.dest,
                    message: e.message,
                    mode: e.mode,
                    pasid: g.pasid,
                },
            );
            held += 1;
        }
    }
    st.held = held;
    st.features = features;
    Ok(report)
}
