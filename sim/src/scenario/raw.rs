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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVm {
    pub name: String,
    pub vcpus: u32,
    pub quota: u32,
    pub max_batch: Option<u16>,
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
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawOp {
    Alloc,
    Free,
    Retarget,
    Query,
    Reset,
    ResetVm,
    Fire,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawSpread {
    RoundRobin,
    SameVcpu,
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
    pub targets: Option<Vec<RawTarget>>,
    pub spread: Option<RawSpread>,
    pub vector: Option<u8>,
    pub vcpu: Option<u32>,
    pub pasid: Option<u32>,
    pub fallback: Option<RawFallback>,
    pub include_freed: Option<bool>,
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
            ("targets", self.targets.is_some()),
            ("spread", self.spread.is_some()),
            ("vector", self.vector.is_some()),
            ("vcpu", self.vcpu.is_some()),
            ("pasid", self.pasid.is_some()),
            ("fallback", self.fallback.is_some()),
            ("include_freed", self.include_freed.is_some()),
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
    pub vcpu: u32,
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
}

/// `index = "any"` or `index = N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IndexValue {
    Any,
    At(u32),
}

impl<'de> Deserialize<'de> for IndexValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IndexValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"any\" or a table index (integer)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IndexValue, E> {
                u32::try_from(v)
                    .map(IndexValue::At)
                    .map_err(|_| E::custom(format!("index {v} is not in 0..=4294967295")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IndexValue, E> {
                match v {
                    "any" => Ok(IndexValue::Any),
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
