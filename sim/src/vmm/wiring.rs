//! Every call the VMM makes into `pvirq_host`, in one place.
//!
//! - [`SharedTable`]: the VM's one KVM routing table, owned by the VMM and shared by its
//!   devices as cloud-hypervisor shares `gsi_msi_routes`: pvirq's routes (through
//!   [`KvmRoutes`] over it, a [`RouteOwner`]), the VMM's fixed lines (the pvirq device's
//!   used-buffer interrupt, the benchmark's plain irqfd), and the trapped flow's routes (one
//!   per unmasked entry, committed on each unmask as QEMU does with
//!   `kvm_irqchip_add_msi_route` + `kvm_irqchip_commit_routes`). It times every commit.
//! - [`vm_routes`]: that table with the fixed lines, and pvirq's layer over it.
//! - [`PvirqFront`]: the pvirq virtio-mmio front on the MMIO bus (both queues: QueueSel,
//!   QueueNotify and the used-buffer interrupt of the request queue and the event queue go
//!   through the one transport and its one interrupt line), and the VMM's operations on
//!   the device behind it.
//! - [`HostSink`]: where pass-through devices' interrupts go (the host's remapping check,
//!   then the grant's irqfd; or the VMM's route), on the host the VM runs on now.

use super::bar::InterruptSink;
use super::error::VmmError;
use kvm_ioctls::VmFd;
use pvirq_guest_image_abi::layout::{PLAIN_IRQFD_VECTOR, PVIRQ_VECTOR};
use pvirq_host::GuestDest;
use pvirq_host::kvm::{Gsi, KvmRouteError, KvmRouteTable, KvmRoutes, RouteOwner, route_message};
use pvirq_host::model::ModelHost;
use pvirq_host::{
    DeviceSpec, HostError, MmioInterrupt, MmioTransport, NotifyMode, PvirqDevice, Vm, VmConfig,
};
use pvirq_proto::{CompatMsi, MsiMessage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};
use vm_device::DeviceMmio;
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// The VM's routing table with every commit timed.
#[derive(Debug)]
pub struct TimedTable {
    table: KvmRouteTable,
    commits: u64,
    commit_time: Duration,
}

impl RouteOwner for TimedTable {
    fn reserve_gsi(&mut self) -> Result<Gsi, KvmRouteError> {
        self.table.reserve_gsi()
    }

    fn release_gsi(&mut self, gsi: Gsi) {
        self.table.release_gsi(gsi)
    }

    fn commit(&mut self, changes: &[(Gsi, Option<MsiMessage>)]) -> Result<(), KvmRouteError> {
        let start = Instant::now();
        let result = self.table.commit(changes);
        self.commit_time += start.elapsed();
        self.commits += 1;
        result
    }
}

/// The VM's routing table, shared by pvirq and the VMM.
pub type SharedTable = Arc<Mutex<TimedTable>>;

fn lock(table: &SharedTable) -> MutexGuard<'_, TimedTable> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Routing commits so far (pvirq's and the VMM's).
pub fn commits(table: &SharedTable) -> u64 {
    lock(table).commits
}

/// Time spent committing so far.
pub fn commit_time(table: &SharedTable) -> Duration {
    lock(table).commit_time
}

/// The VM's routes: the shared table, pvirq's layer over it, and the VMM's fixed lines.
pub struct VmRoutes {
    /// The VM's one routing table.
    pub table: SharedTable,
    /// pvirq's guest routes (GSIs reserved from the table, irqfds registered now).
    pub pvirq: KvmRoutes<SharedTable>,
    /// Writing it raises the pvirq device's used-buffer interrupt (vCPU 0, [`PVIRQ_VECTOR`]).
    pub pvirq_line: EventFd,
    /// Writing it raises [`PLAIN_IRQFD_VECTOR`] on vCPU 0: an irqfd with no pvirq in the path.
    pub plain_line: EventFd,
}

/// A fixed MSI line of the VMM: a GSI of the table, its route and an irqfd.
fn fixed_line(vm: &VmFd, table: &SharedTable, vector: u8) -> Result<EventFd, VmmError> {
    let fd = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    let mut owner = lock(table);
    let gsi = owner.reserve_gsi()?;
    owner.commit(&[(gsi, Some(CompatMsi::fixed(0, vector).message()))])?;
    vm.register_irqfd(&fd, gsi.raw())
        .map_err(|source| KvmRouteError::IrqfdRegister { gsi, source })?;
    Ok(fd)
}

/// pvirq's layer over `table` with irqfds for up to `capacity` routes (as many as the table
/// has left), registered now as a VMM does at device setup.
pub(super) fn pvirq_routes(
    vm: Arc<VmFd>,
    table: &SharedTable,
    capacity: u32,
) -> Result<KvmRoutes<SharedTable>, VmmError> {
    let capacity = capacity.min(u32::try_from(lock(table).table.available()).unwrap_or(u32::MAX));
    Ok(KvmRoutes::new(table.clone(), vm, capacity)?)
}

/// Builds the VM's routing table with the VMM's two fixed lines, then pvirq's layer over
/// it with irqfds for `capacity` routes, registered now as a VMM does at device setup.
pub fn vm_routes(vm: Arc<VmFd>, capacity: u32) -> Result<VmRoutes, VmmError> {
    let table: SharedTable = Arc::new(Mutex::new(TimedTable {
        table: KvmRouteTable::new(vm.clone()),
        commits: 0,
        commit_time: Duration::ZERO,
    }));
    let pvirq_line = fixed_line(&vm, &table, PVIRQ_VECTOR)?;
    let plain_line = fixed_line(&vm, &table, PLAIN_IRQFD_VECTOR)?;
    let pvirq = pvirq_routes(vm, &table, capacity)?;
    Ok(VmRoutes {
        table,
        pvirq,
        pvirq_line,
        plain_line,
    })
}

/// The pvirq virtio-mmio front on the bus. QueueNotify is handled inline: the notifying
/// vCPU's exit processes the queue, so a request costs the guest one exit.
pub struct PvirqFront {
    front: Mutex<MmioTransport>,
    interrupt: Arc<MmioInterrupt>,
}

impl PvirqFront {
    /// Used-buffer and config interrupts the device raised.
    pub fn interrupts(&self) -> u64 {
        self.interrupt.raised()
    }

    /// The interrupt (its line reaches the guest; a restored device raises the same).
    pub(super) fn interrupt(&self) -> &Arc<MmioInterrupt> {
        &self.interrupt
    }

    /// The transport (the migration swaps it for the destination's).
    pub(super) fn front(&self) -> MutexGuard<'_, MmioTransport> {
        self.front.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the device behind the front: the VMM's operations while the VM runs
    /// (quota, shares, devices added and removed), each of which raises the configuration
    /// interrupt and writes the events it makes into the event queue.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut PvirqDevice) -> R) -> R {
        let device = Arc::clone(self.front().device());
        let mut device = device.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut device)
    }

    /// Sets the VM's quota.
    pub fn set_quota(&self, quota: u32) {
        self.with_device(|d| d.set_quota(quota));
    }

    /// Sets device `handle`'s share (`None`: the quota bounds it).
    pub fn set_device_share(&self, handle: u32, share: Option<u32>) -> Result<(), HostError> {
        self.with_device(|d| d.set_device_share(handle, share))
    }

    /// Other VMs released shared host resources.
    pub fn resources_changed(&self) {
        self.with_device(|d| d.resources_changed());
    }

    /// Assigns the device `spec` describes, attached on `host` to the VM `vm` (which runs
    /// there); its handle.
    pub fn add_device(&self, host: &ModelHost, vm: &Vm, spec: DeviceSpec) -> Result<u32, VmmError> {
        let id = host.vm_id(vm).ok_or(VmmError::NotOnHost)?;
        let backend = host.attach(id, spec.requester_id)?;
        Ok(self.with_device(|d| d.add_device(spec, Box::new(backend)))?)
    }

    /// Removes assigned device `handle`; its backend, dropped here, gives its requester ID
    /// back to the host.
    pub fn remove_device(&self, handle: u32) -> Result<(), HostError> {
        self.with_device(|d| d.remove_device(handle)).map(drop)
    }
}

impl DeviceMmio for PvirqFront {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.front
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read(offset, data);
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.front
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(offset, data);
    }
}

/// Creates the VM on `host` and its pvirq device behind a virtio-mmio front over `mem`,
/// raising its interrupt on `line`.
pub fn pvirq_device(
    host: &ModelHost,
    config: VmConfig,
    routes: KvmRoutes<SharedTable>,
    mem: GuestMemoryMmap,
    line: EventFd,
) -> Result<(Vm, Arc<PvirqFront>), VmmError> {
    let vm = host.create_vm(config, Box::new(routes))?;
    let interrupt = Arc::new(MmioInterrupt::with_line(line));
    let device = PvirqDevice::new(vm.clone())?;
    let front = MmioTransport::new(
        Arc::new(Mutex::new(device)),
        GuestMemoryAtomic::new(mem),
        interrupt.clone(),
        NotifyMode::Inline,
    )?;
    Ok((
        vm,
        Arc::new(PvirqFront {
            front: Mutex::new(front),
            interrupt,
        }),
    ))
}

/// Where pass-through devices' interrupts go.
pub struct HostSink {
    /// The host the VM runs on: another one after a migration.
    host: RwLock<ModelHost>,
    table: SharedTable,
    vm: Arc<VmFd>,
    /// The trapped flow's routes: GSI → its irqfd.
    vmm_routes: Mutex<HashMap<u32, EventFd>>,
    plain: EventFd,
}

impl HostSink {
    /// A sink delivering through `host` and, for the trapped flow, the VMM's own routes on
    /// `table`; `plain` is the plain irqfd.
    pub fn new(host: ModelHost, table: SharedTable, vm: Arc<VmFd>, plain: EventFd) -> Self {
        HostSink {
            host: RwLock::new(host),
            table,
            vm,
            vmm_routes: Mutex::default(),
            plain,
        }
    }

    /// The host the VM runs on.
    pub fn host(&self) -> ModelHost {
        self.host
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// From now on the device's interrupts go through `host` (the VM migrated there).
    pub(super) fn set_host(&self, host: ModelHost) {
        *self.host.write().unwrap_or_else(PoisonError::into_inner) = host;
    }

    fn routes(&self) -> MutexGuard<'_, HashMap<u32, EventFd>> {
        self.vmm_routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The destination a compatibility-format message names (APIC ID = vCPU index here).
fn dest_of(message: MsiMessage) -> Option<GuestDest> {
    let msi = CompatMsi::decode(message).ok()?;
    Some(GuestDest {
        apic_id: msi.dest_id,
        vector: msi.vector,
    })
}

impl InterruptSink for HostSink {
    fn fire(&self, requester_id: u16, pasid: Option<u32>, message: MsiMessage) -> bool {
        self.host
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .fire_tagged(requester_id, pasid, message)
            .is_ok()
    }

    /// What an emulated MSI-X table does at unmask: a route for the entry (a new GSI and
    /// its irqfd the first time), committed at once.
    fn route(&self, old: Option<u32>, message: MsiMessage) -> Option<u32> {
        let msi = route_message(dest_of(message)?);
        let mut table = lock(&self.table);
        if let Some(gsi) = old {
            return table
                .commit(&[(Gsi::new(gsi), Some(msi))])
                .ok()
                .map(|()| gsi);
        }
        let gsi = table.reserve_gsi().ok()?;
        let fd = EventFd::new(EFD_NONBLOCK).ok();
        let registered = fd
            .as_ref()
            .is_some_and(|fd| self.vm.register_irqfd(fd, gsi.raw()).is_ok());
        match (fd, registered && table.commit(&[(gsi, Some(msi))]).is_ok()) {
            (Some(fd), true) => {
                self.routes().insert(gsi.raw(), fd);
                Some(gsi.raw())
            }
            (fd, _) => {
                if let Some(fd) = fd.filter(|_| registered) {
                    let _ = self.vm.unregister_irqfd(&fd, gsi.raw());
                }
                table.release_gsi(gsi);
                None
            }
        }
    }

    fn fire_route(&self, id: u32) -> bool {
        self.routes().get(&id).is_some_and(|fd| fd.write(1).is_ok())
    }

    fn release(&self, ids: &[u32]) {
        let changes: Vec<_> = ids.iter().map(|g| (Gsi::new(*g), None)).collect();
        let mut table = lock(&self.table);
        if table.commit(&changes).is_err() {
            return;
        }
        for id in ids {
            if let Some(fd) = self.routes().remove(id) {
                let _ = self.vm.unregister_irqfd(&fd, *id);
            }
            table.release_gsi(Gsi::new(*id));
        }
    }

    fn plain(&self) {
        let _ = self.plain.write(1);
    }
}
