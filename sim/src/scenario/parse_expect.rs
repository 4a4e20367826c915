//! Validating a step's `expect = { ... }`: every name (status, resource, mode, event
//! type, message format) known, every snapshot taken earlier.

use super::error::ScenarioError;
use super::expect::{Expect, Fates};
use super::parse::{Parser, Table, parse_bdf};
use super::raw::RawExpect;
use pvirq_proto::{EventType, GrantMode, MessageFormat, Resource, Status};
use std::collections::HashSet;

/// `name` as one of `all`, by their names, or an error listing them.
fn named<T: Copy>(
    parser: &Parser<'_>,
    table: &Table<'_>,
    field: &str,
    what: &str,
    name: &str,
    all: &[T],
    name_of: fn(T) -> &'static str,
) -> Result<T, ScenarioError> {
    all.iter()
        .copied()
        .find(|v| name_of(*v) == name)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|v| name_of(*v)).collect();
            parser.error(
                table,
                field,
                format!("unknown {what} {name:?} ({})", names.join(", ")),
            )
        })
}

impl Parser<'_> {
    pub(super) fn expect(
        &self,
        table: &Table<'_>,
        raw: RawExpect,
        snapshots: &HashSet<String>,
    ) -> Result<Expect, ScenarioError> {
        let status = match &raw.status {
            None => None,
            Some(s) => Some(named(
                self,
                table,
                "expect.status",
                "status",
                s,
                Status::ALL,
                Status::name,
            )?),
        };
        let resource = match &raw.resource {
            None => None,
            Some(r) => Some(named(
                self,
                table,
                "expect.resource",
                "resource",
                r,
                Resource::ALL,
                Resource::name,
            )?),
        };
        let mode = match &raw.mode {
            None => None,
            Some(m) => Some(named(
                self,
                table,
                "expect.mode",
                "mode",
                m,
                GrantMode::ALL,
                GrantMode::name,
            )?),
        };
        let format = match &raw.format {
            None => None,
            Some(f) => Some(named(
                self,
                table,
                "expect.format",
                "message format",
                f,
                MessageFormat::ALL,
                MessageFormat::name,
            )?),
        };
        let events = match &raw.events {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|e| {
                        named(
                            self,
                            table,
                            "expect.events",
                            "event type",
                            e,
                            EventType::ALL,
                            EventType::name,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        if let Some(bdf) = &raw.bdf
            && parse_bdf(bdf).is_none()
        {
            return Err(self.error(table, "expect.bdf", format!("{bdf:?} is not SSSS:BB:DD.F")));
        }
        if let Some(name) = &raw.host_equals
            && !snapshots.contains(name)
        {
            return Err(self.error(
                table,
                "expect.host_equals",
                format!("no earlier step has snapshot = {name:?}"),
            ));
        }
        Ok(Expect {
            status,
            resource,
            available: raw.available,
            granted: raw.granted,
            fallback: raw.fallback,
            quota_left: raw.quota_left,
            vm_held: raw.vm_held,
            vm_quota: raw.vm_quota,
            irtes_free: raw.irtes_free,
            vectors_free: raw.vectors_free,
            delivered: raw.delivered,
            blocked: raw.blocked,
            host_equals: raw.host_equals,
            mode,
            parked: raw.parked,
            grant_vcpus: raw.grant_vcpus,
            events,
            applied: raw.applied,
            fates: Fates {
                kept: raw.kept,
                reprogrammed: raw.reprogrammed,
                revoked: raw.revoked,
            },
            migrated: raw.migrated,
            format,
            bdf: raw.bdf.map(|b| {
                // Canonical form, so that `03:00.2` checks as `0000:03:00.2`.
                parse_bdf(&b).map_or(b, |(s, bus, devfn)| {
                    format!("{s:04x}:{bus:02x}:{:02x}.{:x}", devfn >> 3, devfn & 7)
                })
            }),
            interface_pasid: raw.interface_pasid,
            share: raw.share,
            can_post: raw.can_post,
            msix_free_run: raw.msix_free_run,
            ims_free_run: raw.ims_free_run,
        })
    }
}
