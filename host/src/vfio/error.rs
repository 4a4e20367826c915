//! Errors setting up VFIO (the request path answers with `BackendError`).

/// Why a device could not be opened through VFIO.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// `/dev/vfio/vfio` did not open, or has no type1v2 IOMMU.
    #[error("VFIO container: {0}")]
    Container(#[source] vfio_ioctls::VfioError),
    /// The group or the device did not open (not bound to vfio-pci, group not viable,
    /// no interrupt remapping: `VFIO_SET_IOMMU` gives `EPERM`).
    #[error("VFIO device: {0}")]
    Device(#[source] vfio_ioctls::VfioError),
}
