//! Restoring a snapshot on a fresh VM (spec §13): validated first, then every grant
//! re-reserved ([`crate::transaction`]'s restore), then the rest of the VM's state: removed
//! devices, the event log, and the events that tell the driver what changed.

use super::Vm;
use crate::backend::Unplugged;
use crate::snapshot::{RestoreError, Restored, RestoredGrant, VmSnapshot};
use crate::transaction::{self, recheck_available};
use pvirq_proto::EventBody;
use std::sync::Arc;

impl Vm {
    /// Restores `snapshot` on this VM, which must hold nothing yet: validates every field
    /// ([`RestoreError`] on the first inconsistency, with nothing reserved), re-reserves
    /// every grant through the devices' backends, commits the routes once, and sets the
    /// negotiated features. `offered` is what the device offers (features a snapshot may
    /// carry). Returns each grant's fate, in snapshot order per device.
    ///
    /// A snapshot whose driver negotiated the event queue brings its event log, and each
    /// grant that changed is reported on it after the pending events: REPROGRAM with the
    /// new message and mode, REVOKE with the resource the host lacked. Without a log the
    /// driver cannot be told: the caller decides ([`crate::device::PvirqDevice::restore`]
    /// refuses such a restore, [DEV-27]).
    pub fn restore(
        &self,
        snapshot: &VmSnapshot,
        offered: u64,
    ) -> Result<Vec<RestoredGrant>, RestoreError> {
        let mut st = self.state();
        let checked = snapshot.validate(&st.config, offered)?;
        let report = transaction::restore(&mut st, &checked.grants, snapshot.features)?;
        for handle in checked.removed {
            if let Some(dev) = st.devices.present_mut(handle as usize) {
                dev.removed = true;
                // The VMM's placeholder for the gone device is not needed.
                dev.backend = Box::new(Unplugged);
            }
        }
        st.config_generation = snapshot.config_generation;
        if let Some(log) = checked.events {
            st.events = log;
        }
        let quota = st.config.quota;
        if snapshot.vm_quota.is_some_and(|q| q != quota) {
            st.config_generation = st.config_generation.wrapping_add(1);
            st.events.push(EventBody::Limits {
                device: None,
                limit: quota,
            });
        }
        for r in &report {
            let event = match r.outcome {
                Restored::Kept => continue,
                Restored::Reprogrammed(message) => {
                    let record = st
                        .devices
                        .get(r.device as usize)
                        .and_then(|d| d.grants.table(r.kind).records.get(&r.index).copied());
                    let Some(record) = record else { continue };
                    EventBody::Reprogram {
                        device: r.device,
                        kind: r.kind,
                        index: r.index,
                        message,
                        mode: record.mode,
                    }
                }
                Restored::Revoked(reason) => EventBody::Revoke {
                    device: r.device,
                    kind: r.kind,
                    index: r.index,
                    reason,
                },
            };
            st.events.push(event);
        }
        // Revoked grants gave their quota back.
        let config = Arc::clone(&st.config);
        recheck_available(&config, &mut st);
        Ok(report)
    }

    /// Whether the VM records events for its driver (it negotiated the event queue and went
    /// live, or a restored snapshot brought its log).
    pub fn records_events(&self) -> bool {
        self.state().events.is_enabled()
    }
}
