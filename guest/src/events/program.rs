//! Applying REPROGRAM and REVOKE events to the caller's interrupt tables (spec §12,
//! [DRV-10]).
//!
//! The library never touches an assigned device's MSI-X table, IMS slots or MSI
//! capability: the kernel driver of that device owns them. It gives the order of the
//! steps; the caller's [`ProgramMessages`] does each step on its own hardware, the way a
//! Linux irqchip's `irq_mask` / `irq_write_msi_msg` / `irq_unmask` do.

use pvirq_proto::{Event, EventBody, Kind, MsiMessage, Resource};

/// One vector of an assigned device, as REPROGRAM and REVOKE name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VectorId {
    /// The device handle.
    pub device: u32,
    /// The grant's kind.
    pub kind: Kind,
    /// The grant's index (MSI-X entry, IMS slot, or message number of the MSI block).
    pub index: u32,
}

/// The steps a REPROGRAM or REVOKE takes on the caller's interrupt table.
///
/// For an MSI block, each message of the block gets its own REPROGRAM; the capability
/// holds one address and data (grant 0's), so an implementation programs the capability
/// for index 0 and need do nothing for the others but the replay.
pub trait ProgramMessages {
    /// Masks the vector (MSI-X Mask bit, IMS slot control, MSI per-vector mask) and returns
    /// whether it was masked already.
    fn mask(&mut self, vector: VectorId) -> bool;
    /// Writes `message` into the vector's entry, unchanged (spec [DRV-3]).
    fn program(&mut self, vector: VectorId, message: MsiMessage);
    /// Unmasks the vector.
    fn unmask(&mut self, vector: VectorId);
    /// The vector may have lost an interrupt (spec [DRV-10], §13): run its handler, or poll
    /// its device, once.
    fn replay(&mut self, vector: VectorId);
    /// The grant no longer exists (REVOKE: already freed, its quota returned): forget it.
    /// Called after [`ProgramMessages::mask`]. The default does nothing.
    fn forget(&mut self, vector: VectorId, reason: Resource) {
        let _ = (vector, reason);
    }
}

/// What [`apply_event`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Applied {
    /// A REPROGRAM: the vector holds its new message.
    Reprogrammed(VectorId),
    /// A REVOKE: the vector is masked and forgotten, for `reason`.
    Revoked(VectorId, Resource),
    /// Another event type, which concerns no entry of the table: the caller handles it.
    Other,
}

/// Applies a REPROGRAM or REVOKE to `table`.
///
/// REPROGRAM: mask, program the new message, unmask, replay, in that order. A vector that
/// was masked already (a parked grant not yet activated, say, spec §3.5) is left masked
/// and not replayed: its device held any interrupt in its pending bit, and sends it with
/// the new message when the driver unmasks it.
///
/// REVOKE: mask, then forget (spec §12: the grant is already freed; the driver stops using
/// the vector).
pub fn apply_event<P: ProgramMessages + ?Sized>(table: &mut P, event: &Event) -> Applied {
    match event.body {
        EventBody::Reprogram {
            device,
            kind,
            index,
            message,
            ..
        } => {
            let vector = VectorId {
                device,
                kind,
                index,
            };
            let was_masked = table.mask(vector);
            table.program(vector, message);
            if !was_masked {
                table.unmask(vector);
                table.replay(vector);
            }
            Applied::Reprogrammed(vector)
        }
        EventBody::Revoke {
            device,
            kind,
            index,
            reason,
        } => {
            let vector = VectorId {
                device,
                kind,
                index,
            };
            table.mask(vector);
            table.forget(vector, reason);
            Applied::Revoked(vector, reason)
        }
        _ => Applied::Other,
    }
}
