//! Validating what a request step asks: which indices (a run or a list), an ALLOC's
//! count, index form and targeting, and its targets on the wire.

use super::error::ScenarioError;
use super::model::VmDecl;
use super::parse::{Parser, Table};
use super::raw::{CountValue, IndexValue, RawFallback, RawSpread, RawStep, RawTargeting};
use super::step::{AllocStep, Dest, Fallback, IndexSel};
use pvirq_proto::{IndexSpec, Targeting, feature};

/// Default first guest vector of a spread.
const DEFAULT_SPREAD_VECTOR: u8 = 0x40;

impl Parser<'_> {
    /// `indices = [...]` (a list: needs `INDEX_LIST`) or `first` with `count` (default:
    /// `listed`, the number of targets given, or 1).
    pub(super) fn indices(
        &self,
        table: &Table<'_>,
        raw: &RawStep,
        vm: &VmDecl,
        listed: Option<usize>,
    ) -> Result<IndexSel, ScenarioError> {
        if let Some(list) = &raw.indices {
            if raw.first.is_some() || raw.count.is_some() {
                return Err(self.error(
                    table,
                    "indices",
                    "give either `indices` or `first` (with `count`)".into(),
                ));
            }
            self.needs(table, vm, "indices", feature::INDEX_LIST)?;
            if list.is_empty() || list.len() > usize::from(vm.max_batch) {
                return Err(self.error(
                    table,
                    "indices",
                    format!("needs 1..={} indices", vm.max_batch),
                ));
            }
            if list.windows(2).any(|w| w[0] >= w[1]) {
                return Err(self.error(table, "indices", "must be strictly increasing".into()));
            }
            return Ok(IndexSel::List(list.clone()));
        }
        let first = raw.first.ok_or_else(|| {
            self.error(
                table,
                "first",
                "required: the first table index (or `indices`)".into(),
            )
        })?;
        let count = match (raw.count, listed) {
            (None, Some(n)) => u16::try_from(n).unwrap_or(u16::MAX),
            (None, None) => 1,
            (Some(CountValue { min, max }), _) if min == max && min > 0 => min,
            (Some(_), _) => {
                return Err(self.error(table, "count", "must be one number ≥ 1".into()));
            }
        };
        Ok(IndexSel::Run { first, count })
    }

    pub(super) fn alloc(
        &self,
        table: &Table<'_>,
        raw: &RawStep,
        vm: &VmDecl,
        device: usize,
    ) -> Result<AllocStep, ScenarioError> {
        let kind = self.kind(table, raw)?;
        let (min, max) = match (raw.count, raw.min, raw.max) {
            (Some(c), None, None) => (c.min, c.max),
            (Some(_), _, _) => {
                return Err(self.error(
                    table,
                    "count",
                    "give either `count` or `min`/`max`".into(),
                ));
            }
            (None, min, Some(max)) => (min.unwrap_or(1), max),
            (None, _, None) => {
                return Err(self.error(table, "count", "required: N or \"min..max\"".into()));
            }
        };
        if min == 0 || min > max {
            return Err(self.error(
                table,
                "count",
                format!("needs 1 ≤ min ≤ max (got {min}..{max})"),
            ));
        }
        if max > vm.max_batch {
            return Err(self.error(
                table,
                "count",
                format!(
                    "max {max} exceeds VM {:?}'s max_batch {}",
                    vm.name, vm.max_batch
                ),
            ));
        }
        let index = match raw.index.unwrap_or(IndexValue::Any) {
            IndexValue::Any => IndexSpec::Any,
            IndexValue::AnyContiguous => {
                self.needs(table, vm, "index", feature::CONTIGUOUS)?;
                IndexSpec::AnyContiguous
            }
            IndexValue::At(i) => IndexSpec::At(i),
        };
        let (targeting, targets) = match raw.targeting.unwrap_or(RawTargeting::PerVector) {
            RawTargeting::PerVector => (Targeting::PerVector, self.targets(table, raw, vm, max)?),
            RawTargeting::Spread => {
                self.needs(table, vm, "targeting", feature::SPREAD)?;
                let set = match &raw.targets {
                    Some(list) if list.is_empty() || list.len() > usize::from(vm.max_batch) => {
                        return Err(self.error(
                            table,
                            "targets",
                            format!("a spread needs 1..={} targets", vm.max_batch),
                        ));
                    }
                    Some(list) => list.len(),
                    // By default, one target per vCPU.
                    None => usize::try_from(vm.vcpus).unwrap_or(usize::MAX),
                };
                let set = u16::try_from(set).unwrap_or(u16::MAX);
                (Targeting::Spread, self.targets(table, raw, vm, set)?)
            }
            RawTargeting::Parked => {
                self.needs(table, vm, "targeting", feature::PARKED)?;
                if let Some(key) = ["targets", "spread", "vcpu", "vector"]
                    .into_iter()
                    .find(|k| raw.present().contains(k))
                {
                    return Err(self.error(
                        table,
                        key,
                        "a parked ALLOC has no targets (activate gives them)".into(),
                    ));
                }
                (Targeting::Parked, Vec::new())
            }
        };
        Ok(AllocStep {
            device,
            kind,
            index,
            min,
            max,
            targeting,
            targets,
            pasid: raw.pasid,
            fallback: match raw.fallback {
                None | Some(RawFallback::None) => Fallback::None,
                Some(RawFallback::Linux) => Fallback::Linux,
            },
        })
    }

    /// `count` destinations on the wire: the explicit `targets` list, or the spread rule.
    /// A target names a vCPU index (`vcpu`), which goes on the wire as its APIC ID when
    /// the VM asks for `APIC_ID`, or an APIC ID itself (`apic_id`, needs `APIC_ID`).
    pub(super) fn targets(
        &self,
        table: &Table<'_>,
        raw: &RawStep,
        vm: &VmDecl,
        count: u16,
    ) -> Result<Vec<Dest>, ScenarioError> {
        if let Some(list) = &raw.targets {
            if raw.spread.is_some() || raw.vector.is_some() || raw.vcpu.is_some() {
                return Err(self.error(
                    table,
                    "targets",
                    "give either `targets` or a spread (`spread`, `vcpu`, `vector`)".into(),
                ));
            }
            if list.len() != usize::from(count) {
                return Err(self.error(
                    table,
                    "targets",
                    format!(
                        "{} targets for {count} vectors: give one per vector",
                        list.len()
                    ),
                ));
            }
            let mut out = Vec::with_capacity(list.len());
            for t in list {
                let vcpu = match (t.vcpu, t.apic_id) {
                    (Some(vcpu), None) => vm.wire_vcpu(vcpu),
                    (None, Some(apic_id)) => {
                        self.needs(table, vm, "targets", feature::APIC_ID)?;
                        apic_id
                    }
                    _ => {
                        return Err(self.error(
                            table,
                            "targets",
                            "each target names `vcpu` or `apic_id`, not both".into(),
                        ));
                    }
                };
                out.push(Dest {
                    vcpu,
                    vector: t.vector,
                });
            }
            return Ok(out);
        }
        let first_vcpu = raw.vcpu.unwrap_or(0);
        if first_vcpu >= vm.vcpus {
            return Err(self.error(
                table,
                "vcpu",
                format!("VM {:?} has {} vCPUs", vm.name, vm.vcpus),
            ));
        }
        let vector = raw.vector.unwrap_or(DEFAULT_SPREAD_VECTOR);
        let spread = raw.spread.unwrap_or(RawSpread::RoundRobin);
        // Interleaved, each vCPU takes the next vector in turn: count / vcpus per vCPU.
        let per_vcpu = match spread {
            RawSpread::Interleave => u32::from(count).div_ceil(vm.vcpus),
            RawSpread::RoundRobin | RawSpread::SameVcpu => u32::from(count),
        };
        if u32::from(vector) + per_vcpu > 0x100 {
            return Err(self.error(
                table,
                "vector",
                format!("{vector:#x} + {per_vcpu} vectors runs past 0xff"),
            ));
        }
        Ok((0..u32::from(count))
            .map(|i| {
                let (vcpu, offset) = match spread {
                    RawSpread::RoundRobin => ((first_vcpu + i) % vm.vcpus, i),
                    RawSpread::SameVcpu => (first_vcpu, i),
                    RawSpread::Interleave => ((first_vcpu + i) % vm.vcpus, i / vm.vcpus),
                };
                Dest {
                    vcpu: vm.wire_vcpu(vcpu),
                    vector: (u32::from(vector) + offset) as u8,
                }
            })
            .collect())
    }
}
