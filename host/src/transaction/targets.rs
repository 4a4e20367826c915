//! Where vectors go (spec §4.5, §4.7): each target's CPU checked and turned into a guest
//! destination, and which destination each grant of an ALLOC takes (one per vector,
//! spread over a target set, or none: parked).

use crate::backend::GuestDest;
use crate::config::{ApicIdSet, VmConfig};
use pvirq_proto::{Field, Refusal, Target, Targeting, feature, spread_position};

/// The destination of each of `targets`, in order, pushed onto `out`; or INVALID_TARGET
/// `target-vcpu` for the first whose CPU is not the VM's (spec §5.3 step 8). A
/// version-1 driver names a vCPU index `< num_vcpus`; with `APIC_ID` in `features` the
/// driver names the x2APIC ID itself, which must be one of `apic_ids`.
pub(super) fn destinations(
    config: &VmConfig,
    apic_ids: &ApicIdSet,
    features: u64,
    targets: &[Target],
    out: &mut Vec<GuestDest>,
) -> Result<(), Refusal> {
    let by_apic_id = features & feature::APIC_ID != 0;
    for (entry, t) in targets.iter().enumerate() {
        let apic_id = if by_apic_id {
            apic_ids.contains(t.dest()).then_some(t.dest())
        } else {
            config.apic_ids.of_vcpu(t.vcpu(), config.num_vcpus)
        };
        let Some(apic_id) = apic_id else {
            return Err(Refusal::InvalidTarget {
                field: Field::TargetVcpu,
                entry: u32::try_from(entry).unwrap_or(u32::MAX),
            });
        };
        out.push(GuestDest {
            apic_id,
            vector: t.vector(),
        });
    }
    Ok(())
}

/// Where each of `n` granted vectors goes (spec §4.5, *Targets*), given the request's
/// checked destinations `dests`: grant `i` takes `dests[i]`; spread, it takes
/// `dests[⌊i × t / n⌋]` of the `t` destinations, so the answer depends on the count
/// actually granted; parked, it has none.
pub(super) fn grant_dests(
    targeting: Targeting,
    dests: &[GuestDest],
    n: usize,
) -> Vec<Option<GuestDest>> {
    (0..n)
        .map(|i| match targeting {
            Targeting::PerVector => dests.get(i).copied(),
            Targeting::Spread => {
                spread_position(i, n, dests.len()).and_then(|p| dests.get(p).copied())
            }
            Targeting::Parked => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApicIds;

    fn config(apic_ids: ApicIds) -> VmConfig {
        VmConfig {
            quota: 8,
            num_vcpus: 3,
            max_batch: 8,
            apic_ids,
            ..VmConfig::default()
        }
    }

    fn check(config: &VmConfig, features: u64, cpus: &[u32]) -> Result<Vec<u32>, Refusal> {
        let targets: Vec<Target> = cpus.iter().map(|c| Target::new(*c, 0x40)).collect();
        let mut out = Vec::new();
        destinations(config, &ApicIdSet::of(config), features, &targets, &mut out)?;
        Ok(out.iter().map(|d| d.apic_id).collect())
    }

    #[test]
    fn version_1_names_vcpu_indices_and_apic_id_names_the_ids_themselves() {
        let sparse = config(ApicIds::Table(vec![0, 4, 300]));
        // Version 1: vCPU index 2 is APIC ID 300; index 3 does not exist.
        assert_eq!(check(&sparse, feature::V1, &[2, 1, 0]), Ok(vec![300, 4, 0]));
        assert_eq!(
            check(&sparse, feature::V1, &[0, 3]),
            Err(Refusal::InvalidTarget {
                field: Field::TargetVcpu,
                entry: 1
            })
        );
        // APIC_ID: 300 and 4 are the VM's; 2 is not (though it is a vCPU index).
        let apic = feature::V1 | feature::APIC_ID;
        assert_eq!(check(&sparse, apic, &[300, 4]), Ok(vec![300, 4]));
        assert_eq!(
            check(&sparse, apic, &[300, 2]),
            Err(Refusal::InvalidTarget {
                field: Field::TargetVcpu,
                entry: 1
            })
        );
        // Identity numbering: the IDs are the indices.
        let identity = config(ApicIds::Identity);
        assert_eq!(check(&identity, apic, &[2, 0]), Ok(vec![2, 0]));
        assert!(check(&identity, apic, &[3]).is_err());
    }

    #[test]
    fn spread_takes_the_floor_formula_over_the_count_granted() {
        let d: Vec<GuestDest> = (0..4)
            .map(|apic_id| GuestDest {
                apic_id,
                vector: 0x30,
            })
            .collect();
        let ids = |v: Vec<Option<GuestDest>>| -> Vec<Option<u32>> {
            v.into_iter().map(|d| d.map(|d| d.apic_id)).collect()
        };
        // 6 over 4: consecutive vectors share; 2 over 4: every other target.
        assert_eq!(
            ids(grant_dests(Targeting::Spread, &d, 6)),
            [0, 0, 1, 2, 2, 3].map(Some)
        );
        assert_eq!(ids(grant_dests(Targeting::Spread, &d, 2)), [0, 2].map(Some));
        assert_eq!(
            ids(grant_dests(Targeting::PerVector, &d, 3)),
            [0, 1, 2].map(Some)
        );
        assert_eq!(ids(grant_dests(Targeting::Parked, &d, 2)), [None, None]);
        assert!(grant_dests(Targeting::Spread, &d, 0).is_empty());
    }
}
