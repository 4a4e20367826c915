//! The modelled hosts of a run: the scenario's `[host]`, where every VM starts, and the
//! destinations VMs may migrate to, each with the other tenants that already hold part of
//! it. Every scenario device is placed on each host as its declaration says, so that a VM
//! (or a device plugged later) finds its placement wherever it runs.

use super::RunError;
use crate::report::{DestinationReport, HostSnapshot};
use crate::scenario::{DestinationDecl, Scenario};
use crate::{Channel, SimError};
use pvirq_guest::Options;
use pvirq_host::model::{ModelHost, ModelViolation, Placement};
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::{DeviceSpec, VmConfig};
use pvirq_proto::{Grant, Kind, MsiMessage, Target};
use std::collections::HashSet;

/// The guest vector a tenant's vectors go to.
const TENANT_VECTOR: u8 = 0x30;

/// A destination host and its other tenants.
struct Destination {
    name: String,
    host: ModelHost,
    /// The tenants' channels, alive for the run: they hold what they were granted.
    _tenants: Vec<Channel>,
    tenant_vectors: u32,
    initial: HostSnapshot,
}

/// The hosts of a run. Host 0 is `[host]`; host `i + 1` is destination `i`.
pub(super) struct Hosts {
    main: ModelHost,
    dests: Vec<Destination>,
}

/// Places every device of `scenario`'s VMs on `host` as declared.
fn place_all(host: &ModelHost, scenario: &Scenario) -> Result<(), pvirq_host::HostError> {
    for device in scenario.vms.iter().flat_map(|vm| &vm.devices) {
        host.place_as(device.requester_id, device.placement())?;
    }
    Ok(())
}

/// Requester IDs no scenario device has, from the top down, for the tenants' devices.
fn spare_requester_ids(scenario: &Scenario) -> impl Iterator<Item = u16> {
    let used: HashSet<u16> = scenario
        .vms
        .iter()
        .flat_map(|vm| vm.devices.iter().map(|d| d.requester_id))
        .collect();
    (0..=u16::MAX).rev().filter(move |rid| !used.contains(rid))
}

/// Destination `decl`, with its tenants holding their vectors.
fn destination(decl: &DestinationDecl, scenario: &Scenario) -> Result<Destination, SimError> {
    let host = ModelHost::new(&decl.host.config())?;
    place_all(&host, scenario)?;
    let mut tenants = Vec::with_capacity(decl.tenants.len());
    let mut rids = spare_requester_ids(scenario);
    let mut tenant_vectors = 0;
    for tenant in &decl.tenants {
        let rid = rids
            .next()
            .ok_or(SimError::GuestReport("no requester ID left for a tenant"))?;
        host.place_as(rid, Placement::Vtd { unit: tenant.unit })?;
        let config = VmConfig {
            quota: u32::from(tenant.vectors),
            num_vcpus: 1,
            max_batch: tenant.vectors,
            devices: vec![DeviceSpec {
                requester_id: rid,
                msix_table_size: tenant.vectors,
                ..DeviceSpec::default()
            }],
            ..VmConfig::default()
        };
        let mut channel = Channel::new(
            &host,
            config,
            Box::new(MemoryRoutes::kvm_like()),
            Options::default(),
        )?;
        let n = usize::from(tenant.vectors);
        let targets = vec![Target::new(0, TENANT_VECTOR); n];
        let mut grants = vec![Grant::new(0, MsiMessage::default()); n];
        channel
            .driver()
            .alloc_irq_vectors(0, Kind::MsiX, tenant.vectors, &targets, &mut grants)?;
        tenant_vectors += u32::from(tenant.vectors);
        tenants.push(channel);
    }
    Ok(Destination {
        name: decl.name.clone(),
        initial: HostSnapshot::of(&host.occupancy()),
        host,
        _tenants: tenants,
        tenant_vectors,
    })
}

impl Hosts {
    /// `[host]` with every device placed, and each destination with its tenants.
    pub fn new(scenario: &Scenario) -> Result<Hosts, RunError> {
        let main = ModelHost::new(&scenario.host.config())?;
        place_all(&main, scenario)?;
        let dests = scenario
            .destinations
            .iter()
            .map(|d| {
                destination(d, scenario).map_err(|source| RunError::Destination {
                    name: d.name.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Hosts { main, dests })
    }

    /// `[host]`.
    pub fn main(&self) -> &ModelHost {
        &self.main
    }

    /// Host `at` (0: `[host]`; `i + 1`: destination `i`).
    pub fn get(&self, at: usize) -> &ModelHost {
        match at.checked_sub(1).and_then(|i| self.dests.get(i)) {
            Some(d) => &d.host,
            None => &self.main,
        }
    }

    /// Its name: `host`, or the destination's.
    pub fn name(&self, at: usize) -> String {
        match at.checked_sub(1).and_then(|i| self.dests.get(i)) {
            Some(d) => d.name.clone(),
            None => String::from("host"),
        }
    }

    /// Its occupancy now.
    pub fn snapshot(&self, at: usize) -> HostSnapshot {
        HostSnapshot::of(&self.get(at).occupancy())
    }

    /// Faults every host recorded.
    pub fn faults(&self) -> u64 {
        self.main.faults().count
            + self
                .dests
                .iter()
                .map(|d| d.host.faults().count)
                .sum::<u64>()
    }

    /// Every host's invariant violations.
    pub fn violations(&self) -> Vec<ModelViolation> {
        std::iter::once(&self.main)
            .chain(self.dests.iter().map(|d| &d.host))
            .flat_map(|h| h.check_invariants().err().unwrap_or_default())
            .collect()
    }

    /// The destinations, before the first step and now.
    pub fn reports(&self) -> Vec<DestinationReport> {
        self.dests
            .iter()
            .map(|d| DestinationReport {
                name: d.name.clone(),
                tenant_vectors: d.tenant_vectors,
                initial: d.initial.clone(),
                final_host: HostSnapshot::of(&d.host.occupancy()),
            })
            .collect()
    }
}
