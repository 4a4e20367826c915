//! Random sequences of extension-shaped requests from two VMs on one posting host (one
//! device behind an AMD table, one with a share, a backend that sometimes backs fewer
//! than sized): every reply decodes under the VM's features, a refusal changes nothing,
//! an OK says exactly what the VM now holds, and every invariant of the core and of the
//! modelled kernel holds after each step, shares included.

use super::*;
use crate::fault::{Shortfall, ShortfallCap};
use crate::grants::GrantRecord;
use crate::model::Placement;
use crate::routes::RouteState;
use crate::vm::VmOccupancy;
use proptest::prelude::*;
use pvirq_proto::spread_position;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        vm: usize,
        dev: u32,
        kind: u8,
        /// 0: ANY_INDEX, 1: ANY_CONTIGUOUS, else `At(first)`.
        index: u8,
        first: u32,
        min: u16,
        extra: u16,
        /// 0: per vector, 1: spread, 2: parked.
        targeting: u8,
        spread_over: u16,
        /// The most the host backs this time.
        cap: usize,
    },
    Free {
        vm: usize,
        dev: u32,
        /// Bit i: the i-th grant of the kind is listed.
        pick: u64,
        kind: u8,
        stray: Option<u32>,
    },
    Retarget {
        vm: usize,
        dev: u32,
        pick: u64,
        kind: u8,
        park: bool,
        apic: u32,
    },
    Reset {
        vm: usize,
        dev: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..3u32, 1..4u8, 0..4u8, 0..20u32, 1..5u16, 0..6u16, 0..3u8, 1..6u16, prop_oneof![Just(usize::MAX), 1..5usize])
            .prop_map(|(vm, dev, kind, index, first, min, extra, targeting, spread_over, cap)| Op::Alloc {
                vm, dev, kind, index, first, min, extra, targeting, spread_over, cap
            }),
        2 => (0..2usize, 0..3u32, any::<u64>(), 1..4u8, proptest::option::of(0..40u32))
            .prop_map(|(vm, dev, pick, kind, stray)| Op::Free { vm, dev, pick, kind, stray }),
        2 => (0..2usize, 0..3u32, any::<u64>(), 1..4u8, any::<bool>(), 0..5u32)
            .prop_map(|(vm, dev, pick, kind, park, apic)| Op::Retarget { vm, dev, pick, kind, park, apic }),
        1 => (0..2usize, 0..3u32).prop_map(|(vm, dev)| Op::Reset { vm, dev }),
    ]
}

type View = (
    VmOccupancy,
    Vec<Vec<(Kind, u32, GrantRecord, Option<RouteState>)>>,
);

fn view(vm: &Vm) -> View {
    let devices = (0..vm.config().devices.len() as u32)
        .map(|d| {
            vm.grants(d)
                .into_iter()
                .map(|(k, i, r)| (k, i, r, vm.route(r.route)))
                .collect()
        })
        .collect();
    (vm.occupancy(), devices)
}

/// The indices of `kind` that `pick` selects among device `dev`'s grants, plus `stray`.
fn picked(vm: &Vm, dev: u32, kind: Kind, pick: u64, stray: Option<u32>) -> Vec<u32> {
    let mut out: Vec<u32> = vm
        .grants(dev)
        .into_iter()
        .filter(|(k, _, _)| *k == kind)
        .enumerate()
        .filter(|(i, _)| pick & (1 << (i % 64)) != 0)
        .map(|(_, (_, index, _))| index)
        .chain(stray)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn kind(k: u8) -> Kind {
    Kind::from_wire(k).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]
    #[test]
    fn extension_shapes_keep_every_invariant(ops in prop::collection::vec(op(), 1..50)) {
        let host = host(48, 24, true);
        host.place_as(0x101, Placement::Amd { entries: 512 }).unwrap();
        let cap = ShortfallCap::new(usize::MAX);
        let mut shared = dev(0x100, 8, 24, 24);
        shared.share = Some(10);
        let devices = |base: u16| vec![dev(base, 8, 24, 24), dev(base + 1, 4, 16, 0), dev(base + 2, 0, 0, 32)];
        let mut first = devices(0x100);
        first[0] = shared;
        let make = |devices| {
            let vm = host
                .create_vm_wrapped(config(24, devices), |b| Box::new(Shortfall::new(b, cap.clone())), Box::new(MemoryRoutes::kvm_like()))
                .unwrap();
            vm.set_features(ALL);
            vm
        };
        let vms = [make(first), make(devices(0x200))];
        for op in ops {
            let before = [view(&vms[0]), view(&vms[1])];
            let t = targets(16);
            let (v, reply, alloc_shape) = match op {
                Op::Alloc { vm, dev, kind: k, index, first, min, extra, targeting, spread_over, cap: c } => {
                    let kind = kind(k);
                    let (min, max) = if kind == Kind::Msi {
                        (1 << (min % 3), 1 << (min % 3 + extra % 3))
                    } else {
                        (min, min + extra)
                    };
                    let index = match index {
                        0 => IndexSpec::Any,
                        1 => IndexSpec::AnyContiguous,
                        _ if kind == Kind::Msi => IndexSpec::At(0),
                        _ => IndexSpec::At(first),
                    };
                    let (targeting, n) = match targeting {
                        0 => (Targeting::PerVector, usize::from(max)),
                        1 => (Targeting::Spread, usize::from(spread_over)),
                        _ => (Targeting::Parked, 0),
                    };
                    cap.set(c);
                    let reply = call(&vms[vm], dev, alloc(kind, index, (min, max), targeting, &t[..n]));
                    cap.set(usize::MAX);
                    (vm, reply, Some((dev, kind, index, min, max, targeting, n)))
                }
                Op::Free { vm, dev, pick, kind: k, stray } => {
                    let list = le(&picked(&vms[vm], dev, kind(k), pick, stray));
                    if list.is_empty() {
                        continue;
                    }
                    (vm, call(&vms[vm], dev, listed(kind(k), &list, None)), None)
                }
                Op::Retarget { vm, dev, pick, kind: k, park, apic } => {
                    let list = le(&picked(&vms[vm], dev, kind(k), pick, None));
                    if list.is_empty() {
                        continue;
                    }
                    let to: Vec<Target> = (0..list.len()).map(|i| Target::new(apic, 0x60 + i as u8)).collect();
                    let to = if park { RetargetTo::Park } else { RetargetTo::Targets(&to) };
                    (vm, call(&vms[vm], dev, listed(kind(k), &list, Some(to))), None)
                }
                Op::Reset { vm, dev } => (vm, call(&vms[vm], dev, Operation::Reset), None),
            };
            prop_assert!(!reply.is_empty());
            let response = Response::decode(&reply, ALL)
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            let occ = vms[v].occupancy();
            match response.outcome {
                Outcome::Refused(_) => prop_assert_eq!(&view(&vms[v]), &before[v]),
                Outcome::Allocated { grants, quota_remaining } => {
                    prop_assert_eq!(quota_remaining, occ.quota - occ.held);
                    let Some((dev, kind, index, min, max, targeting, t_len)) = alloc_shape else {
                        return Err(TestCaseError::fail("grants for no ALLOC"));
                    };
                    let n = grants.len();
                    prop_assert!(n >= usize::from(min) && n <= usize::from(max));
                    let records: Vec<_> = vms[v].grants(dev).into_iter().filter(|(k, _, _)| *k == kind).collect();
                    for (i, g) in grants.iter().enumerate() {
                        let record = records.iter().find(|(_, idx, _)| *idx == g.index()).map(|(_, _, r)| *r);
                        let Some(record) = record else {
                            return Err(TestCaseError::fail(format!("grant {} not recorded", g.index())));
                        };
                        prop_assert_eq!(record.message, g.message());
                        prop_assert_eq!(record.mode, g.mode());
                        prop_assert_eq!(g.parked(), record.dest.is_none());
                        let expected = match targeting {
                            Targeting::PerVector => Some(t[i]),
                            Targeting::Spread => spread_position(i, n, t_len).map(|p| t[p]),
                            Targeting::Parked => None,
                        };
                        prop_assert_eq!(record.dest.map(|d| (d.apic_id, d.vector)), expected.map(|t| (t.dest(), t.vector())));
                        if index == IndexSpec::AnyContiguous || kind == Kind::Msi {
                            prop_assert_eq!(g.index(), grants.get(0).unwrap().index() + i as u32);
                        }
                    }
                }
                Outcome::Freed { quota_remaining, .. }
                | Outcome::Retargeted { quota_remaining, .. }
                | Outcome::Reset { quota_remaining, .. }
                | Outcome::Queried { quota_remaining, .. } => prop_assert_eq!(quota_remaining, occ.quota - occ.held),
            }
            vms[v].check_invariants().map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            host.check_invariants().map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(&view(&vms[1 - v]), &before[1 - v]);
        }
    }
}
