//! [`Faulty`] over an interrupt backend: its Nth `enable` fails before reaching the host.

use super::{FaultKind, Faulty, LayerCall};
use crate::backend::{
    BackendError, EnableRequest, Enabled, GuestDest, HostSupply, InterruptBackend,
};
use pvirq_proto::{Kind, MessageFormat};

/// The EIO an injected backend failure reports.
const EIO: i32 = 5;

impl<B: InterruptBackend> InterruptBackend for Faulty<B> {
    fn format(&self) -> MessageFormat {
        self.inner.format()
    }
    fn can_post(&self) -> bool {
        self.inner.can_post()
    }
    fn max_msi_block(&self) -> u32 {
        self.inner.max_msi_block()
    }
    fn supply(&self, kind: Kind) -> HostSupply {
        self.inner.supply(kind)
    }
    fn enable(
        &mut self,
        request: &EnableRequest<'_>,
        out: &mut Vec<Enabled>,
    ) -> Result<(), BackendError> {
        match self.plan.tick(LayerCall::Enable) {
            Ok(()) => self.inner.enable(request, out),
            Err(FaultKind::Exhausted) => Err(BackendError::Exhausted {
                resource: LayerCall::Enable.resource(),
                supplied: 0,
            }),
            Err(FaultKind::Failed) => Err(BackendError::Errno {
                errno: EIO,
                resource: LayerCall::Enable.resource(),
            }),
        }
    }
    fn disable(&mut self, kind: Kind, indices: &[u32]) {
        self.inner.disable(kind, indices)
    }
    fn retarget(&mut self, kind: Kind, index: u32, dest: Option<GuestDest>) {
        self.inner.retarget(kind, index, dest)
    }
}
