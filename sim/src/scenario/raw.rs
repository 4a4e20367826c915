//! The scenario file as serde reads it: every table refuses unknown keys, so a misspelt
//! field is an error naming it, not a silently ignored line.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScenario {
    pub name: Option<String>,
    pub description: Option<String>,
    pub host: RawHost,
    #[serde(default)]
    pub destination: Vec<Spanned<RawDestination>>,
    #[serde(default)]
    pub vm: Vec<Spanned<RawVm>>,
    #[serde(default)]
    pub step: Vec<Spanned<RawStep>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    pub iommu_units: Option<u16>,
    pub irtes_per_unit: u32,
    pub cpus: u32,
    pub first_vector: Option<u8>,
    pub end_vector: Option<u8>,
    pub reserved_vectors: Option<Vec<u8>>,
    pub posted: Option<bool>,
    pub max_msi_block: Option<u32>,
}

/// `[[destination]]`: a host's keys, its name, and who already holds part of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestination {
    pub name: String,
    pub iommu_units: Option<u16>,
    pub irtes_per_unit: u32,
    pub cpus: u32,
    pub first_vector: Option<u8>,
    pub end_vector: Option<u8>,
    pub reserved_vectors: Option<Vec<u8>>,
    pub posted: Option<bool>,
    pub max_msi_block: Option<u32>,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
}

impl RawDestination {
    /// Its host keys, as `[host]` has them.
    pub fn host(&self) -> RawHost {
        RawHost {
            iommu_units: self.iommu_units,
            irtes_per_unit: self.irtes_per_unit,
            cpus: self.cpus,
            first_vector: self.first_vector,
            end_vector: self.end_vector,
            reserved_vectors: self.reserved_vectors.clone(),
            posted: self.posted,
            max_msi_block: self.max_msi_block,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    pub unit: Option<u16>,
    pub vectors: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVm {
    pub name: String,
    pub vcpus: u32,
    pub quota: u32,
    pub max_batch: Option<u16>,
    pub features: Option<Vec<String>>,
    pub apic_ids: Option<Vec<u32>>,
    #[serde(default)]
    pub device: Vec<Spanned<RawDevice>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevice {
    pub name: String,
    pub requester_id: u16,
    pub unit: Option<u16>,
    pub msi: Option<u16>,
    pub msix: Option<u16>,
    pub ims: Option<u32>,
    pub amd_table: Option<u32>,
    pub share: Option<u32>,
    pub bdf: Option<String>,
    pub interface_pasid: Option<u32>,
    pub hotplug: Option<bool>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawOp {
    Alloc,
    Free,
    Retarget,
    Activate,
    Park,
    Query,
    Reset,
    ResetVm,
    Fire,
    Events,
    SetQuota,
    SetShare,
    AddDevice,
    RemoveDevice,
    ResourcesChanged,
    Migrate,
}

impl RawOp {
    /// The op as the file spells it.
    pub fn name(self) -> &'static str {
        match self {
            RawOp::Alloc => "alloc",
            RawOp::Free => "free",
            RawOp::Retarget => "retarget",
            RawOp::Activate => "activate",
            RawOp::Park => "park",
            RawOp::Query => "query",
            RawOp::Reset => "reset",
            RawOp::ResetVm => "reset_vm",
            RawOp::Fire => "fire",
            RawOp::Events => "events",
            RawOp::SetQuota => "set_quota",
            RawOp::SetShare => "set_share",
            RawOp::AddDevice => "add_device",
            RawOp::RemoveDevice => "remove_device",
            RawOp::ResourcesChanged => "resources_changed",
            RawOp::Migrate => "migrate",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawSpread {
    RoundRobin,
    SameVcpu,
    Interleave,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawTargeting {
    PerVector,
    Spread,
    Parked,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawFallback {
    None,
    Linux,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStep {
    pub op: RawOp,
    pub vm: String,
    pub device: Option<String>,
    pub note: Option<String>,
    pub kind: Option<String>,
    pub index: Option<IndexValue>,
    pub count: Option<CountValue>,
    pub min: Option<u16>,
    pub max: Option<u16>,
    pub first: Option<u32>,
    pub indices: Option<Vec<u32>>,
    pub targeting: Option<RawTargeting>,
    pub targets: Option<Vec<RawTarget>>,
    pub spread: Option<RawSpread>,
    pub vector: Option<u8>,
    pub vcpu: Option<u32>,
    pub pasid: Option<u32>,
    pub fallback: Option<RawFallback>,
    pub include_freed: Option<bool>,
    pub quota: Option<u32>,
    pub share: Option<ShareValue>,
    pub to: Option<String>,
    pub snapshot: Option<String>,
    pub expect: Option<RawExpect>,
}

impl RawStep {
    /// The optional keys this step sets, by name (for "does not apply to this op").
    pub fn present(&self) -> Vec<&'static str> {
        let keys = [
            ("device", self.device.is_some()),
            ("kind", self.kind.is_some()),
            ("index", self.index.is_some()),
            ("count", self.count.is_some()),
            ("min", self.min.is_some()),
            ("max", self.max.is_some()),
            ("first", self.first.is_some()),
            ("indices", self.indices.is_some()),
            ("targeting", self.targeting.is_some()),
            ("targets", self.targets.is_some()),
            ("spread", self.spread.is_some()),
            ("vector", self.vector.is_some()),
            ("vcpu", self.vcpu.is_some()),
            ("pasid", self.pasid.is_some()),
            ("fallback", self.fallback.is_some()),
            ("include_freed", self.include_freed.is_some()),
            ("quota", self.quota.is_some()),
            ("share", self.share.is_some()),
            ("to", self.to.is_some()),
        ];
        keys.iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| *k)
            .collect()
    }
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub vcpu: Option<u32>,
    pub apic_id: Option<u32>,
    pub vector: u8,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpect {
    pub status: Option<String>,
    pub resource: Option<String>,
    pub available: Option<u32>,
    pub granted: Option<u32>,
    pub fallback: Option<bool>,
    pub quota_left: Option<u32>,
    pub vm_held: Option<u32>,
    pub irtes_free: Option<u32>,
    pub vectors_free: Option<u32>,
    pub delivered: Option<u64>,
    pub blocked: Option<u64>,
    pub host_equals: Option<String>,
    pub vm_quota: Option<u32>,
    pub mode: Option<String>,
    pub parked: Option<bool>,
    pub grant_vcpus: Option<Vec<u32>>,
    pub events: Option<Vec<String>>,
    pub applied: Option<u32>,
    pub kept: Option<u32>,
    pub reprogrammed: Option<u32>,
    pub revoked: Option<u32>,
    pub migrated: Option<bool>,
    pub format: Option<String>,
    pub bdf: Option<String>,
    pub interface_pasid: Option<u32>,
    pub share: Option<u32>,
    pub can_post: Option<bool>,
    pub msix_free_run: Option<u32>,
    pub ims_free_run: Option<u32>,
}

/// `index = "any"`, `"any-contiguous"` or `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IndexValue {
    Any,
    AnyContiguous,
    At(u32),
}

impl<'de> Deserialize<'de> for IndexValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IndexValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"any\", \"any-contiguous\" or a table index (integer)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IndexValue, E> {
                u32::try_from(v)
                    .map(IndexValue::At)
                    .map_err(|_| E::custom(format!("index {v} is not in 0..=4294967295")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IndexValue, E> {
                match v {
                    "any" => Ok(IndexValue::Any),
                    "any-contiguous" => Ok(IndexValue::AnyContiguous),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `count = N` or `count = "min..max"` (both ends inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CountValue {
    pub min: u16,
    pub max: u16,
}

impl<'de> Deserialize<'de> for CountValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CountValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a count (integer) or \"min..max\" (both inclusive)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CountValue, E> {
                let n = u16::try_from(v)
                    .map_err(|_| E::custom(format!("count {v} is not in 0..=65535")))?;
                Ok(CountValue { min: n, max: n })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CountValue, E> {
                let bad = || E::invalid_value(de::Unexpected::Str(v), &self);
                let (lo, hi) = v.split_once("..").ok_or_else(bad)?;
                let hi = hi.strip_prefix('=').unwrap_or(hi);
                let min = lo.trim().parse::<u16>().map_err(|_| bad())?;
                let max = hi.trim().parse::<u16>().map_err(|_| bad())?;
                Ok(CountValue { min, max })
            }
        }
        d.deserialize_any(V)
    }
}

/// `share = N` or `share = "none"` (no share of its own: the quota bounds the device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ShareValue(pub Option<u32>);

impl<'de> Deserialize<'de> for ShareValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ShareValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a vector count (integer) or \"none\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ShareValue, E> {
                u32::try_from(v)
                    .map(|n| ShareValue(Some(n)))
                    .map_err(|_| E::custom(format!("share {v} is not in 0..=4294967295")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ShareValue, E> {
                match v {
                    "none" => Ok(ShareValue(None)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}
