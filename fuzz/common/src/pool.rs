//! Target `pool_model`: sequences of QUERY / ALLOC / FREE / RETARGET / RESET (and virtio
//! resets and device interrupts) from several VMs against one small pool, compared step by
//! step with the reference model of `pvirq_tests::model`; everything must be released
//! after the final reset.

use crate::wire_struct;
use pvirq_host::DeviceSpec;
use pvirq_proto::{IndexRange, IndexSpec, Kind, Target, feature};
use pvirq_tests::model::{HostShape, Scenario, Step, VmShape};

/// Most VMs, devices per VM and steps an input may describe.
const MAX_VMS: usize = 3;
const MAX_DEVICES: usize = 3;
const MAX_STEPS: usize = 256;
const MSI_SIZES: [u16; 7] = [0, 1, 2, 4, 8, 16, 32];

wire_struct! {
    /// One device of a VM.
    pub struct DeviceIn {
        /// Remapping unit (modulo the host's).
        pub unit: u8,
        /// MSI block size, as an index into 0, 1, 2, … 32.
        pub msi: u8,
        /// MSI-X table size (modulo 33).
        pub msix: u8,
        /// IMS slots (modulo 33).
        pub ims: u8,
    }
}

wire_struct! {
    /// One VM.
    pub struct VmIn {
        /// Quota (modulo 65).
        pub quota: u8,
        /// vCPUs (1 + modulo 4).
        pub vcpus: u8,
        /// `max_batch` (1 + the byte; 0xFF: 4096).
        pub max_batch: u8,
        /// Negotiated features: bits 0–4 are MSI, MSI-X, IMS, PASID, RETARGET, each
        /// cleared when set here.
        pub features_off: u8,
        /// Guest routes (1 + the byte).
        pub routes: u8,
        /// Devices (the first three).
        pub devices: Vec<DeviceIn>,
    }
}

wire_struct! {
    /// One step.
    pub struct StepIn {
        /// Operation: QUERY, ALLOC, FREE, RETARGET, RESET, virtio reset, fire (modulo 7).
        pub op: u8,
        /// VM (modulo their number).
        pub vm: u8,
        /// Device handle as sent.
        pub device: u8,
        /// Kind (modulo 3).
        pub kind: u8,
        /// Bit 0: ANY_INDEX; bit 1: a PASID.
        pub flags: u8,
        /// First index (or fire: message pick).
        pub first: u32,
        /// Min count (or FREE/RETARGET count; fire: source pick).
        pub min: u8,
        /// Max count.
        pub max: u8,
        /// PASID.
        pub pasid: u32,
        /// Targets: `(vcpu, vector)`.
        pub targets: Vec<(u8, u8)>,
    }
}

wire_struct! {
    /// A whole `pool_model` input.
    pub struct PoolInput {
        /// Units (1 + modulo 2).
        pub units: u8,
        /// IRTEs per unit (4 + the byte).
        pub entries: u8,
        /// Host CPUs (1 + modulo 2).
        pub cpus: u8,
        /// Host vectors per CPU (1 + modulo 48).
        pub vectors: u8,
        /// VMs (the first three).
        pub vms: Vec<VmIn>,
        /// Steps (the first 256).
        pub steps: Vec<StepIn>,
    }
}

fn kind(byte: u8) -> Kind {
    match byte % 3 {
        0 => Kind::Msi,
        1 => Kind::MsiX,
        _ => Kind::Ims,
    }
}

fn targets(raw: &[(u8, u8)]) -> Vec<Target> {
    raw.iter()
        .map(|(vcpu, vector)| Target::new(u32::from(*vcpu), *vector))
        .collect()
}

impl PoolInput {
    /// The scenario this input describes (always a valid configuration).
    pub fn scenario(&self) -> Scenario {
        let units = 1 + u16::from(self.units % 2);
        let host = HostShape {
            units,
            entries_per_unit: 4 + u32::from(self.entries),
            cpus: 1 + u32::from(self.cpus % 2),
            vectors_per_cpu: 1 + self.vectors % 48,
        };
        let vms = self
            .vms
            .iter()
            .take(MAX_VMS)
            .enumerate()
            .map(|(v, vm)| VmShape {
                quota: u32::from(vm.quota % 65),
                num_vcpus: 1 + u32::from(vm.vcpus % 4),
                max_batch: if vm.max_batch == 0xFF {
                    4096
                } else {
                    1 + u16::from(vm.max_batch)
                },
                features: feature::V1 & !u64::from(vm.features_off & 0x1F),
                routes: 1 + u32::from(vm.routes),
                units: vm
                    .devices
                    .iter()
                    .take(MAX_DEVICES)
                    .map(|dev| u16::from(dev.unit) % units)
                    .collect(),
                devices: vm
                    .devices
                    .iter()
                    .take(MAX_DEVICES)
                    .enumerate()
                    .map(|(d, dev)| DeviceSpec {
                        requester_id: 0x100 * (v as u16 + 1) + d as u16,
                        msi_max: MSI_SIZES[usize::from(dev.msi) % MSI_SIZES.len()],
                        msix_table_size: u16::from(dev.msix % 33),
                        ims_slots: u32::from(dev.ims % 33),
                        ..DeviceSpec::default()
                    })
                    .collect(),
            })
            .collect();
        let steps = self.steps.iter().take(MAX_STEPS).map(step).collect();
        Scenario { host, vms, steps }
    }
}

fn step(s: &StepIn) -> Step {
    let (vm, device) = (usize::from(s.vm), u32::from(s.device));
    let range = IndexRange {
        kind: kind(s.kind),
        first: s.first,
        count: u16::from(s.min),
    };
    match s.op % 7 {
        0 => Step::Query { vm, device },
        1 => Step::Alloc {
            vm,
            device,
            kind: kind(s.kind),
            index: if s.flags & 1 == 1 {
                IndexSpec::Any
            } else {
                IndexSpec::At(s.first)
            },
            min: u16::from(s.min),
            max: u16::from(s.max),
            pasid: (s.flags & 2 == 2).then_some(s.pasid),
            targets: targets(&s.targets),
        },
        2 => Step::Free { vm, device, range },
        3 => Step::Retarget {
            vm,
            device,
            range,
            targets: targets(&s.targets),
        },
        4 => Step::Reset { vm, device },
        5 => Step::ResetVm { vm },
        _ => Step::Fire {
            source: usize::from(s.min),
            message: s.first as usize,
        },
    }
}

/// Runs one input: any disagreement with the model, or a leak after the final reset, is
/// a crash.
pub fn run(input: &PoolInput) {
    let scenario = input.scenario();
    if let Err(e) = pvirq_tests::model::run(&scenario) {
        panic!("host and model disagree: {e}");
    }
}

/// Representative inputs: the seeds of the corpus.
pub fn seeds() -> Vec<PoolInput> {
    let dev = |msi, msix, ims| DeviceIn {
        unit: 0,
        msi,
        msix,
        ims,
    };
    let vm = |quota, devices| VmIn {
        quota,
        vcpus: 1,
        max_batch: 15,
        features_off: 0,
        routes: 40,
        devices,
    };
    let st = |op, vm, device, kind, flags, first, min, max| StepIn {
        op,
        vm,
        device,
        kind,
        flags,
        first,
        min,
        max,
        pasid: 7,
        targets: vec![(0, 0x40), (1, 0x41)],
    };
    let base = PoolInput {
        units: 1,
        entries: 28,
        cpus: 0,
        vectors: 20,
        vms: vec![
            vm(16, vec![dev(4, 8, 8), dev(3, 16, 0)]),
            vm(24, vec![dev(5, 16, 16)]),
        ],
        steps: vec![],
    };
    let scripts: Vec<Vec<StepIn>> = vec![
        // Query, allocate every kind, fire, free, retarget, reset.
        vec![
            st(0, 0, 0, 0, 0, 0, 0, 0),
            st(1, 0, 0, 1, 1, 0, 2, 4),
            st(1, 0, 0, 0, 1, 0, 1, 8),
            st(1, 0, 0, 2, 3, 0, 1, 2),
            st(6, 0, 0, 0, 0, 1, 0, 0),
            st(6, 0, 0, 0, 0, 0, 2, 0),
            st(3, 0, 0, 1, 0, 0, 2, 0),
            st(2, 0, 0, 1, 0, 0, 2, 0),
            st(4, 0, 0, 0, 0, 0, 0, 0),
        ],
        // Two VMs race for a small pool until NO_SPACE, then a virtio reset.
        vec![
            st(1, 0, 1, 1, 1, 0, 1, 16),
            st(1, 1, 0, 1, 1, 0, 1, 16),
            st(1, 1, 0, 2, 1, 0, 4, 16),
            st(1, 0, 0, 0, 1, 0, 8, 8),
            st(0, 1, 0, 0, 0, 0, 0, 0),
            st(5, 0, 0, 0, 0, 0, 0, 0),
            st(1, 1, 0, 0, 1, 0, 1, 16),
        ],
        // Refusals: fixed indices in use and out of range, not granted, no device.
        vec![
            st(1, 0, 0, 1, 0, 2, 2, 2),
            st(1, 0, 0, 1, 0, 3, 1, 1),
            st(1, 0, 0, 1, 0, 7, 2, 2),
            st(2, 0, 0, 1, 0, 1, 3, 0),
            st(3, 0, 0, 2, 0, 0, 1, 0),
            st(0, 0, 9, 0, 0, 0, 0, 0),
        ],
    ];
    let mut seeds: Vec<PoolInput> = scripts
        .into_iter()
        .map(|steps| PoolInput {
            steps,
            ..base.clone()
        })
        .collect();
    // Features off (no RETARGET, no PASID, no MSI) and a tight quota.
    let mut tight = seeds[0].clone();
    tight.vms[0].features_off = 0b11001;
    tight.vms[0].quota = 3;
    seeds.push(tight);
    seeds
}
