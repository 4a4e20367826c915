//! `GuestVm`: one scenario VM as a real KVM VM whose guest code does everything — the pvirq
//! driver on vCPU 0 at CPL 3, pass-through devices on the bus, pvirq's routes with irqfds —
//! and what its VMM does while it runs: quota and share changes, devices added and removed,
//! a migration of its pvirq side to another host.

use super::bar::{BarConfig, BarSnapshot, Flow, PassthroughBar, TableMode, table_region};
use super::bar_slots::{BarSlots, BarWindow};
use super::error::VmmError;
use super::exits::ExitSnapshot;
use super::mailbox::{Command, Report};
use super::migration;
use super::null::NullDevice;
use super::poller::Poller;
use super::wiring::{self, HostSink, PvirqFront, SharedTable};
use super::{Machine, MachineBuilder};
use pvirq_guest_image_abi::device::MSIX_TABLE_SIZE;
use pvirq_guest_image_abi::layout::{
    DEVICE_BAR_SIZE, MAX_DEVICES, Mode, NULL_MMIO, NULL_MMIO_SIZE, PVIRQ_MMIO, PVIRQ_MMIO_SIZE,
    device_bar,
};
use pvirq_guest_image_abi::mailbox::{EVENT_WORDS, GRANT_WORDS, Op, RESULT_WORDS};
use pvirq_host::model::ModelHost;
use pvirq_host::snapshot::RestoredGrant;
use pvirq_host::{ApicIds, DeviceSpec, Vm, VmConfig};
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
    /// The VM as pvirq knows it: quota, vCPUs (and their APIC IDs, which the KVM VM's
    /// vCPUs get), batch limit and its assigned devices.
    pub vm: VmConfig,
    /// One BAR per device: BAR `i` is pvirq device handle `i` for `i < vm.devices.len()`;
    /// the rest are devices pvirq does not know (the trapped flow's). The layout's other
    /// windows wait for devices added while the VM runs.
    pub bars: Vec<BarConfig>,
}

/// A running scenario VM.
pub struct GuestVm {
    machine: Machine,
    vm: Vm,
    front: Arc<PvirqFront>,
    bars: Arc<BarSlots>,
    sink: Arc<HostSink>,
    routes: SharedTable,
    last: Option<Report>,
    _poller: Poller,
}

impl std::fmt::Debug for GuestVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestVm")
            .field("vm", &self.vm)
            .field("bars", &self.bars.plugged().count())
            .finish_non_exhaustive()
    }
}

/// How many output-list words a report of `op` carries.
fn list_words(op: Op) -> impl Fn(&[u32; RESULT_WORDS]) -> usize {
    move |r| match op {
        Op::Alloc => GRANT_WORDS * r[0] as usize,
        Op::Fire => 3 * r[4] as usize,
        Op::Events => EVENT_WORDS * r[0] as usize,
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
        // A table in memory is RAM to KVM: the devices' now, and every free window's for a
        // device added later.
        let extra: Vec<_> = (0..MAX_DEVICES)
            .filter(|i| {
                config
                    .bars
                    .get(*i)
                    .is_none_or(|b| b.table == TableMode::Memory && b.msix_entries > 0)
            })
            .map(|i| table_region(device_bar(i)))
            .collect();
        const { assert!(MSIX_TABLE_SIZE < DEVICE_BAR_SIZE) };
        let mut builder = MachineBuilder::new(config.vcpus, config.mem_size, Mode::Driver, &extra)?;
        if let ApicIds::Table(ids) = &config.vm.apic_ids {
            builder.set_apic_ids(ids)?;
        }
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
        let bars = Arc::new(BarSlots::new(MAX_DEVICES));
        for i in 0..MAX_DEVICES {
            // A memory table is RAM to KVM: only the registers and the PBA exit.
            let window = Arc::new(BarWindow::new(bars.clone(), i));
            builder.add_mmio(device_bar(i), DEVICE_BAR_SIZE, window)?;
        }
        for (i, bar) in config.bars.iter().enumerate() {
            let device =
                PassthroughBar::new(*bar, device_bar(i), builder.mem().clone(), sink.clone())?;
            bars.plug(i, Arc::new(device));
        }
        let poller = Poller::start(bars.clone()).map_err(VmmError::Spawn)?;
        let machine = builder.start()?;
        Ok(GuestVm {
            machine,
            vm,
            front,
            bars,
            sink,
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

    /// The host the VM's pvirq side runs on (another one after [`GuestVm::migrate`]).
    pub fn host(&self) -> ModelHost {
        self.sink.host()
    }

    /// Sets the VM's quota (the guest is told: configuration interrupt, LIMITS event).
    pub fn set_quota(&self, quota: u32) {
        self.front.set_quota(quota);
    }

    /// Sets device `handle`'s share, `None` for none.
    pub fn set_device_share(&self, handle: u32, share: Option<u32>) -> Result<(), VmmError> {
        Ok(self.front.set_device_share(handle, share)?)
    }

    /// Other VMs released shared host resources (an AVAILABLE event may follow).
    pub fn resources_changed(&self) {
        self.front.resources_changed();
    }

    /// Hot-adds the assigned device `spec` describes: attached on the host the VM runs on,
    /// given to the VM's pvirq device (configuration interrupt, DEVICE_ADDED event), and
    /// plugged into the BAR window of its handle with its MSI-X table in memory. Its handle.
    pub fn add_device(&mut self, spec: DeviceSpec) -> Result<u32, VmmError> {
        let handle = self.front.add_device(&self.sink.host(), &self.vm, spec)?;
        let config = BarConfig {
            requester_id: spec.requester_id,
            msix_entries: u32::from(spec.msix_table_size),
            ims_slots: spec.ims_slots,
            table: TableMode::Memory,
            flow: Flow::Pvirq,
        };
        let window = handle as usize;
        let plugged = (window < MAX_DEVICES)
            .then(|| {
                PassthroughBar::new(
                    config,
                    device_bar(window),
                    self.machine.mem().clone(),
                    self.sink.clone(),
                )
                .ok()
            })
            .flatten()
            .is_some_and(|bar| self.bars.plug(window, Arc::new(bar)));
        if !plugged {
            // No window for it in the layout: the device goes again before the guest sees it.
            self.front.remove_device(handle)?;
            return Err(VmmError::NoBarWindow { handle });
        }
        Ok(handle)
    }

    /// Hot-removes assigned device `handle`: its grants are released (DEVICE_REMOVED event)
    /// and its BAR window is empty from now on.
    pub fn remove_device(&mut self, handle: u32) -> Result<(), VmmError> {
        self.front.remove_device(handle)?;
        self.bars.unplug(handle as usize);
        Ok(())
    }

    /// Moves the VM's pvirq device and grants to `dest`; the KVM VM, its memory and vCPUs
    /// stay. Returns each grant's fate.
    pub fn migrate(&mut self, dest: &ModelHost) -> Result<Vec<RestoredGrant>, VmmError> {
        let (vm, report) = migration::migrate(
            &self.front,
            &self.sink,
            &self.routes,
            self.machine.vm_fd(),
            self.machine.mem(),
            dest,
        )?;
        self.vm = vm;
        Ok(report)
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
        self.bars.total()
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

    /// Interrupts the guest's handler counted on vCPU index `vcpu`, `vector`.
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
