//! Irqfds registered at VM setup, one per GSI the VM's quota can use.
//!
//! KVM accepts `KVM_IRQFD` for a GSI that has no route yet, and re-reads every irqfd's route
//! on each `KVM_SET_GSI_ROUTING`. So the irqfds are registered once, when the VM is set up,
//! and a request only changes routes: one `KVM_SET_GSI_ROUTING`, no `KVM_IRQFD` (a deassign
//! costs up to ~80 µs here: it waits for in-flight injections). An interrupt signalled on
//! a GSI with no route is consumed by KVM and dropped.

use std::sync::Arc;

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::error::KvmRouteError;
use super::msi::Gsi;

/// One registered irqfd: its GSI and the eventfd KVM watches.
#[derive(Debug)]
pub(super) struct Registered {
    pub(super) gsi: Gsi,
    pub(super) fd: Arc<EventFd>,
}

/// Irqfds registered on a VM, deassigned when dropped.
#[derive(Debug)]
pub(super) struct IrqfdPool {
    vm: Arc<VmFd>,
    pub(super) slots: Vec<Registered>,
}

impl IrqfdPool {
    pub(super) fn new(vm: Arc<VmFd>) -> Self {
        IrqfdPool {
            vm,
            slots: Vec::new(),
        }
    }

    /// Creates an eventfd and registers it as the irqfd of `gsi`.
    pub(super) fn register(&mut self, gsi: Gsi) -> Result<(), KvmRouteError> {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|source| KvmRouteError::EventFd {
            errno: source.raw_os_error().unwrap_or(0),
        })?;
        self.vm
            .register_irqfd(&fd, gsi.raw())
            .map_err(|source| KvmRouteError::IrqfdRegister { gsi, source })?;
        self.slots.push(Registered {
            gsi,
            fd: Arc::new(fd),
        });
        Ok(())
    }
}

impl Drop for IrqfdPool {
    fn drop(&mut self) {
        // Nothing to report to from here; closing the VM detaches whatever is left.
        for slot in &self.slots {
            let _ = self.vm.unregister_irqfd(slot.fd.as_ref(), slot.gsi.raw());
        }
    }
}
