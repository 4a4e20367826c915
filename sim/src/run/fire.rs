//! A fire step in-process: the runner plays the assigned device. Each vector the guest
//! holds is sent as the device would send it — the message read back from its MSI-X entry
//! or IMS slot ([`crate::passthrough::PassthroughDevice::fire`]), or from the MSI
//! capability — to the host the VM is on, which checks it and routes it. A masked slot (a
//! parked grant) sends nothing. Stale messages (`include_freed`) are written as a device
//! that was not quiesced would write them.

use super::guest_tables::GuestDevice;
use super::outcome::StepError;
use super::view::DeviceView;
use crate::SimError;
use crate::passthrough::{PassthroughError, Slot};
use crate::report::FireCounts;
use pvirq_host::model::{Delivery, Fault, ModelHost};

/// What one write came to.
enum Sent {
    Delivered(Delivery),
    Blocked,
    /// The slot is masked: nothing was written.
    Held,
}

/// Fires what `view` holds on `device`, with the guest's tables of `devices`.
pub(super) fn fire_in_process(
    devices: &[GuestDevice],
    host: &ModelHost,
    device: usize,
    view: &DeviceView,
    include_freed: bool,
) -> Result<FireCounts, StepError> {
    let guest = devices.get(device).ok_or(SimError::GuestReport(
        "a fire step names a device the guest never saw",
    ))?;
    let mut counts = FireCounts::default();
    for (&(kind, index), held) in &view.live {
        let sent = match (Slot::for_grant(kind, index), &guest.device) {
            (Some(slot), Some(pt)) => match pt.fire(host, slot) {
                Ok(delivery) => Sent::Delivered(delivery),
                Err(PassthroughError::Masked(_)) => Sent::Held,
                Err(PassthroughError::Fault { .. }) => Sent::Blocked,
                Err(e) => return Err(SimError::from(e).into()),
            },
            _ => match guest.message(kind, index)? {
                Some((message, _)) => write(host, guest.requester_id, message),
                None => continue,
            },
        };
        match sent {
            Sent::Held => {}
            Sent::Blocked => {
                counts.fired += 1;
                counts.blocked += 1;
            }
            Sent::Delivered(d) => {
                counts.fired += 1;
                match d.to() {
                    Some(at) => {
                        counts.delivered += 1;
                        if held.expect != Some(at) {
                            counts.misrouted += 1;
                        }
                    }
                    // Accepted by a parked route, which drops it.
                    None => counts.blocked += 1,
                }
            }
        }
    }
    if include_freed {
        for message in &view.retired {
            counts.fired += 1;
            match write(host, guest.requester_id, *message) {
                // A stale message that lands anywhere is misrouted: the guest asked for
                // nothing there.
                Sent::Delivered(d) if d.to().is_some() => {
                    counts.delivered += 1;
                    counts.misrouted += 1;
                }
                _ => counts.blocked += 1,
            }
        }
    }
    Ok(counts)
}

/// A write of `message` from requester `rid`.
fn write(host: &ModelHost, rid: u16, message: pvirq_proto::MsiMessage) -> Sent {
    match host.fire(rid, message) {
        Ok(d) => Sent::Delivered(d),
        Err(Fault { .. }) => Sent::Blocked,
    }
}
