//! The two things [`super::VfioBackend`] asks of the host kernel, behind a trait so that
//! the same backend runs on a real VFIO device, a failure-injecting wrapper
//! ([`super::FailNth`]) and the unit tests' model of `vfio_pci_intrs.c`.

use super::irq_set::IrqSet;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use vfio_bindings::bindings::vfio::{VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_NORESIZE};
use vfio_ioctls::VfioDevice;
use vmm_sys_util::ioctl::ioctl_with_ptr;
use vmm_sys_util::ioctl_io_nr;

ioctl_io_nr!(
    VFIO_DEVICE_SET_IRQS,
    vfio_bindings::bindings::vfio::VFIO_TYPE as u32,
    vfio_bindings::bindings::vfio::VFIO_BASE + 10
);

/// What `VFIO_DEVICE_GET_IRQ_INFO` says about one IRQ index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqInfo {
    /// How many vectors the index has (the MSI-X table size; MSI: the capability's).
    pub count: u32,
    /// `VFIO_IRQ_INFO_*` flags.
    pub flags: u32,
}

impl IrqInfo {
    /// Whether vectors can signal eventfds (`VFIO_IRQ_INFO_EVENTFD`).
    pub fn eventfd(&self) -> bool {
        self.flags & VFIO_IRQ_INFO_EVENTFD != 0
    }

    /// Whether the enabled set cannot grow (`VFIO_IRQ_INFO_NORESIZE`): without it, the
    /// kernel allocates a host IRQ at any index while MSI-X is enabled (Linux ≥ 6.5).
    pub fn noresize(&self) -> bool {
        self.flags & VFIO_IRQ_INFO_NORESIZE != 0
    }
}

/// The host kernel's side of one device's MSI/MSI-X interrupts.
pub trait IrqHost: Send {
    /// `VFIO_DEVICE_GET_IRQ_INFO` for a VFIO IRQ index; `None` if the device has none.
    fn irq_info(&self, index: u32) -> Option<IrqInfo>;

    /// Issues one `VFIO_DEVICE_SET_IRQS`. `Ok` carries the ioctl's non-negative return
    /// (positive only when a first enable found fewer vectors); `Err` the errno.
    fn set_irqs(&mut self, set: &IrqSet<'_>) -> Result<u32, i32>;
}

/// The real kernel, through the device fd of a [`VfioDevice`] opened by rust-vmm's
/// `vfio-ioctls` (container and group).
#[derive(Clone)]
pub struct VfioDeviceIrqs {
    device: Arc<VfioDevice>,
    /// Reused across calls: no allocation per ioctl once it has grown.
    words: Vec<u32>,
}

impl VfioDeviceIrqs {
    /// Issues the calls on `device`.
    pub fn new(device: Arc<VfioDevice>) -> Self {
        VfioDeviceIrqs {
            device,
            words: Vec::new(),
        }
    }

    /// The device.
    pub fn device(&self) -> &Arc<VfioDevice> {
        &self.device
    }
}

impl std::fmt::Debug for VfioDeviceIrqs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioDeviceIrqs")
            .field("fd", &self.device.as_raw_fd())
            .finish()
    }
}

impl IrqHost for VfioDeviceIrqs {
    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        // vfio-ioctls read every index with VFIO_DEVICE_GET_IRQ_INFO when it opened the
        // device; the values do not change while it is open.
        self.device.get_irq_info(index).map(|irq| IrqInfo {
            count: irq.count,
            flags: irq.flags,
        })
    }

    fn set_irqs(&mut self, set: &IrqSet<'_>) -> Result<u32, i32> {
        set.encode(&mut self.words);
        // SAFETY: `words` holds a complete `struct vfio_irq_set` whose argsz covers the
        // fd array that follows it, u32-aligned; the kernel only reads it.
        let ret = unsafe {
            ioctl_with_ptr(
                self.device.as_ref(),
                VFIO_DEVICE_SET_IRQS(),
                self.words.as_ptr(),
            )
        };
        u32::try_from(ret).map_err(|_| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn set_irqs_request_number_is_the_kernels() {
        // _IO(';', 100 + 10) from include/uapi/linux/vfio.h.
        assert_eq!(super::VFIO_DEVICE_SET_IRQS(), 0x3b6e);
    }
}
