//! Opening an assigned device the way a VMM without its own VFIO code would: one
//! container (type1v2 IOMMU), the device's group, the device, through rust-vmm's
//! `vfio-ioctls`. (Linux 6.12 as Debian ships it has no iommufd cdev, so this is the
//! container/group API.)

use super::error::VfioError;
use std::path::Path;
use std::sync::Arc;
use vfio_ioctls::{VfioContainer, VfioDevice};

/// A device opened through VFIO and the container its group is in: the VMM maps guest
/// memory for DMA through the container and reaches BARs through the device.
pub struct OpenedDevice {
    /// The container.
    pub container: Arc<VfioContainer>,
    /// The device.
    pub device: Arc<VfioDevice>,
}

impl std::fmt::Debug for OpenedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedDevice").finish_non_exhaustive()
    }
}

/// Opens the device whose sysfs directory is `sysfs` (`/sys/bus/pci/devices/BDF`, bound
/// to `vfio-pci`). Without interrupt remapping the kernel refuses the IOMMU (`EPERM` from
/// `VFIO_SET_IOMMU`) unless `vfio_iommu_type1` allows unsafe interrupts.
pub fn open_device(sysfs: &Path) -> Result<OpenedDevice, VfioError> {
    let container = Arc::new(VfioContainer::new(None).map_err(VfioError::Container)?);
    let device = VfioDevice::new(sysfs, container.clone(), false).map_err(VfioError::Device)?;
    Ok(OpenedDevice {
        container,
        device: Arc::new(device),
    })
}
