//! The benchmark VM: one KVM VM with three pass-through devices, so every flow runs in the
//! same VM, in the same run.
//!
//! | BAR | known to pvirq | MSI-X table | flow |
//! |---|---|---|---|
//! | 0 | yes (handle 0) | memory (no exits) | pvirq |
//! | 1 | yes (handle 1) | trapped | pvirq |
//! | 2 | no | trapped | the trapped flow: a route + commit per unmask, as QEMU does |

use super::bar::{BarConfig, Flow, TableMode};
use super::error::VmmError;
use super::{GUEST_VM_MEM, GuestVm, GuestVmConfig};
use pvirq_host::model::{ModelConfig, ModelHost};
use pvirq_host::model::{RemapConfig, VectorConfig};
use pvirq_host::{DeviceSpec, VmConfig};

/// MSI-X entries of each benchmark device.
pub const BENCH_ENTRIES: u32 = 2048;
/// IMS slots of the pvirq devices.
pub const BENCH_IMS: u32 = 1024;
/// Handle/BAR of the pvirq device with an untrapped table.
pub const PVIRQ_MEMORY: u32 = 0;
/// Handle/BAR of the pvirq device with a trapped table.
pub const PVIRQ_TRAPPED: u32 = 1;
/// BAR of the device of the trapped flow.
pub const TRAPPED_FLOW: u32 = 2;

/// A host large enough for 1,024 vectors at once.
pub fn bench_host() -> Result<ModelHost, VmmError> {
    Ok(ModelHost::new(&ModelConfig {
        remap: RemapConfig {
            units: 1,
            entries_per_unit: 65_536,
        },
        vectors: VectorConfig {
            cpus: 8,
            first: 0x20,
            end: 0xEC,
            reserved: vec![0x80],
        },
        ..ModelConfig::default()
    })?)
}

/// The benchmark VM on `host`, two vCPUs.
pub fn bench_vm(host: &ModelHost) -> Result<GuestVm, VmmError> {
    let spec = |requester_id| DeviceSpec {
        requester_id,
        msi_max: 0,
        msix_table_size: BENCH_ENTRIES as u16,
        ims_slots: BENCH_IMS,
        ..DeviceSpec::default()
    };
    let bar = |requester_id, table, flow| BarConfig {
        requester_id,
        msix_entries: BENCH_ENTRIES,
        ims_slots: if flow == Flow::Pvirq { BENCH_IMS } else { 0 },
        table,
        flow,
    };
    GuestVm::new(
        host,
        GuestVmConfig {
            vcpus: 2,
            mem_size: GUEST_VM_MEM,
            vm: VmConfig {
                quota: 1024,
                num_vcpus: 2,
                max_batch: 256,
                devices: vec![spec(0x0100), spec(0x0200)],
                ..VmConfig::default()
            },
            bars: vec![
                bar(0x0100, TableMode::Memory, Flow::Pvirq),
                bar(0x0200, TableMode::Trapped, Flow::Pvirq),
                bar(0x0300, TableMode::Trapped, Flow::Trapped),
            ],
        },
    )
}
