//! [`VfioBackend`]: the [`InterruptBackend`] of one device assigned through VFIO.

use super::disable::{disable, disable_all};
use super::enable::enable;
use super::errno::IommuKind;
use super::irq_set::vfio_index;
use super::kernel::{IrqHost, VfioDeviceIrqs};
use super::state::KindState;
use super::token::VmmToken;
use crate::backend::{BackendError, EnableRequest, Enabled, HostSupply, InterruptBackend};
use pvirq_proto::{Kind, MessageFormat, MsiMessage};
use std::path::Path;
use std::sync::Arc;
use vfio_ioctls::VfioDevice;

/// The host side of one VFIO-assigned PCI device's MSI and MSI-X interrupts.
///
/// Every enable is issued as `VFIO_DEVICE_SET_IRQS` at the granted indices (never the
/// whole table from 0), each vector signalling its route's eventfd; the kernel allocates
/// the host IRQ, its CPU vector and its IRTE, and programs the physical table entry.
/// IMS has no VFIO interface: it is never offered. Grants carry [`VmmToken`] messages
/// ([`MessageFormat::VmmTrapped`]); the VMM keeps trapping the guest's table writes and
/// recognises them with [`VfioBackend::recognise`].
///
/// Dropping the backend disables both kinds in the kernel.
pub struct VfioBackend<H: IrqHost = VfioDeviceIrqs> {
    host: H,
    iommu: IommuKind,
    msi: Option<KindState>,
    msix: Option<KindState>,
    disable_failures: u64,
}

impl VfioBackend<VfioDeviceIrqs> {
    /// The backend of `device` (opened by the VMM through `vfio-ioctls`), whose sysfs
    /// directory is `sysfs` (`/sys/bus/pci/devices/BDF`): its `iommu` link tells which
    /// remapping driver's errnos to expect.
    pub fn for_device(device: Arc<VfioDevice>, sysfs: &Path) -> Self {
        VfioBackend::new(VfioDeviceIrqs::new(device), IommuKind::detect(sysfs))
    }
}

impl<H: IrqHost> VfioBackend<H> {
    /// The backend over `host`. A kind whose index has no vectors or cannot signal
    /// eventfds is not offered.
    pub fn new(host: H, iommu: IommuKind) -> Self {
        let state = |kind| {
            let index = vfio_index(kind)?;
            let info = host.irq_info(index)?;
            (info.count > 0 && info.eventfd()).then(|| KindState::new(index, info))
        };
        let msi = state(Kind::Msi);
        let msix = state(Kind::MsiX);
        VfioBackend {
            host,
            iommu,
            msi,
            msix,
            disable_failures: 0,
        }
    }

    /// The kernel interface it issues its calls on.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The same, mutably (a test wrapper's controls).
    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    /// The remapping driver it assumed when reading errnos.
    pub fn iommu(&self) -> IommuKind {
        self.iommu
    }

    /// The number of vectors `kind` has (0 if it is not offered).
    pub fn table_size(&self, kind: Kind) -> u32 {
        self.state(kind).map_or(0, |s| s.info.count)
    }

    /// Whether MSI-X vectors can be added while MSI-X is enabled (`NORESIZE` clear).
    pub fn dynamic_msix(&self) -> bool {
        self.msix.as_ref().is_some_and(|s| !s.info.noresize())
    }

    /// The indices of `kind` that have a trigger in the kernel, ascending.
    pub fn enabled(&self, kind: Kind) -> Vec<u32> {
        self.state(kind)
            .map(|s| s.enabled_indices().collect())
            .unwrap_or_default()
    }

    /// Whether the kernel has `kind` enabled (it may hold cached host IRQs even with no
    /// trigger attached; the backend disables a kind when its last vector goes).
    pub fn is_on(&self, kind: Kind) -> bool {
        self.state(kind).is_some_and(|s| s.on)
    }

    /// How many detach calls the kernel refused so far (each is reported here, not to
    /// the core: disabling cannot fail from its view).
    pub fn disable_failures(&self) -> u64 {
        self.disable_failures
    }

    /// The token in `message`, if it names a vector enabled now in its current
    /// generation: what the VMM's table emulation checks when the guest writes an entry.
    pub fn recognise(&self, message: MsiMessage) -> Option<VmmToken> {
        let token = VmmToken::decode(message)?;
        let state = self.state(token.kind)?;
        let index = u32::from(token.index);
        (state.is_enabled(index) && state.generation(index) == token.generation).then_some(token)
    }

    fn state(&self, kind: Kind) -> Option<&KindState> {
        match kind {
            Kind::Msi => self.msi.as_ref(),
            Kind::MsiX => self.msix.as_ref(),
            Kind::Ims => None,
        }
    }
}

impl<H: IrqHost> InterruptBackend for VfioBackend<H> {
    fn format(&self) -> MessageFormat {
        MessageFormat::VmmTrapped
    }

    fn max_msi_block(&self) -> u32 {
        // What VFIO reports for the MSI index is the capability's multi-message count.
        let count = self.msi.as_ref().map_or(1, |s| s.info.count).clamp(1, 32);
        1 << count.ilog2()
    }

    fn supply(&self, _kind: Kind) -> HostSupply {
        // VFIO never says how many vectors or IRTEs are left.
        HostSupply::default()
    }

    fn enable(
        &mut self,
        request: &EnableRequest<'_>,
        out: &mut Vec<Enabled>,
    ) -> Result<(), BackendError> {
        let kind = request.kind;
        let iommu = self.iommu;
        let (host, state, failures) = match kind {
            Kind::Msi => (
                &mut self.host,
                self.msi.as_mut(),
                &mut self.disable_failures,
            ),
            Kind::MsiX => (
                &mut self.host,
                self.msix.as_mut(),
                &mut self.disable_failures,
            ),
            Kind::Ims => (&mut self.host, None, &mut self.disable_failures),
        };
        let state = state.ok_or(BackendError::Unsupported(kind))?;
        enable(host, state, kind, iommu, request, out, failures)
    }

    fn disable(&mut self, kind: Kind, indices: &[u32]) {
        let (host, state) = match kind {
            Kind::Msi => (&mut self.host, self.msi.as_mut()),
            Kind::MsiX => (&mut self.host, self.msix.as_mut()),
            Kind::Ims => (&mut self.host, None),
        };
        if let Some(state) = state {
            self.disable_failures += u64::from(disable(host, state, indices));
        }
    }
}

impl<H: IrqHost> Drop for VfioBackend<H> {
    fn drop(&mut self) {
        for kind in [Kind::Msi, Kind::MsiX] {
            let host = &mut self.host;
            let state = match kind {
                Kind::Msi => self.msi.as_mut(),
                _ => self.msix.as_mut(),
            };
            if let Some(state) = state {
                disable_all(host, state);
            }
        }
    }
}

impl<H: IrqHost> std::fmt::Debug for VfioBackend<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioBackend")
            .field("iommu", &self.iommu)
            .field("msi", &self.msi.as_ref().map(KindState::enabled_count))
            .field("msix", &self.msix.as_ref().map(KindState::enabled_count))
            .field("disable_failures", &self.disable_failures)
            .finish()
    }
}
