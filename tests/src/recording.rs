//! A layer wrapper that records every reserving call, in order, before passing it on.
//!
//! Wrapped around a [`pvirq_host::layers::Faulty`] layer it records the call that the
//! fault plan fails too, so a test knows exactly which layer call its Nth fault hit and
//! can check that the guest's refusal names that layer.

use pvirq_host::LayerError;
use pvirq_host::layers::{
    GuestDest, HostVector, Irte, IrteDest, RemapFault, RemapLayer, RouteId, RouteLayer, VectorLayer,
};
use pvirq_proto::{MsiMessage, Resource};
use std::sync::{Arc, Mutex, PoisonError};

/// A reserving call of one of the layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// `RemapLayer::alloc` (one IRTE).
    IrteAlloc,
    /// `RemapLayer::alloc_block` (an aligned IRTE block, for MSI).
    IrteBlock,
    /// `RemapLayer::program`.
    IrteProgram,
    /// `VectorLayer::alloc`.
    VectorAlloc,
    /// `RouteLayer::stage_add`.
    RouteAdd,
    /// `RouteLayer::stage_update`.
    RouteUpdate,
    /// `RouteLayer::stage_remove`.
    RouteRemove,
    /// `RouteLayer::commit`.
    RouteCommit,
}

impl Call {
    /// The resource the layer making this call stands for.
    pub fn resource(self) -> Resource {
        match self {
            Call::IrteAlloc | Call::IrteBlock | Call::IrteProgram => Resource::Irte,
            Call::VectorAlloc => Resource::HostVector,
            _ => Resource::GuestRoute,
        }
    }

    /// Whether a shortage at this call is a shortage of the resource (an allocation), as
    /// opposed to a layer failing to carry out an operation on what it already has.
    pub fn allocates(self) -> bool {
        matches!(
            self,
            Call::IrteAlloc | Call::IrteBlock | Call::VectorAlloc | Call::RouteAdd
        )
    }
}

/// The calls recorded, shared by every wrapper of one test rig. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct CallLog(Arc<Mutex<Vec<Call>>>);

impl CallLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, call: Call) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
    }

    /// Forgets every call recorded so far.
    pub fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The calls recorded since the last [`CallLog::clear`], in order.
    pub fn calls(&self) -> Vec<Call> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Records each reserving call into a [`CallLog`], then passes it to the inner layer.
#[derive(Debug)]
pub struct Recording<L> {
    inner: L,
    log: CallLog,
}

impl<L> Recording<L> {
    /// Wraps `inner`, recording into `log`.
    pub fn new(inner: L, log: CallLog) -> Self {
        Recording { inner, log }
    }
}

impl<L: RemapLayer> RemapLayer for Recording<L> {
    fn units(&self) -> u16 {
        self.inner.units()
    }
    fn capacity(&self, unit: u16) -> u32 {
        self.inner.capacity(unit)
    }
    fn free_entries(&self, unit: u16) -> u32 {
        self.inner.free_entries(unit)
    }
    fn largest_block(&self, unit: u16, cap: u32) -> u32 {
        self.inner.largest_block(unit, cap)
    }
    fn alloc(&mut self, unit: u16, source_id: u16) -> Result<u16, LayerError> {
        self.log.push(Call::IrteAlloc);
        self.inner.alloc(unit, source_id)
    }
    fn alloc_block(&mut self, unit: u16, count: u32, source_id: u16) -> Result<u16, LayerError> {
        self.log.push(Call::IrteBlock);
        self.inner.alloc_block(unit, count, source_id)
    }
    fn program(&mut self, unit: u16, index: u16, dest: IrteDest) -> Result<(), LayerError> {
        self.log.push(Call::IrteProgram);
        self.inner.program(unit, index, dest)
    }
    fn free(&mut self, unit: u16, index: u16) {
        self.inner.free(unit, index)
    }
    fn entry(&self, unit: u16, index: u16) -> Option<Irte> {
        self.inner.entry(unit, index)
    }
    fn deliver(
        &self,
        unit: u16,
        source_id: u16,
        message: MsiMessage,
    ) -> Result<IrteDest, RemapFault> {
        self.inner.deliver(unit, source_id, message)
    }
}

impl<L: VectorLayer> VectorLayer for Recording<L> {
    fn cpus(&self) -> u32 {
        self.inner.cpus()
    }
    fn available(&self) -> u32 {
        self.inner.available()
    }
    fn allocated(&self) -> u32 {
        self.inner.allocated()
    }
    fn alloc(&mut self) -> Result<HostVector, LayerError> {
        self.log.push(Call::VectorAlloc);
        self.inner.alloc()
    }
    fn free(&mut self, vector: HostVector) {
        self.inner.free(vector)
    }
    fn is_allocated(&self, vector: HostVector) -> bool {
        self.inner.is_allocated(vector)
    }
}

impl<L: RouteLayer> RouteLayer for Recording<L> {
    fn available(&self) -> u32 {
        self.inner.available()
    }
    fn stage_add(&mut self, dest: GuestDest) -> Result<RouteId, LayerError> {
        self.log.push(Call::RouteAdd);
        self.inner.stage_add(dest)
    }
    fn stage_update(&mut self, id: RouteId, dest: GuestDest) -> Result<(), LayerError> {
        self.log.push(Call::RouteUpdate);
        self.inner.stage_update(id, dest)
    }
    fn stage_remove(&mut self, id: RouteId) -> Result<(), LayerError> {
        self.log.push(Call::RouteRemove);
        self.inner.stage_remove(id)
    }
    fn commit(&mut self) -> Result<(), LayerError> {
        self.log.push(Call::RouteCommit);
        self.inner.commit()
    }
    fn abort(&mut self) {
        self.inner.abort()
    }
    fn route(&self, id: RouteId) -> Option<GuestDest> {
        self.inner.route(id)
    }
    fn live(&self) -> u32 {
        self.inner.live()
    }
    fn fire(&mut self, id: RouteId) -> Result<(), LayerError> {
        self.inner.fire(id)
    }
}
