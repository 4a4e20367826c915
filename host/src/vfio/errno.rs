//! What each errno of `VFIO_DEVICE_SET_IRQS` (MSI and MSI-X, `ACTION_TRIGGER`,
//! `DATA_EVENTFD`) means, as a [`BackendError`].
//!
//! Read from Linux 6.12 `drivers/vfio/pci/vfio_pci_intrs.c` (`vfio_pci_set_msi_trigger`,
//! `vfio_msi_enable`, `vfio_msi_set_vector_signal`), `vfio_pci_core.c`
//! (`vfio_set_irqs_validate_and_prepare`), `arch/x86/kernel/apic/vector.c` and the two
//! interrupt-remapping drivers. The table is the spec's (§ "VFIO backend"); keep them equal.
//!
//! | errno | where the kernel returns it | answer |
//! |---|---|---|
//! | `ENOSPC` | x86 vector matrix: no free CPU vector when `request_irq` activates the IRQ; AMD IOMMU: the device's remapping table is full | `Exhausted` host vectors (AMD: IRTEs) |
//! | `ENOMEM` | VT-d `intel_irq_remapping_alloc`: no free IRTE; or a kernel/memcg allocation failed | VT-d: `Exhausted` IRTEs; elsewhere `Errno` |
//! | `EINVAL` | index past the table; MSI index outside the enabled block; MSI-X index past the first enable without dynamic MSI-X; the other kind (or INTx) enabled; the fd is not an eventfd | `Errno`, device slots |
//! | `EBADF` | the fd is not open | `Errno`, guest route (the trigger is the route's) |
//! | `EBUSY` | the index already has a host IRQ requested | `Errno`, device slots |
//! | `ENOTTY` | the device has no trigger action for this index | `Unsupported` |
//! | `EOPNOTSUPP`, `ENOTSUPP` | the MSI-X table cannot allocate at an index while enabled | `NoResize` |
//! | `EFAULT` | the argument could not be read (a bug of ours) | `Errno` |
//! | `ENODEV`, `ENXIO`, `EIO`, `EPERM`, any other | device gone or in error, a security module | `Errno` |
//!
//! A positive return (only on the first enable: `pci_alloc_irq_vectors` found fewer than
//! `start + count` vectors and freed them) is a shortage like `ENOSPC`.

use crate::backend::BackendError;
use pvirq_proto::{Kind, Resource};

/// `ENOTSUPP`: the kernel-internal "not supported" (524) that can leak to user space.
const ENOTSUPP: i32 = 524;

/// Which interrupt-remapping driver serves the device: it decides what `ENOSPC` and
/// `ENOMEM` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuKind {
    /// Intel VT-d (`dmar*` in sysfs): IRTE exhaustion surfaces as `ENOMEM`.
    IntelVtd,
    /// AMD-Vi (`ivhd*` in sysfs): a full per-device table surfaces as `ENOSPC`.
    Amd,
    /// Anything else, or unknown.
    Unknown,
}

impl IommuKind {
    /// The driver, from the name of the device's IOMMU in sysfs (the last component of
    /// `/sys/bus/pci/devices/BDF/iommu`).
    pub fn from_sysfs_name(name: &str) -> Self {
        if name.starts_with("dmar") {
            IommuKind::IntelVtd
        } else if name.starts_with("ivhd") {
            IommuKind::Amd
        } else {
            IommuKind::Unknown
        }
    }

    /// The driver serving the PCI device whose sysfs directory is `sysfs`
    /// (`/sys/bus/pci/devices/BDF`), read from its `iommu` link.
    pub fn detect(sysfs: &std::path::Path) -> Self {
        std::fs::read_link(sysfs.join("iommu"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .map_or(IommuKind::Unknown, |n| IommuKind::from_sysfs_name(&n))
    }
}

/// The resource a `ENOSPC` (or a positive "fewer" return) names under `iommu`.
pub fn shortage_resource(iommu: IommuKind) -> Resource {
    match iommu {
        IommuKind::Amd => Resource::Irte,
        IommuKind::IntelVtd | IommuKind::Unknown => Resource::HostVector,
    }
}

/// The answer for `errno` returned by `VFIO_DEVICE_SET_IRQS` enabling vectors of `kind`.
/// `Exhausted` carries `supplied: 0`; the caller knows how many it backed before.
pub fn backend_error(errno: i32, kind: Kind, iommu: IommuKind) -> BackendError {
    let exhausted = |resource| BackendError::Exhausted {
        resource,
        supplied: 0,
    };
    let refused = |resource| BackendError::Errno { errno, resource };
    match errno {
        libc::ENOSPC => exhausted(shortage_resource(iommu)),
        libc::ENOMEM if iommu == IommuKind::IntelVtd => exhausted(Resource::Irte),
        libc::EINVAL | libc::EBUSY => refused(Resource::DeviceSlots),
        libc::EBADF => refused(Resource::GuestRoute),
        libc::ENOTTY => BackendError::Unsupported(kind),
        libc::EOPNOTSUPP | ENOTSUPP => BackendError::NoResize { kind },
        _ => refused(Resource::None),
    }
}

/// Whether the host ran short (fewer vectors might still be backed), as opposed to
/// refusing the request as such.
pub fn is_shortage(error: &BackendError) -> bool {
    matches!(error, BackendError::Exhausted { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exhausted(resource: Resource) -> BackendError {
        BackendError::Exhausted {
            resource,
            supplied: 0,
        }
    }

    #[test]
    fn enospc_names_host_vectors_except_on_amd() {
        let vtd = backend_error(libc::ENOSPC, Kind::MsiX, IommuKind::IntelVtd);
        assert_eq!(vtd, exhausted(Resource::HostVector));
        let amd = backend_error(libc::ENOSPC, Kind::MsiX, IommuKind::Amd);
        assert_eq!(amd, exhausted(Resource::Irte));
        let unknown = backend_error(libc::ENOSPC, Kind::Msi, IommuKind::Unknown);
        assert_eq!(unknown, exhausted(Resource::HostVector));
    }

    #[test]
    fn enomem_is_an_irte_shortage_only_on_vtd() {
        let vtd = backend_error(libc::ENOMEM, Kind::MsiX, IommuKind::IntelVtd);
        assert_eq!(vtd, exhausted(Resource::Irte));
        for iommu in [IommuKind::Amd, IommuKind::Unknown] {
            let e = backend_error(libc::ENOMEM, Kind::MsiX, iommu);
            assert_eq!(
                e,
                BackendError::Errno {
                    errno: libc::ENOMEM,
                    resource: Resource::None
                }
            );
            assert!(!is_shortage(&e));
        }
    }

    #[test]
    fn refusals_name_the_layer_they_belong_to() {
        let cases = [
            (libc::EINVAL, Resource::DeviceSlots),
            (libc::EBUSY, Resource::DeviceSlots),
            (libc::EBADF, Resource::GuestRoute),
            (libc::EFAULT, Resource::None),
            (libc::ENODEV, Resource::None),
            (libc::ENXIO, Resource::None),
            (libc::EIO, Resource::None),
            (libc::EPERM, Resource::None),
            (libc::EACCES, Resource::None),
            (4242, Resource::None),
        ];
        for (errno, resource) in cases {
            let e = backend_error(errno, Kind::MsiX, IommuKind::IntelVtd);
            assert_eq!(e, BackendError::Errno { errno, resource }, "errno {errno}");
            assert!(!is_shortage(&e), "errno {errno}");
        }
    }

    #[test]
    fn enotty_is_unsupported_and_enotsupp_is_no_resize() {
        assert_eq!(
            backend_error(libc::ENOTTY, Kind::Msi, IommuKind::IntelVtd),
            BackendError::Unsupported(Kind::Msi)
        );
        for errno in [libc::EOPNOTSUPP, ENOTSUPP] {
            assert_eq!(
                backend_error(errno, Kind::MsiX, IommuKind::Amd),
                BackendError::NoResize { kind: Kind::MsiX }
            );
        }
    }

    #[test]
    fn only_exhaustion_is_a_shortage() {
        assert!(is_shortage(&exhausted(Resource::HostVector)));
        assert!(!is_shortage(&BackendError::NoResize { kind: Kind::MsiX }));
        assert!(!is_shortage(&BackendError::Unsupported(Kind::Ims)));
    }

    #[test]
    fn the_sysfs_name_tells_the_driver() {
        assert_eq!(IommuKind::from_sysfs_name("dmar0"), IommuKind::IntelVtd);
        assert_eq!(IommuKind::from_sysfs_name("ivhd1"), IommuKind::Amd);
        assert_eq!(IommuKind::from_sysfs_name("smmu3"), IommuKind::Unknown);
        assert_eq!(IommuKind::from_sysfs_name(""), IommuKind::Unknown);
    }
}
