//! The one error type of the pass-through device model.

use super::slot::Slot;

/// What went wrong programming or firing a pass-through device's slot.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    /// A table does not lie entirely in the guest memory given to the device.
    #[error("table of {entries} entries at {base:#x} is not inside guest memory")]
    TableOutsideMemory {
        /// Guest-physical address of entry 0.
        base: u64,
        /// Number of entries.
        entries: u32,
    },
    /// The MSI-X table and the IMS slots overlap.
    #[error("the MSI-X table and the IMS slots overlap")]
    TablesOverlap,
    /// The device has no such slot.
    #[error("the device has no {0}")]
    NoSuchSlot(Slot),
    /// MSI-X entries carry no PASID.
    #[error("{0} cannot carry a PASID")]
    PasidOnMsix(Slot),
    /// PASIDs are 20 bits.
    #[error("PASID {0:#x} is wider than 20 bits")]
    PasidTooLarge(u32),
    /// The slot is masked: the device does not send.
    #[error("{0} is masked")]
    Masked(Slot),
    /// The host did not deliver the interrupt and recorded a fault (remapping refused it,
    /// or its grant is gone).
    #[error("interrupt from {slot} not delivered: {fault:?}")]
    Fault {
        /// The slot that fired.
        slot: Slot,
        /// The fault the host recorded.
        fault: pvirq_host::model::Fault,
    },
    /// Guest memory could not be read or written.
    #[error("guest memory access failed: {0}")]
    Memory(#[source] vm_memory::GuestMemoryError),
}
