//! From text to a validated [`Scenario`]: serde reads the shape (unknown keys refused),
//! then every value and every reference is checked, each error naming line and field.
//! Hosts, VMs and devices are checked here; steps in `parse_step`, expectations in
//! `parse_expect`.

use super::error::{Position, ScenarioError};
use super::locate::{context_at, find_key, key_at, line_col};
use super::model::{DestinationDecl, DeviceDecl, HostDecl, Scenario, TenantDecl, VmDecl};
use super::raw::{RawDestination, RawDevice, RawHost, RawScenario, RawVm};
use pvirq_host::config::{MAX_IMS_SLOTS, MAX_MSIX_TABLE};
use pvirq_host::model::amd::AMD_TABLE_SIZES;
use pvirq_proto::{MAX_BATCH_LIMIT, MAX_PASID, PciIdentity, feature};
use std::collections::HashSet;
use std::ops::Range;

/// Default `max_batch` of a VM.
const DEFAULT_MAX_BATCH: u16 = 64;
/// The protocol's largest multi-MSI block, the default of `max_msi_block`.
const MAX_MSI_BLOCK: u32 = 32;

/// The extension bits a VM's `features` may name, by the name the file uses.
pub(super) const FEATURE_NAMES: [(&str, u64); 8] = [
    ("apic-id", feature::APIC_ID),
    ("info", feature::INFO),
    ("posted", feature::POSTED),
    ("parked", feature::PARKED),
    ("events", feature::EVENTS),
    ("spread", feature::SPREAD),
    ("contiguous", feature::CONTIGUOUS),
    ("index-list", feature::INDEX_LIST),
];

/// The names of the extension bits `features` holds, in bit order (empty: version 1).
pub fn feature_names(features: u64) -> Vec<&'static str> {
    FEATURE_NAMES
        .iter()
        .filter(|(_, bit)| features & bit != 0)
        .map(|(name, _)| *name)
        .collect()
}

/// The file's name of extension bit `bit`.
pub(super) fn feature_name(bit: u64) -> &'static str {
    FEATURE_NAMES
        .iter()
        .find(|(_, b)| *b == bit)
        .map_or("?", |(n, _)| n)
}

/// Parses and validates a scenario. `origin` names the file in errors.
pub fn parse(src: &str, origin: &str) -> Result<Scenario, ScenarioError> {
    let raw: RawScenario = toml::from_str(src).map_err(|e| toml_error(src, origin, &e))?;
    Parser { src, origin }.scenario(raw)
}

/// A serde/toml error, with line, column, table and field recovered from its span.
fn toml_error(src: &str, origin: &str, e: &toml::de::Error) -> ScenarioError {
    let message = e.message().trim().to_string();
    let span = e.span();
    let quoted = ["unknown field `", "missing field `", "duplicate key `"]
        .iter()
        .find_map(|p| message.split_once(p))
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(field, _)| field.to_string());
    let field = quoted.or_else(|| span.as_ref().and_then(|s| key_at(src, s)));
    let position = span.as_ref().map(|s| {
        let (line, column) = line_col(src, s.start);
        Position { line, column }
    });
    ScenarioError {
        origin: origin.to_string(),
        position,
        context: span.and_then(|s| context_at(src, s.start)),
        field,
        message,
    }
}

pub(super) struct Parser<'a> {
    pub(super) src: &'a str,
    pub(super) origin: &'a str,
}

/// A table being validated: its span and how errors name it.
pub(super) struct Table<'t> {
    pub(super) span: Range<usize>,
    pub(super) context: &'t str,
}

impl Parser<'_> {
    pub(super) fn error(&self, table: &Table<'_>, field: &str, message: String) -> ScenarioError {
        let key = field.rsplit('.').next().unwrap_or(field);
        let at = find_key(self.src, &table.span, key).unwrap_or(table.span.start);
        let (line, column) = line_col(self.src, at);
        ScenarioError {
            origin: self.origin.to_string(),
            position: Some(Position { line, column }),
            context: Some(table.context.to_string()),
            field: Some(field.to_string()),
            message,
        }
    }

    fn scenario(&self, raw: RawScenario) -> Result<Scenario, ScenarioError> {
        let table = Table {
            span: self
                .src
                .find("[host]")
                .map_or(0..self.src.len(), |s| s..self.src.len()),
            context: "host",
        };
        let host = self.host(&table, raw.host)?;
        let mut destinations: Vec<DestinationDecl> = Vec::new();
        for (i, dest) in raw.destination.into_iter().enumerate() {
            let context = format!("destination {}", i + 1);
            let table = Table {
                span: dest.span(),
                context: &context,
            };
            let decl = self.destination(&table, dest.into_inner())?;
            if destinations.iter().any(|d| d.name == decl.name) {
                return Err(self.error(
                    &table,
                    "name",
                    format!("destination {:?} is declared twice", decl.name),
                ));
            }
            destinations.push(decl);
        }
        let mut vms: Vec<VmDecl> = Vec::new();
        let mut requester_ids = HashSet::new();
        for (i, vm) in raw.vm.into_iter().enumerate() {
            let context = format!("vm {}", i + 1);
            let span = vm.span();
            let table = Table {
                span,
                context: &context,
            };
            let decl = self.vm(&table, vm.into_inner(), &host, &mut requester_ids)?;
            if vms.iter().any(|v| v.name == decl.name) {
                return Err(self.error(
                    &table,
                    "name",
                    format!("VM {:?} is declared twice", decl.name),
                ));
            }
            vms.push(decl);
        }
        let steps = self.steps(raw.step, &vms, &destinations)?;
        Ok(Scenario {
            name: raw.name.unwrap_or_else(|| self.origin.to_string()),
            description: raw.description,
            host,
            destinations,
            vms,
            steps,
        })
    }

    fn host(&self, table: &Table<'_>, raw: RawHost) -> Result<HostDecl, ScenarioError> {
        let host = HostDecl {
            iommu_units: raw.iommu_units.unwrap_or(1),
            irtes_per_unit: raw.irtes_per_unit,
            cpus: raw.cpus,
            first_vector: raw.first_vector.unwrap_or(0x20),
            end_vector: raw.end_vector.unwrap_or(0xEC),
            reserved_vectors: raw.reserved_vectors.unwrap_or_default(),
            posted: raw.posted.unwrap_or(false),
            max_msi_block: raw.max_msi_block.unwrap_or(MAX_MSI_BLOCK),
        };
        if host.iommu_units == 0 {
            return Err(self.error(table, "iommu_units", "must be at least 1".into()));
        }
        if host.irtes_per_unit == 0 || host.irtes_per_unit > 65_536 {
            return Err(self.error(table, "irtes_per_unit", "must be 1..=65536".into()));
        }
        if host.cpus == 0 {
            return Err(self.error(table, "cpus", "must be at least 1".into()));
        }
        if host.first_vector >= host.end_vector {
            return Err(self.error(
                table,
                "end_vector",
                format!("must be above first_vector ({:#x})", host.first_vector),
            ));
        }
        if !host.max_msi_block.is_power_of_two() || host.max_msi_block > MAX_MSI_BLOCK {
            return Err(self.error(
                table,
                "max_msi_block",
                "must be a power of two up to 32".into(),
            ));
        }
        Ok(host)
    }

    fn destination(
        &self,
        table: &Table<'_>,
        raw: RawDestination,
    ) -> Result<DestinationDecl, ScenarioError> {
        if raw.name.is_empty() {
            return Err(self.error(table, "name", "must not be empty".into()));
        }
        let host = self.host(table, raw.host())?;
        let mut tenants = Vec::with_capacity(raw.tenants.len());
        for t in &raw.tenants {
            let tenant = TenantDecl {
                unit: t.unit.unwrap_or(0),
                vectors: t.vectors,
            };
            if tenant.unit >= host.iommu_units {
                return Err(self.error(
                    table,
                    "tenants",
                    format!(
                        "unit {}: the destination has {} IOMMU unit(s)",
                        tenant.unit, host.iommu_units
                    ),
                ));
            }
            if tenant.vectors == 0 || tenant.vectors > MAX_MSIX_TABLE {
                return Err(self.error(
                    table,
                    "tenants",
                    format!("vectors must be 1..={MAX_MSIX_TABLE}"),
                ));
            }
            tenants.push(tenant);
        }
        Ok(DestinationDecl {
            name: raw.name,
            host,
            tenants,
        })
    }

    fn vm(
        &self,
        table: &Table<'_>,
        raw: RawVm,
        host: &HostDecl,
        requester_ids: &mut HashSet<u16>,
    ) -> Result<VmDecl, ScenarioError> {
        if raw.name.is_empty() {
            return Err(self.error(table, "name", "must not be empty".into()));
        }
        if raw.vcpus == 0 {
            return Err(self.error(table, "vcpus", "must be at least 1".into()));
        }
        let max_batch = raw.max_batch.unwrap_or(DEFAULT_MAX_BATCH);
        if max_batch == 0 || max_batch > MAX_BATCH_LIMIT {
            return Err(self.error(table, "max_batch", format!("must be 1..={MAX_BATCH_LIMIT}")));
        }
        let features = self.features(table, raw.features.as_deref().unwrap_or_default())?;
        if let Some(ids) = &raw.apic_ids {
            if ids.len() != raw.vcpus as usize {
                return Err(self.error(
                    table,
                    "apic_ids",
                    format!(
                        "{} APIC IDs for {} vCPUs: give one per vCPU",
                        ids.len(),
                        raw.vcpus
                    ),
                ));
            }
            if let Some(dup) = ids.iter().enumerate().find(|(i, a)| ids[..*i].contains(a)) {
                return Err(self.error(
                    table,
                    "apic_ids",
                    format!("APIC ID {} is given twice", dup.1),
                ));
            }
        }
        let mut devices: Vec<DeviceDecl> = Vec::new();
        for (j, dev) in raw.device.into_iter().enumerate() {
            let context = format!("{}, device {}", table.context, j + 1);
            let dtable = Table {
                span: dev.span(),
                context: &context,
            };
            let decl = self.device(&dtable, dev.into_inner(), host)?;
            if devices.iter().any(|d| d.name == decl.name) {
                return Err(self.error(
                    &dtable,
                    "name",
                    format!("VM {:?} already has a device {:?}", raw.name, decl.name),
                ));
            }
            if !decl.hotplug && devices.iter().any(|d| d.hotplug) {
                return Err(self.error(
                    &dtable,
                    "hotplug",
                    "devices present at start come before hot-plugged ones (handles are given \
                     in order)"
                        .into(),
                ));
            }
            if !requester_ids.insert(decl.requester_id) {
                return Err(self.error(
                    &dtable,
                    "requester_id",
                    format!(
                        "{:#06x} is already used by another device",
                        decl.requester_id
                    ),
                ));
            }
            devices.push(decl);
        }
        Ok(VmDecl {
            name: raw.name,
            vcpus: raw.vcpus,
            quota: raw.quota,
            max_batch,
            devices,
            features,
            apic_ids: raw.apic_ids,
        })
    }

    /// `features = [...]`: version 1's bits and the extensions named; every bit with its
    /// prerequisite (spec §2.2).
    fn features(&self, table: &Table<'_>, names: &[String]) -> Result<u64, ScenarioError> {
        let mut bits = feature::V1;
        for name in names {
            let bit = match name.as_str() {
                "all" => FEATURE_NAMES.iter().fold(0, |b, (_, f)| b | f),
                _ => FEATURE_NAMES
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, b)| *b)
                    .ok_or_else(|| {
                        let known: Vec<&str> = FEATURE_NAMES.iter().map(|(n, _)| *n).collect();
                        self.error(
                            table,
                            "features",
                            format!("unknown feature {name:?} ({}, or all)", known.join(", ")),
                        )
                    })?,
            };
            bits |= bit;
        }
        if let Some(bit) = feature::missing_dependency(bits) {
            return Err(self.error(
                table,
                "features",
                format!("{:?} needs \"info\"", feature_name(bit)),
            ));
        }
        Ok(bits)
    }

    fn device(
        &self,
        table: &Table<'_>,
        raw: RawDevice,
        host: &HostDecl,
    ) -> Result<DeviceDecl, ScenarioError> {
        if raw.amd_table.is_some() && raw.unit.is_some() {
            return Err(self.error(
                table,
                "amd_table",
                "a device is behind an AMD IOMMU (amd_table) or a VT-d unit (unit), not both"
                    .into(),
            ));
        }
        let identity = self.identity(table, &raw)?;
        let d = DeviceDecl {
            name: raw.name,
            requester_id: raw.requester_id,
            unit: raw.unit.unwrap_or(0),
            msi: raw.msi.unwrap_or(0),
            msix: raw.msix.unwrap_or(0),
            ims: raw.ims.unwrap_or(0),
            amd_table: raw.amd_table,
            share: raw.share,
            identity,
            hotplug: raw.hotplug.unwrap_or(false),
        };
        if d.name.is_empty() {
            return Err(self.error(table, "name", "must not be empty".into()));
        }
        if d.unit >= host.iommu_units {
            return Err(self.error(
                table,
                "unit",
                format!("the host has {} IOMMU unit(s)", host.iommu_units),
            ));
        }
        if let Some(entries) = d.amd_table
            && !AMD_TABLE_SIZES.contains(&entries)
        {
            return Err(self.error(table, "amd_table", "must be 512 or 2048".into()));
        }
        if d.msi != 0 && (!d.msi.is_power_of_two() || d.msi > 32) {
            return Err(self.error(table, "msi", "must be 0 or a power of two up to 32".into()));
        }
        if d.msix > MAX_MSIX_TABLE {
            return Err(self.error(table, "msix", format!("must be at most {MAX_MSIX_TABLE}")));
        }
        if d.ims > MAX_IMS_SLOTS {
            return Err(self.error(table, "ims", format!("must be at most {MAX_IMS_SLOTS}")));
        }
        if d.msi == 0 && d.msix == 0 && d.ims == 0 {
            return Err(self.error(table, "msix", "the device needs msi, msix or ims".into()));
        }
        Ok(d)
    }

    /// `bdf` and `interface_pasid`: the function the guest sees, if not `requester_id`'s.
    fn identity(
        &self,
        table: &Table<'_>,
        raw: &RawDevice,
    ) -> Result<Option<PciIdentity>, ScenarioError> {
        if raw.bdf.is_none() && raw.interface_pasid.is_none() {
            return Ok(None);
        }
        if let Some(pasid) = raw.interface_pasid
            && pasid > MAX_PASID
        {
            return Err(self.error(
                table,
                "interface_pasid",
                format!("must be at most {MAX_PASID:#x} (20 bits)"),
            ));
        }
        let (segment, bus, devfn) = match &raw.bdf {
            None => (0, (raw.requester_id >> 8) as u8, raw.requester_id as u8),
            Some(text) => parse_bdf(text).ok_or_else(|| {
                self.error(
                    table,
                    "bdf",
                    format!("{text:?} is not SSSS:BB:DD.F (hex; device ≤ 1f, function ≤ 7)"),
                )
            })?,
        };
        Ok(Some(PciIdentity {
            segment,
            bus,
            devfn,
            requester_id: u16::from(bus) << 8 | u16::from(devfn),
            pasid: raw.interface_pasid,
        }))
    }
}

/// `SSSS:BB:DD.F` or `BB:DD.F` (hex): (segment, bus, devfn).
pub(super) fn parse_bdf(text: &str) -> Option<(u16, u8, u8)> {
    let (rest, function) = text.rsplit_once('.')?;
    let mut parts: Vec<&str> = rest.split(':').collect();
    let device = u8::from_str_radix(parts.pop()?, 16).ok()?;
    let bus = u8::from_str_radix(parts.pop()?, 16).ok()?;
    let segment = match parts.as_slice() {
        [] => 0,
        [s] => u16::from_str_radix(s, 16).ok()?,
        _ => return None,
    };
    let function = u8::from_str_radix(function, 16).ok()?;
    (device <= 0x1f && function <= 7).then_some((segment, bus, device << 3 | function))
}

/// `SSSS:BB:DD.F` of `identity`.
pub fn bdf_text(identity: &PciIdentity) -> String {
    format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        identity.segment,
        identity.bus,
        identity.device(),
        identity.function()
    )
}
