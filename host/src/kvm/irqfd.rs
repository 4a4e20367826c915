//! An eventfd attached to a GSI with `KVM_IRQFD`, detached when dropped.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::error::KvmRouteError;
use super::msi::Gsi;

/// An irqfd registration: writing the eventfd makes KVM deliver the GSI's route.
///
/// It owns the eventfd: the registration can always be undone with the same file, and
/// [`detach`](Self::detach) gives the eventfd back, drained, for another GSI to use.
#[derive(Debug)]
pub(crate) struct Irqfd {
    vm: Arc<VmFd>,
    gsi: Gsi,
    /// Always `Some` while the registration exists; `detach` moves it out.
    fd: Option<EventFd>,
}

impl Irqfd {
    /// Attaches `fd` to `gsi` (`KVM_IRQFD` assign, about 1 µs). On failure `fd` comes back
    /// with the error.
    pub(crate) fn attach(
        vm: &Arc<VmFd>,
        gsi: Gsi,
        fd: EventFd,
    ) -> Result<Self, (KvmRouteError, EventFd)> {
        if let Err(source) = vm.register_irqfd(&fd, gsi.raw()) {
            return Err((KvmRouteError::IrqfdRegister { gsi, source }, fd));
        }
        Ok(Self {
            vm: Arc::clone(vm),
            gsi,
            fd: Some(fd),
        })
    }

    /// Writes the eventfd: KVM delivers the GSI's route.
    pub(crate) fn trigger(&self) -> io::Result<()> {
        match &self.fd {
            Some(fd) => fd.write(1),
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }

    /// Detaches the eventfd (`KVM_IRQFD` deassign, 8–80 µs: it waits for in-flight
    /// injections) and gives it back with its counter drained, so a count left from before
    /// cannot fire whatever GSI it is attached to next (KVM injects at assign time if the
    /// eventfd is already signalled). On failure the registration stays attached and comes
    /// back with the error; dropping it tries again.
    pub(crate) fn detach(mut self) -> Result<EventFd, (Self, KvmRouteError)> {
        let gsi = self.gsi;
        let Some(fd) = self.fd.take() else {
            // Not reachable: only this consuming call takes the eventfd out.
            let source = kvm_ioctls::Error::new(libc::EBADF);
            return Err((self, KvmRouteError::IrqfdUnregister { gsi, source }));
        };
        if let Err(source) = self.vm.unregister_irqfd(&fd, self.gsi.raw()) {
            self.fd = Some(fd);
            return Err((self, KvmRouteError::IrqfdUnregister { gsi, source }));
        }
        drain(&fd);
        Ok(fd)
    }
}

/// Resets an eventfd's counter to zero without blocking, whatever the eventfd's flags: a
/// read only when `poll` says one is ready.
pub(crate) fn drain(fd: &EventFd) {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid `pollfd` that outlives the call, and a zero timeout.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    if ready == 1 && pollfd.revents & libc::POLLIN != 0 {
        // Nothing to do on error: the counter is then either zero or about to be read by
        // whoever else holds the file.
        let _ = fd.read();
    }
}

impl Drop for Irqfd {
    fn drop(&mut self) {
        // Nothing to report to from here; the VM's teardown detaches whatever is left.
        if let Some(fd) = &self.fd {
            let _ = self.vm.unregister_irqfd(fd, self.gsi.raw());
        }
    }
}
