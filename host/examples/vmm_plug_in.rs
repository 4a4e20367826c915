//! How a VMM plugs `pvirq-host` in: one interrupt backend per assigned device, one guest
//! route layer per VM, a [`Vm`] over them, and the virtio device in front of the VM.
//! README.md ("Plugging pvirq-host into a VMM") quotes this file; `cargo test` and
//! `cargo clippy --all-targets` build it, so the sketch there stays true.
//!
//! ```sh
//! cargo run -p pvirq-host --features vfio --example vmm_plug_in
//! cargo run -p pvirq-host --features vfio --example vmm_plug_in -- /sys/bus/pci/devices/0000:00:03.0
//! ```
//!
//! The first runs one ALLOC on the modelled host kernel and, where `/dev/kvm` exists, the
//! same with real KVM routes. With a sysfs path (a device bound to `vfio-pci`, on a host
//! with KVM) it also plugs that device in through VFIO.

use kvm_ioctls::{Kvm, VmFd};
use pvirq_host::kvm::{Gsi, KvmRouteError, KvmRouteTable, KvmRoutes, RouteOwner};
use pvirq_host::model::{ModelConfig, ModelHost};
use pvirq_host::routes::MemoryRoutes;
use pvirq_host::{BufferSink, DeviceSpec, MsiMessage, PvirqDevice, Vm, VmConfig};
use pvirq_proto::{Alloc, Grant, Kind, Operation, Outcome, Request, Response, Target};
use std::error::Error;
use std::sync::{Arc, Mutex};

/// The VM's settings: its quota, vCPUs and one assigned device.
fn config(device: DeviceSpec) -> VmConfig {
    VmConfig {
        quota: 64,
        num_vcpus: 2,
        max_batch: 64,
        devices: vec![device],
        ..VmConfig::default()
    }
}

/// An assigned NIC with a 16-entry MSI-X table.
const NIC: DeviceSpec = DeviceSpec {
    requester_id: 0x0100,
    msi_max: 0,
    msix_table_size: 16,
    ims_slots: 0,
    guest_identity: None,
    share: None,
};

// ---- KVM: the VM's routing table is the VMM's ---------------------------------------------

/// The VMM's own routing table, shared by all its MSI devices. pvirq only reserves GSIs
/// from it and hands it its changes; the table sends them, with every other device's
/// routes, in one `KVM_SET_GSI_ROUTING`. Here it wraps `KvmRouteTable` and counts
/// commits; a VMM's real table holds its other devices' routes as well.
struct VmmRoutingTable {
    table: KvmRouteTable,
    commits: u64,
}

impl RouteOwner for VmmRoutingTable {
    fn reserve_gsi(&mut self) -> Result<Gsi, KvmRouteError> {
        self.table.reserve_gsi()
    }

    fn release_gsi(&mut self, gsi: Gsi) {
        self.table.release_gsi(gsi)
    }

    fn commit(&mut self, changes: &[(Gsi, Option<MsiMessage>)]) -> Result<(), KvmRouteError> {
        self.commits += 1;
        self.table.commit(changes)
    }
}

/// The VMM's table, as its devices share it.
type SharedTable = Arc<Mutex<VmmRoutingTable>>;

/// pvirq's routes over the VMM's table: `quota` GSIs reserved and an irqfd registered on
/// each now, at VM setup, so a request costs one routing commit and no `KVM_IRQFD`.
/// A VMM without a table of its own passes `Arc<Mutex<KvmRouteTable>>` as the owner.
fn kvm_routes(
    vm_fd: &Arc<VmFd>,
    quota: u32,
) -> Result<(SharedTable, KvmRoutes<SharedTable>), KvmRouteError> {
    let table = Arc::new(Mutex::new(VmmRoutingTable {
        table: KvmRouteTable::new(Arc::clone(vm_fd)),
        commits: 0,
    }));
    let routes = KvmRoutes::new(Arc::clone(&table), Arc::clone(vm_fd), quota)?;
    Ok((table, routes))
}

// ---- VFIO: the host kernel owns IRTEs and host vectors ------------------------------------

/// A VM whose device is assigned through VFIO. The VMM keeps a clone of the backend: its
/// trapped MSI-X table emulation asks `VfioBackend::recognise` whether a message the
/// guest wrote is the current grant of its entry. The routes must give eventfd triggers
/// (`KvmRoutes` does: each is its GSI's irqfd, which VFIO then signals).
#[cfg(feature = "vfio")]
struct VfioVm {
    vm: Vm,
    /// Goes on the VMM's virtio transport.
    _device: PvirqDevice,
    /// The VMM's clone, for its table emulation.
    backend: Arc<Mutex<pvirq_host::vfio::VfioBackend>>,
}

#[cfg(feature = "vfio")]
fn vfio_vm<O: RouteOwner + 'static>(
    sysfs: &std::path::Path,
    vm_fd: &Arc<VmFd>,
    table: Arc<Mutex<O>>,
    quota: u32,
) -> Result<VfioVm, Box<dyn Error>> {
    use pvirq_host::vfio::{VfioBackend, open_device};
    // A VMM that already opened the device (container, group, DMA mappings) passes its
    // `VfioDevice`; `open_device` does it with rust-vmm vfio-ioctls for one that has not.
    let opened = open_device(sysfs)?;
    let routes = KvmRoutes::new(Arc::clone(&table), Arc::clone(vm_fd), quota)?;
    let backend = Arc::new(Mutex::new(VfioBackend::for_device(
        opened.device.clone(),
        sysfs,
    )));
    let table_size = backend.lock().map_or(0, |b| b.table_size(Kind::MsiX));
    let spec = DeviceSpec {
        requester_id: 0x0018,
        msi_max: 0,
        msix_table_size: u16::try_from(table_size)?,
        ims_slots: 0, // VFIO has no IMS
        ..DeviceSpec::default()
    };
    let vm = Vm::new(
        config(spec),
        vec![Box::new(Arc::clone(&backend))],
        Box::new(routes),
    )?;
    let device: PvirqDevice = PvirqDevice::new(vm.clone())?; // on the VMM's virtio transport
    Ok(VfioVm {
        vm,
        _device: device,
        backend,
    })
}

// ---- One request, as the virtio device would pass it ----------------------------------------

/// ALLOC of two MSI-X vectors of device 0, one on each vCPU.
fn alloc_two(vm: &Vm) -> Result<Vec<Grant>, Box<dyn Error>> {
    let targets = [Target::new(0, 0x40), Target::new(1, 0x41)];
    let request = Request {
        device: 0,
        tag: 1,
        op: Operation::Alloc(Alloc::any(Kind::MsiX, 2, &targets)),
    };
    let mut bytes = vec![0u8; request.encoded_len()];
    let len = request.encode(&mut bytes)?;
    let mut sink = BufferSink::new(request.max_response_len(vm.features()));
    vm.handle(bytes.get(..len).unwrap_or_default(), &mut sink);
    match Response::decode(sink.bytes(), vm.features())?.outcome {
        Outcome::Allocated { grants, .. } => Ok(grants.iter().map(|g| g.grant()).collect()),
        other => Err(format!("refused: {other:?}").into()),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    // The modelled host kernel: `create_vm` attaches each device (its `ModelBackend`).
    let host = ModelHost::new(&ModelConfig::default())?;
    let vm = host.create_vm(config(NIC), Box::new(MemoryRoutes::kvm_like()))?;
    // The VMM puts the virtio device in front of the VM and activates it from its
    // transport (virtio-mmio: `MmioTransport`; `sim/src/channel.rs` does it in-process).
    let device: PvirqDevice = PvirqDevice::new(vm.clone())?; // on the VMM's virtio transport
    let grants = alloc_two(&vm)?;
    // The assigned device writes the granted message; the modelled remapping unit
    // resolves it and signals the grant's route.
    let delivery = host.fire(NIC.requester_id, grants[0].message());
    println!(
        "model: {} grants on a device of type {}, fired to {:?}, {} delivered",
        grants.len(),
        device.device_type(),
        delivery.map(|d| d.to()),
        host.delivered()
    );

    if !std::path::Path::new(pvirq_host::kvm::KVM_DEVICE).exists() {
        println!("no {}: KVM and VFIO skipped", pvirq_host::kvm::KVM_DEVICE);
        return Ok(());
    }
    let vm_fd = Arc::new(Kvm::new()?.create_vm()?);
    vm_fd.create_irq_chip()?; // irqfds need the in-kernel irqchip
    let quota = config(NIC).quota;
    let (table, routes) = kvm_routes(&vm_fd, quota)?;
    let vm = host.create_vm(
        config(DeviceSpec {
            requester_id: 0x0200,
            ..NIC
        }),
        Box::new(routes),
    )?;
    let grants = alloc_two(&vm)?;
    let commits = table.lock().map(|t| t.commits).unwrap_or(0);
    println!("kvm: {} grants, {commits} routing commit(s)", grants.len());

    #[cfg(feature = "vfio")]
    if let Some(sysfs) = std::env::args().nth(1) {
        let vfio_vm_fd = Arc::new(Kvm::new()?.create_vm()?);
        vfio_vm_fd.create_irq_chip()?;
        // A VMM without a routing table of its own: `KvmRouteTable` is the owner.
        let table = Arc::new(Mutex::new(KvmRouteTable::new(Arc::clone(&vfio_vm_fd))));
        let sysfs = std::path::Path::new(&sysfs);
        let VfioVm { vm, backend, .. } = vfio_vm(sysfs, &vfio_vm_fd, table, quota)?;
        let grants = alloc_two(&vm)?;
        let recognised = backend
            .lock()
            .map(|b| b.recognise(grants[0].message()).is_some())
            .unwrap_or(false);
        println!(
            "vfio: {} grants, first recognised: {recognised}",
            grants.len()
        );
    }
    Ok(())
}
