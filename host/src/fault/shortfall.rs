//! [`Shortfall`]: a backend that backs fewer vectors than the core sized a request for,
//! as a host does when another VM took entries between the core's look at the supply and
//! its reservation (spec §4.5: the device grants what the layer supplied, at least `min`).

use crate::backend::{
    BackendError, EnableRequest, Enabled, GuestDest, HostSupply, InterruptBackend,
};
use pvirq_proto::{Kind, MessageFormat};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Wraps a backend so that each `enable` backs at most the cap's prefix of the vectors
/// asked for (never fewer than the request's `min`, so the request still succeeds).
/// The cap is shared with the [`ShortfallCap`] handle, so a test can move it after the
/// backend went into a VM.
#[derive(Debug)]
pub struct Shortfall<B> {
    inner: B,
    cap: ShortfallCap,
}

/// The most vectors a [`Shortfall`] backs per `enable`; cloning shares it.
#[derive(Clone, Debug)]
pub struct ShortfallCap(Arc<AtomicUsize>);

impl ShortfallCap {
    /// A cap of `n` vectors per enable (`usize::MAX`: no shortfall).
    pub fn new(n: usize) -> Self {
        ShortfallCap(Arc::new(AtomicUsize::new(n)))
    }

    /// Sets the cap.
    pub fn set(&self, n: usize) {
        self.0.store(n, Ordering::SeqCst);
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl<B> Shortfall<B> {
    /// Wraps `inner`, capped by `cap`.
    pub fn new(inner: B, cap: ShortfallCap) -> Self {
        Shortfall { inner, cap }
    }
}

impl<B: InterruptBackend> InterruptBackend for Shortfall<B> {
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
        let n = self.cap.get().max(request.min).min(request.vectors.len());
        let vectors = request.vectors.get(..n).unwrap_or(request.vectors);
        self.inner.enable(
            &EnableRequest {
                vectors,
                ..*request
            },
            out,
        )
    }
    fn disable(&mut self, kind: Kind, indices: &[u32]) {
        self.inner.disable(kind, indices)
    }
    fn retarget(&mut self, kind: Kind, index: u32, dest: Option<GuestDest>) {
        self.inner.retarget(kind, index, dest)
    }
}
