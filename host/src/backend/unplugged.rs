//! [`Unplugged`]: the backend of a device slot whose device is gone.

use super::{BackendError, EnableRequest, Enabled, HostSupply, InterruptBackend};
use pvirq_proto::{Kind, MessageFormat};

/// The backend of a removed device's handle, which answers NO_DEVICE and is never asked to
/// reserve anything: it backs nothing and has nothing to give back. The core puts it in
/// place of a removed device's backend (which goes back to the VMM), and a VMM restoring a
/// VM whose snapshot has a removed device gives it for that handle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unplugged;

impl InterruptBackend for Unplugged {
    fn format(&self) -> MessageFormat {
        MessageFormat::VtdRemappable
    }

    fn supply(&self, _kind: Kind) -> HostSupply {
        HostSupply {
            irte: Some(0),
            irte_block: Some(0),
            host_vectors: Some(0),
        }
    }

    fn enable(
        &mut self,
        request: &EnableRequest<'_>,
        _out: &mut Vec<Enabled>,
    ) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(request.kind))
    }

    fn disable(&mut self, _kind: Kind, _indices: &[u32]) {}
}
