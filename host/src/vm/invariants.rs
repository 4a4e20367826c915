//! What must hold in the VM core between requests, whatever the backends:
//!
//! - a device's tables agree with its records; an MSI block is `0..n`, n a power of two;
//! - the VM's held count equals its grants and never exceeds its quota;
//! - every grant has its own live route, in the state its record says (parked or to its
//!   destination), and there are no other live routes;
//! - every destination is one of the VM's APIC IDs, at a vector ≥ 0x20.
//!
//! Call it when no request is in flight. The modelled host checks more on top
//! ([`crate::model::ModelHost::check_invariants`]).

use super::{Vm, VmState};
use crate::check_set::check_set;
use crate::routes::RouteState;
use crate::sync::lock;
use pvirq_proto::{Kind, MIN_GUEST_VECTOR};

impl Vm {
    /// Checks the core's invariants; the list of violations if any.
    pub fn check_invariants(&self) -> Result<(), Vec<String>> {
        let state = lock(&self.shared.state);
        let errors = self.violations(&state);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    pub(crate) fn violations(&self, st: &VmState) -> Vec<String> {
        let config = &self.shared.config;
        let mut errors = Vec::new();
        let mut routes = check_set(st.held as usize);
        let mut total: u64 = 0;
        for (handle, dev) in st.devices.iter().enumerate() {
            for kind in Kind::ALL.iter().copied() {
                let table = dev.grants.table(kind);
                let granted = table.granted();
                total += u64::from(granted);
                let used = table.size() - table.free.free_count();
                if used != granted {
                    errors.push(format!(
                        "dev {handle} {kind}: {granted} records but {used} slots used"
                    ));
                }
                if kind == Kind::Msi
                    && granted > 0
                    && !(granted.is_power_of_two()
                        && (0..granted).all(|i| table.records.get(&i).is_some()))
                {
                    errors.push(format!("dev {handle}: MSI block is not 0..{granted}"));
                }
                for (index, record) in table.records.iter() {
                    if !routes.insert(record.route) {
                        errors.push(format!("route {} shared by two grants", record.route));
                    }
                    let expected = RouteState::of(record.dest);
                    let live = st.routes.route(record.route);
                    if live != Some(expected) {
                        errors.push(format!(
                            "dev {handle} {kind} {index}: route {} is {live:?}, record says {expected:?}",
                            record.route
                        ));
                    }
                    if let Some(dest) = record.dest
                        && (!config.apic_ids.contains(dest.apic_id, config.num_vcpus)
                            || dest.vector < MIN_GUEST_VECTOR)
                    {
                        errors.push(format!(
                            "dev {handle} {kind} {index}: destination {dest:?} is not the VM's"
                        ));
                    }
                }
            }
        }
        if u64::from(st.held) != total {
            errors.push(format!("held {} but {total} grants", st.held));
        }
        if st.held > config.quota {
            errors.push(format!("held {} over quota {}", st.held, config.quota));
        }
        if u64::from(st.routes.live()) != total {
            errors.push(format!(
                "{} live routes for {total} grants",
                st.routes.live()
            ));
        }
        errors
    }
}
