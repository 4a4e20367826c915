//! `GuestVm`: one scenario VM as a real KVM VM whose guest code does everything — the pvirq
//! driver on vCPU 0 at CPL 3, pass-through devices on the bus, pvirq's routes with irqfds.

use super::bar::{BarConfig, BarSnapshot, PassthroughBar, TableMode, table_region};
use super::error::VmmError;
use super::exits::ExitSnapshot;
use super::mailbox::{Command, Report};
use super::null::NullDevice;
use super::poller::Poller;
use super::wiring::{self, HostSink, PvirqFront, SharedTable};
use super::{Machine, MachineBuilder};
use pvirq_guest_image_abi::device::MSIX_TABLE_SIZE;
use pvirq_guest_image_abi::layout::{
    DEVICE_BAR_SIZE, MAX_DEVICES, Mode, NULL_MMIO, NULL_MMIO_SIZE, PVIRQ_MMIO, PVIRQ_MMIO_SIZE,
    device_bar,
};
use pvirq_guest_image_abi::mailbox::{Op, RESULT_WORDS};
use pvirq_host::model::ModelHost;
use pvirq_host::{Vm, VmConfig};
use std::sync::Arc;
use std::time::Duration;

/// Guest RAM of a scenario VM.
pub const GUEST_VM_MEM: usize = 16 << 20;

/// What to build.
#[derive(Clone, Debug)]
pub struct GuestVmConfig {
    /// vCPUs.
    pub vcpus: usize,
    /// RAM bytes.
    pub mem_size: usize,
    /// The VM as pvirq knows it: quota, vCPUs, batch limit and its assigned devices.
    pub vm: VmConfig,
    /// One BAR per device: BAR `i` is pvirq device handle `i` for `i < vm.devices.len()`;
    /// the rest are devices pvirq does not know (the trapped flow's).
    pub bars: Vec<BarConfig>,
}

/// A running scenario VM.
pub struct GuestVm {
    machine: Machine,
    vm: Vm,
    front: Arc<PvirqFront>,
    bars: Vec<Arc<PassthroughBar>>,
    routes: SharedTable,
    last: Option<Report>,
    _poller: Poller,
}

impl std::fmt::Debug for GuestVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestVm")
            .field("vm", &self.vm)
            .field("bars", &self.bars.len())
            .finish_non_exhaustive()
    }
}

/// How many output-list words a report of `op` carries.
fn list_words(op: Op) -> impl Fn(&[u32; RESULT_WORDS]) -> usize {
    move |r| match op {
        Op::Alloc => 4 * r[0] as usize,
        Op::Fire => 3 * r[4] as usize,
        _ => 0,
    }
}

impl GuestVm {
    /// Builds the VM on `host`, boots the image in driver mode and waits for its first
    /// report. The channel is not up until [`Op::Init`].
    pub fn new(host: &ModelHost, config: GuestVmConfig) -> Result<GuestVm, VmmError> {
        if config.bars.len() > MAX_DEVICES {
            return Err(VmmError::BadReport("too many devices for the layout"));
        }
        let extra: Vec<_> = config
            .bars
            .iter()
            .enumerate()
            .filter(|(_, b)| b.table == TableMode::Memory && b.msix_entries > 0)
            .map(|(i, _)| table_region(device_bar(i)))
            .collect();
        const { assert!(MSIX_TABLE_SIZE < DEVICE_BAR_SIZE) };
        let mut builder = MachineBuilder::new(config.vcpus, config.mem_size, Mode::Driver, &extra)?;
        let lines = wiring::vm_routes(builder.vm_fd(), config.vm.quota)?;
        let (vm, front) = wiring::pvirq_device(
            host,
            config.vm.clone(),
            lines.pvirq,
            builder.mem().clone(),
            lines.pvirq_line,
        )?;
        builder.add_mmio(PVIRQ_MMIO, PVIRQ_MMIO_SIZE, front.clone())?;
        builder.add_mmio(NULL_MMIO, NULL_MMIO_SIZE, Arc::new(NullDevice))?;
        let sink = Arc::new(HostSink::new(
            host.clone(),
            lines.table.clone(),
            builder.vm_fd(),
            lines.plain_line,
        ));
        let mut bars = Vec::with_capacity(config.bars.len());
        for (i, bar) in config.bars.iter().enumerate() {
            let device = Arc::new(PassthroughBar::new(
                *bar,
                device_bar(i),
                builder.mem().clone(),
                sink.clone(),
            )?);
            // A memory table is RAM to KVM: only the registers and the PBA exit.
            builder.add_mmio(device_bar(i), DEVICE_BAR_SIZE, device.clone())?;
            bars.push(device);
        }
        let poller = Poller::start(bars.clone()).map_err(VmmError::Spawn)?;
        let machine = builder.start()?;
        Ok(GuestVm {
            machine,
            vm,
            front,
            bars,
            routes: lines.table,
            last: None,
            _poller: poller,
        })
    }

    /// Runs `command` in the guest; waits at most `timeout`.
    pub fn command(&mut self, command: &Command, timeout: Duration) -> Result<Report, VmmError> {
        let report = self
            .machine
            .command(command, timeout, list_words(command.op))?;
        self.last = Some(report.clone());
        Ok(report)
    }

    /// The last report the guest gave.
    pub fn last_report(&self) -> Option<&Report> {
        self.last.as_ref()
    }

    /// The host's view of the VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Exits so far.
    pub fn exits(&self) -> ExitSnapshot {
        self.machine.exits()
    }

    /// The counters of device `index`'s BAR.
    pub fn bar(&self, index: usize) -> Option<BarSnapshot> {
        self.bars.get(index).map(|b| b.counters())
    }

    /// Every BAR's counters added up.
    pub fn bars_total(&self) -> BarSnapshot {
        self.bars.iter().fold(BarSnapshot::default(), |t, b| {
            let c = b.counters();
            BarSnapshot {
                rung: t.rung + c.rung,
                delivered: t.delivered + c.delivered,
                blocked: t.blocked + c.blocked,
                held_pending: t.held_pending + c.held_pending,
                sent_pending: t.sent_pending + c.sent_pending,
                commits: t.commits + c.commits,
            }
        })
    }

    /// Interrupts the pvirq device raised (used buffers).
    pub fn pvirq_interrupts(&self) -> u64 {
        self.front.interrupts()
    }

    /// Routing commits so far (pvirq's and the trapped flow's).
    pub fn route_commits(&self) -> u64 {
        wiring::commits(&self.routes)
    }

    /// Time spent in routing commits so far.
    pub fn route_commit_time(&self) -> Duration {
        wiring::commit_time(&self.routes)
    }

    /// Interrupts the guest's handler counted on (`vcpu`, `vector`).
    pub fn count(&self, vcpu: usize, vector: u8) -> u64 {
        self.machine.count(vcpu, vector)
    }

    /// Asks the guest to stop and joins its vCPUs.
    pub fn shutdown(mut self) -> Result<(), VmmError> {
        let _ = self.machine.command(
            &Command::new(Op::Shutdown, &[]),
            Duration::from_secs(5),
            |_| 0,
        );
        self.machine.stop()
    }
}
