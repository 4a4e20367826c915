//! Moving the VM's pvirq side to another host, as a migration does while the KVM VM itself
//! (memory, vCPUs, the routing table) stays in this process, the way a migration's
//! destination VMM would receive it: the device and its grants are restored on a VM of the
//! destination, its routes rebuilt on the same routing table, and the front and the
//! pass-through devices' interrupts switched over; the source lets go only then.

use super::error::VmmError;
use super::wiring::{HostSink, PvirqFront, SharedTable, pvirq_routes};
use kvm_ioctls::VmFd;
use pvirq_host::device::{MmioRegisters, PvirqDeviceState, RestoreParts};
use pvirq_host::kvm::KvmRoutes;
use pvirq_host::model::ModelHost;
use pvirq_host::snapshot::RestoredGrant;
use pvirq_host::{MmioInterrupt, MmioTransport, NotifyMode, PvirqDevice, Vm, VmConfig};
use std::sync::{Arc, Mutex, PoisonError};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// What a migration carries of the VM's pvirq side: the device with its grants, and the
/// transport's registers.
struct Carried {
    device: PvirqDeviceState,
    registers: MmioRegisters,
    config: VmConfig,
}

/// A front over a fresh VM of `dest` whose device is restored from `carried`, over the
/// same guest memory and the same interrupt line, with routes rebuilt on the VM's own
/// routing table.
fn restored_front(
    dest: &ModelHost,
    carried: &Carried,
    routes: KvmRoutes<SharedTable>,
    mem: &GuestMemoryMmap,
    interrupt: &Arc<MmioInterrupt>,
) -> Result<(Vm, MmioTransport, Vec<RestoredGrant>), VmmError> {
    let vm = dest.create_vm(carried.config.clone(), Box::new(routes))?;
    // The transport needs a device to be built; the restored one replaces it.
    let placeholder = Arc::new(Mutex::new(PvirqDevice::new(vm.clone())?));
    let mut front = MmioTransport::new(
        placeholder,
        GuestMemoryAtomic::new(mem.clone()),
        Arc::clone(interrupt),
        NotifyMode::Inline,
    )?;
    let (mem, interrupt, queue_evts) = front.take_for_restore();
    let parts = RestoreParts {
        mem,
        interrupt,
        queue_evts,
    };
    let (device, report) = PvirqDevice::restore(vm.clone(), &carried.device, parts)?;
    *front
        .device()
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = device;
    front.restore_registers(carried.registers);
    Ok((vm, front, report))
}

/// Moves the VM's pvirq device and grants from the host it runs on to `dest`, as a
/// migration does while the KVM VM itself (memory, vCPUs, the routing table) stays:
/// the device is paused and saved; a VM of `dest` with the same configuration gets the
/// device restored, every grant re-reserved through `dest`'s backends, its routes rebuilt
/// as [`KvmRoutes`] on `table`; only then does the source release everything
/// (`finish_migration`), the front reach the restored device and the pass-through devices'
/// interrupts go through `dest`. The restored device resumes: it looks at the request
/// queue once and writes the REPROGRAM and REVOKE events. If the destination refuses, the
/// source resumes as if nothing had happened. Returns the new VM and each grant's fate.
pub fn migrate(
    front: &PvirqFront,
    sink: &HostSink,
    table: &SharedTable,
    vm_fd: Arc<VmFd>,
    mem: &GuestMemoryMmap,
    dest: &ModelHost,
) -> Result<(Vm, Vec<RestoredGrant>), VmmError> {
    let source = Arc::clone(front.front().device());
    let carried = {
        let registers = front.front().registers();
        let mut device = source.lock().unwrap_or_else(PoisonError::into_inner);
        device.pause();
        Carried {
            device: device.save(),
            registers,
            config: (*device.vm().config()).clone(),
        }
    };
    let restored = pvirq_routes(vm_fd, table, carried.config.quota)
        .and_then(|routes| restored_front(dest, &carried, routes, mem, front.interrupt()));
    let mut source = source.lock().unwrap_or_else(PoisonError::into_inner);
    let (vm, restored, report) = match restored {
        Ok(done) => done,
        Err(e) => {
            source.resume();
            return Err(e);
        }
    };
    // The destination holds everything: the source lets go ([DEV-28]).
    source.finish_migration();
    drop(source);
    let old = std::mem::replace(&mut *front.front(), restored);
    sink.set_host(dest.clone());
    front.with_device(|device| {
        device.resume();
        device.process_all();
    });
    // The source's device and VM go last: its routes' GSIs go back to the table.
    drop(old);
    Ok((vm, report))
}
