//! An eventfd attached to a GSI with `KVM_IRQFD`, detached when dropped.

use std::sync::Arc;

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::error::KvmRouteError;
use super::msi::Gsi;

/// An irqfd registration: writing the eventfd makes KVM deliver the GSI's route.
///
/// It holds its own duplicate of the caller's eventfd, so the registration can always be
/// undone with the same file, however the caller's copy is used.
#[derive(Debug)]
pub(crate) struct Irqfd {
    vm: Arc<VmFd>,
    gsi: Gsi,
    fd: EventFd,
    attached: bool,
}

impl Irqfd {
    /// Attaches a duplicate of `fd` to `gsi` (`KVM_IRQFD` assign, about 1 µs).
    pub(crate) fn register(vm: &Arc<VmFd>, gsi: Gsi, fd: &EventFd) -> Result<Self, KvmRouteError> {
        let fd = fd
            .try_clone()
            .map_err(|source| KvmRouteError::EventFdDup { gsi, source })?;
        vm.register_irqfd(&fd, gsi.raw())
            .map_err(|source| KvmRouteError::IrqfdRegister { gsi, source })?;
        Ok(Self {
            vm: Arc::clone(vm),
            gsi,
            fd,
            attached: true,
        })
    }

    /// Detaches the eventfd (`KVM_IRQFD` deassign, about 80 µs: it waits for in-flight
    /// injections). On failure the registration stays attached and `Drop` tries again.
    pub(crate) fn unregister(&mut self) -> Result<(), KvmRouteError> {
        if self.attached {
            self.vm
                .unregister_irqfd(&self.fd, self.gsi.raw())
                .map_err(|source| KvmRouteError::IrqfdUnregister {
                    gsi: self.gsi,
                    source,
                })?;
            self.attached = false;
        }
        Ok(())
    }
}

impl Drop for Irqfd {
    fn drop(&mut self) {
        // Nothing to report to from here; the VM's teardown detaches whatever is left.
        let _ = self.unregister();
    }
}
