//! `ModelBackend`: the [`InterruptBackend`] of one assigned device on the modelled host.

use super::kernel::Kernel;
use crate::backend::{
    BackendError, EnableRequest, Enabled, GuestDest, HostSupply, InterruptBackend,
};
use crate::sync::lock;
use pvirq_proto::{Kind, MessageFormat};
use std::sync::{Arc, Mutex};

/// One assigned device's interrupts on the modelled host kernel. Dropping it releases
/// everything the device held and forgets its requester ID, as the kernel does when the
/// device is released from its VM.
pub struct ModelBackend {
    pub(super) kernel: Arc<Mutex<Kernel>>,
    pub(super) requester_id: u16,
}

impl std::fmt::Debug for ModelBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelBackend")
            .field("requester_id", &self.requester_id)
            .finish_non_exhaustive()
    }
}

impl InterruptBackend for ModelBackend {
    fn format(&self) -> MessageFormat {
        lock(&self.kernel)
            .devices
            .get(&self.requester_id)
            .map_or(MessageFormat::VtdRemappable, |d| d.format())
    }

    fn can_post(&self) -> bool {
        lock(&self.kernel).can_post
    }

    fn max_msi_block(&self) -> u32 {
        lock(&self.kernel).max_msi_block(self.requester_id)
    }

    fn supply(&self, _kind: Kind) -> HostSupply {
        let kernel = lock(&self.kernel);
        let (irte, block) = kernel.free_entries(self.requester_id);
        HostSupply {
            irte: Some(irte),
            irte_block: Some(block.min(kernel.max_msi_block(self.requester_id))),
            host_vectors: Some(kernel.vectors.available()),
        }
    }

    fn enable(
        &mut self,
        request: &EnableRequest<'_>,
        out: &mut Vec<Enabled>,
    ) -> Result<(), BackendError> {
        lock(&self.kernel).enable(self.requester_id, request, out)
    }

    fn disable(&mut self, kind: Kind, indices: &[u32]) {
        lock(&self.kernel).disable(self.requester_id, kind, indices);
    }

    fn retarget(&mut self, kind: Kind, index: u32, dest: Option<GuestDest>) {
        lock(&self.kernel).retarget(self.requester_id, kind, index, dest);
    }
}

impl Drop for ModelBackend {
    fn drop(&mut self) {
        let mut kernel = lock(&self.kernel);
        let held: Vec<(Kind, u32)> = kernel
            .devices
            .get(&self.requester_id)
            .map(|d| d.vectors.keys())
            .unwrap_or_default();
        for (kind, index) in held {
            kernel.disable(self.requester_id, kind, &[index]);
        }
        kernel.devices.remove(&self.requester_id);
    }
}
