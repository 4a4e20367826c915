//! Every call the VMM makes into `pvirq_host`, in one place (the host core is being
//! redesigned; porting the VMM means porting this file).
//!
//! - [`SharedRoutes`]: the VM's one KVM route layer, shared between pvirq (through the
//!   host's `Vm`) and the VMM's own routes (the trapped flow builds one per unmasked entry,
//!   as QEMU does with `kvm_irqchip_add_msi_route` + `kvm_irqchip_commit_routes`).
//! - [`vm_routes`]: the route table with the VMM's fixed routes (the pvirq device's
//!   used-buffer interrupt, the benchmark's plain irqfd) made before pvirq's layer owns it.
//! - [`PvirqFront`]: the pvirq virtio-mmio front on the MMIO bus.
//! - [`HostSink`]: where pass-through devices' interrupts go (the host's remapping check,
//!   then the grant's irqfd; or the VMM's route).

use super::bar::InterruptSink;
use super::error::VmmError;
use kvm_ioctls::VmFd;
use pvirq_guest_image_abi::layout::{PLAIN_IRQFD_VECTOR, PVIRQ_VECTOR};
use pvirq_host::kvm::{KvmRouteTable, KvmRoutes};
use pvirq_host::layers::{GuestDest, RouteId, RouteLayer};
use pvirq_host::{
    Host, LayerError, MmioInterrupt, MmioTransport, NotifyMode, PvirqDevice, Vm, VmConfig,
};
use pvirq_proto::{CompatMsi, MsiMessage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use vm_device::DeviceMmio;
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// The VM's KVM route layer, shared by the host's `Vm` and the VMM. It also times every
/// commit (`KVM_SET_GSI_ROUTING` and its bookkeeping), so a benchmark can say where the
/// time of a request went.
#[derive(Clone, Debug)]
pub struct SharedRoutes {
    layer: Arc<Mutex<KvmRoutes>>,
    commit_nanos: Arc<AtomicU64>,
}

impl SharedRoutes {
    fn lock(&self) -> MutexGuard<'_, KvmRoutes> {
        self.layer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Routing commits so far (pvirq's and the VMM's).
    pub fn commits(&self) -> u64 {
        self.lock().counters().commits()
    }

    /// Time spent committing so far.
    pub fn commit_time(&self) -> Duration {
        Duration::from_nanos(self.commit_nanos.load(Ordering::Relaxed))
    }
}

impl RouteLayer for SharedRoutes {
    fn available(&self) -> u32 {
        self.lock().available()
    }
    fn stage_add(&mut self, dest: GuestDest) -> Result<RouteId, LayerError> {
        self.lock().stage_add(dest)
    }
    fn stage_update(&mut self, id: RouteId, dest: GuestDest) -> Result<(), LayerError> {
        self.lock().stage_update(id, dest)
    }
    fn stage_remove(&mut self, id: RouteId) -> Result<(), LayerError> {
        self.lock().stage_remove(id)
    }
    fn commit(&mut self) -> Result<(), LayerError> {
        let start = Instant::now();
        let result = self.lock().commit();
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.commit_nanos.fetch_add(nanos, Ordering::Relaxed);
        result
    }
    fn abort(&mut self) {
        self.lock().abort()
    }
    fn route(&self, id: RouteId) -> Option<GuestDest> {
        self.lock().route(id)
    }
    fn live(&self) -> u32 {
        self.lock().live()
    }
    fn fire(&mut self, id: RouteId) -> Result<(), LayerError> {
        self.lock().fire(id)
    }
}

/// The VM's routes: pvirq's layer plus the VMM's fixed lines.
#[derive(Debug)]
pub struct VmRoutes {
    /// The shared layer.
    pub routes: SharedRoutes,
    /// Writing it raises the pvirq device's used-buffer interrupt (vCPU 0, [`PVIRQ_VECTOR`]).
    pub pvirq_line: EventFd,
    /// Writing it raises [`PLAIN_IRQFD_VECTOR`] on vCPU 0: an irqfd with no pvirq in the path.
    pub plain_line: EventFd,
}

/// Builds the VM's route table: the VMM's two fixed MSI routes with their irqfds first
/// (committed once), then pvirq's layer over it with `eventfds` spare eventfds made now, as
/// a VMM makes them at device setup.
pub fn vm_routes(vm: Arc<VmFd>, eventfds: usize) -> Result<VmRoutes, VmmError> {
    let mut table = KvmRouteTable::new(vm);
    let pvirq = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    let plain = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    let (pvirq_line, plain_line) = (
        pvirq.try_clone().map_err(VmmError::EventFd)?,
        plain.try_clone().map_err(VmmError::EventFd)?,
    );
    let mut batch = table.batch();
    let g = batch.add(CompatMsi::fixed(0, PVIRQ_VECTOR).message())?;
    batch.register_irqfd(g, pvirq)?;
    let g = batch.add(CompatMsi::fixed(0, PLAIN_IRQFD_VECTOR).message())?;
    batch.register_irqfd(g, plain)?;
    batch.commit()?;
    let mut layer = KvmRoutes::new(table);
    let spares = eventfds.min(layer.table().available());
    layer.reserve_eventfds(spares).map_err(VmmError::EventFd)?;
    Ok(VmRoutes {
        routes: SharedRoutes {
            layer: Arc::new(Mutex::new(layer)),
            commit_nanos: Arc::default(),
        },
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
    host: &Host,
    config: VmConfig,
    routes: SharedRoutes,
    mem: GuestMemoryMmap,
    line: EventFd,
) -> Result<(Vm, Arc<PvirqFront>), VmmError> {
    let vm = host.create_vm(config, Box::new(routes))?;
    let interrupt = Arc::new(MmioInterrupt::with_line(line));
    let device = PvirqDevice::new(vm.clone(), interrupt.clone())?;
    let front = MmioTransport::new(
        Arc::new(Mutex::new(device)),
        mem,
        interrupt.clone(),
        NotifyMode::Inline,
    );
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
    host: Host,
    routes: SharedRoutes,
    plain: EventFd,
}

impl HostSink {
    /// A sink delivering through `host` and `routes`, with `plain` as the plain irqfd.
    pub fn new(host: Host, routes: SharedRoutes, plain: EventFd) -> Self {
        HostSink {
            host,
            routes,
            plain,
        }
    }
}

/// The destination a compatibility-format message names (APIC ID = vCPU index here).
fn dest_of(message: MsiMessage) -> Option<GuestDest> {
    let msi = CompatMsi::decode(message).ok()?;
    Some(GuestDest {
        vcpu: msi.dest_id,
        vector: msi.vector,
    })
}

impl InterruptSink for HostSink {
    fn fire(&self, requester_id: u16, message: MsiMessage) -> bool {
        self.host.fire(requester_id, message).is_ok()
    }

    fn route(&self, old: Option<u32>, message: MsiMessage) -> Option<u32> {
        let dest = dest_of(message)?;
        let mut routes = self.routes.clone();
        let id = match old {
            Some(id) => routes.stage_update(id, dest).map(|()| id),
            None => routes.stage_add(dest),
        };
        match id.and_then(|id| routes.commit().map(|()| id)) {
            Ok(id) => Some(id),
            Err(_) => {
                routes.abort();
                old
            }
        }
    }

    fn fire_route(&self, id: u32) -> bool {
        self.routes.clone().fire(id).is_ok()
    }

    fn release(&self, ids: &[u32]) {
        let mut routes = self.routes.clone();
        for id in ids {
            let _ = routes.stage_remove(*id);
        }
        if routes.commit().is_err() {
            routes.abort();
        }
    }

    fn plain(&self) {
        let _ = self.plain.write(1);
    }
}
