//! Vectors a backend backs for one request, held by a value: disabled on drop unless kept.

use crate::backend::{GuestDest, InterruptBackend};
use pvirq_proto::Kind;

/// The vectors one request had the backend enable. Dropping it unkept disables them, so a
/// reply that cannot be written or a commit that fails gives the host everything back.
pub(crate) struct Backed<'a> {
    backend: &'a mut dyn InterruptBackend,
    kind: Kind,
    indices: &'a [u32],
    kept: bool,
}

impl<'a> Backed<'a> {
    pub(crate) fn new(
        backend: &'a mut dyn InterruptBackend,
        kind: Kind,
        indices: &'a [u32],
    ) -> Self {
        Backed {
            backend,
            kind,
            indices,
            kept: false,
        }
    }

    /// Points one of the vectors at another destination before it is granted (a spread
    /// settled on the count the host backed). Undone with the rest if the request fails:
    /// the vector is disabled.
    pub(crate) fn retarget(&mut self, index: u32, dest: Option<GuestDest>) {
        self.backend.retarget(self.kind, index, dest);
    }

    /// The request succeeded: the vectors are grants now.
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Backed<'_> {
    fn drop(&mut self) {
        if !self.kept && !self.indices.is_empty() {
            self.backend.disable(self.kind, self.indices);
        }
    }
}
