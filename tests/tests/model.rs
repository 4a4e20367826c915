//! Long random operation sequences from several VMs, each with several devices, against
//! one small host pool, compared step by step with the reference model
//! (`pvirq_tests::model`): same grants (indices, IRTEs, messages), same refusals with the
//! same reasons and counts, same occupancy, the invariants after every step, and delivery
//! of every granted message to the model's target. At the end every device is reset and
//! the host must hold nothing.
//!
//! The pool is small (tens of IRTEs and host vectors, a few guest routes per VM) so that
//! every NO_SPACE resource is reached, not only the quota.

use proptest::prelude::*;
use pvirq_host::DeviceSpec;
use pvirq_proto::{IndexRange, IndexSpec, Kind, Target, feature};
use pvirq_tests::model::{HostShape, Scenario, Step, VmShape, run};

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Msi), Just(Kind::MsiX), Just(Kind::Ims)]
}

fn targets() -> impl Strategy<Value = Vec<Target>> {
    // vCPU 3 is out of range for most VMs (num_vcpus 1..=3): INVALID_TARGET.
    prop::collection::vec(
        (prop_oneof![12 => 0u32..2, 1 => 0u32..=3], 0x20u8..=0xFF)
            .prop_map(|(c, v)| Target::new(c, v)),
        0..4,
    )
}

fn range() -> impl Strategy<Value = IndexRange> {
    (
        kind(),
        prop_oneof![4 => 0u32..24, 1 => any::<u32>()],
        1u16..=10,
    )
        .prop_map(|(kind, first, count)| IndexRange { kind, first, count })
}

fn step() -> impl Strategy<Value = Step> {
    let vm = 0usize..3;
    let device = prop_oneof![12 => 0u32..2, 2 => Just(2u32), 1 => 3u32..5];
    let index = prop_oneof![3 => Just(IndexSpec::Any), 2 => (0u32..28).prop_map(IndexSpec::At)];
    prop_oneof![
        2 => (vm.clone(), device.clone()).prop_map(|(vm, device)| Step::Query { vm, device }),
        8 => (
            vm.clone(),
            device.clone(),
            kind(),
            index,
            1u16..=8,
            1u16..=12,
            prop::option::weighted(0.2, 0u32..=0xF_FFFF),
            targets(),
        )
            .prop_map(|(vm, device, kind, index, min, max, pasid, targets)| Step::Alloc {
                vm,
                device,
                kind,
                index,
                min,
                max,
                pasid,
                targets,
            }),
        4 => (vm.clone(), device.clone(), range())
            .prop_map(|(vm, device, range)| Step::Free { vm, device, range }),
        2 => (vm.clone(), device.clone(), range(), targets()).prop_map(
            |(vm, device, range, targets)| Step::Retarget {
                vm,
                device,
                range,
                targets,
            }
        ),
        1 => (vm.clone(), device).prop_map(|(vm, device)| Step::Reset { vm, device }),
        1 => vm.prop_map(|vm| Step::ResetVm { vm }),
        3 => (prop_oneof![3 => Just(0usize), 1 => 1usize..10], any::<usize>())
            .prop_map(|(source, message)| Step::Fire { source, message }),
    ]
}

fn device(units: u16) -> impl Strategy<Value = (DeviceSpec, u16)> {
    (
        0..units,
        prop_oneof![
            Just(0u16),
            Just(1),
            Just(2),
            Just(4),
            Just(8),
            Just(16),
            Just(32)
        ],
        prop_oneof![1 => Just(0u16), 3 => 1u16..=24],
        prop_oneof![1 => Just(0u32), 3 => 1u32..=24],
    )
        .prop_map(|(unit, msi_max, msix_table_size, ims_slots)| {
            let spec = DeviceSpec {
                requester_id: 0, // set once the VM's position is known
                msi_max,
                msix_table_size,
                ims_slots,
                ..DeviceSpec::default()
            };
            (spec, unit)
        })
}

fn features() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(feature::V1),
        1 => (0u64..32).prop_map(|bits| bits | feature::VERSION_1),
    ]
}

fn vm_shape(units: u16) -> impl Strategy<Value = VmShape> {
    (
        0u32..=40,
        1u32..=3,
        prop_oneof![1 => 1u16..=4, 4 => 8u16..=16, 2 => Just(64u16)],
        features(),
        2u32..=48,
        prop::collection::vec(device(units), 2..=3),
    )
        .prop_map(
            |(quota, num_vcpus, max_batch, features, routes, devices)| VmShape {
                quota,
                num_vcpus,
                max_batch,
                features,
                routes,
                units: devices.iter().map(|(_, unit)| *unit).collect(),
                devices: devices.into_iter().map(|(spec, _)| spec).collect(),
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1u16..=2, 8u32..=80, 1u32..=2, 4u8..=40)
        .prop_flat_map(|(units, entries_per_unit, cpus, vectors_per_cpu)| {
            (
                Just(HostShape {
                    units,
                    entries_per_unit,
                    cpus,
                    vectors_per_cpu,
                }),
                prop::collection::vec(vm_shape(units), 1..=3),
                prop::collection::vec(step(), 100..400),
            )
        })
        .prop_map(|(host, mut vms, steps)| {
            for (v, vm) in vms.iter_mut().enumerate() {
                for (d, dev) in vm.devices.iter_mut().enumerate() {
                    dev.requester_id = 0x100 * (v as u16 + 1) + d as u16;
                }
            }
            Scenario { host, vms, steps }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_host_behaves_as_the_reference_model(s in scenario()) {
        run(&s).map_err(TestCaseError::fail)?;
    }
}

/// The generator is only as good as what it reaches: over a fixed set of cases, every
/// answer the model can give must have been compared at least once.
#[test]
fn the_generator_reaches_every_answer() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = scenario();
    let mut seen = std::collections::BTreeSet::new();
    let (mut delivered, mut faulted) = (0, 0);
    let mut total = (0, 0);
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..64 {
        let s = strategy.new_tree(&mut runner).unwrap().current();
        let stats = run(&s).unwrap();
        seen.extend(stats.answers);
        for (k, v) in stats.counts {
            *counts.entry(k).or_insert(0) += v;
        }
        total.0 += stats.ok;
        total.1 += stats.refused;
        delivered += stats.delivered;
        faulted += stats.faulted;
    }
    for wanted in [
        "ok",
        "no-space:vm-quota",
        "no-space:device-slots",
        "no-space:irte",
        "no-space:host-vector",
        "no-space:guest-route",
        "batch-too-large",
        "no-device",
        "unsupported:kind",
        "unsupported:pasid",
        "unsupported:opcode",
        "index-out-of-range",
        "index-in-use",
        "not-granted",
        "invalid-target:target-vcpu",
    ] {
        assert!(
            seen.contains(wanted),
            "never reached {wanted}; saw {seen:?}"
        );
    }
    let (ok, refused): (u32, u32) = (total.0, total.1);
    eprintln!("{counts:?}");
    eprintln!(
        "64 cases: {ok} OK, {refused} refused, {delivered} fires delivered, {faulted} faulted"
    );
    assert!(
        delivered > 0 && faulted > 0,
        "fires: {delivered} delivered, {faulted} faulted"
    );
}
