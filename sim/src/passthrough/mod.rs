//! A simulated pass-through device whose interrupt storage lives in guest memory.
//!
//! A real device's MSI-X table sits in one of its BARs and IMS slots in device memory the
//! guest maps; the guest driver programs them with plain memory writes, and the device
//! reads them when it raises an interrupt. Here the storage is a region of a vm-memory
//! [`GuestMemoryMmap`](vm_memory::GuestMemoryMmap) that both sides share:
//! - the guest side programs a slot through [`DeviceTables::program`] (message, then
//!   unmask — the order a driver uses) and masks it with [`DeviceTables::mask`];
//! - the device side, [`PassthroughDevice::fire`], reads the slot back from memory, refuses
//!   if it is masked, and hands `(requester ID, message)` to [`pvirq_host::ModelHost::fire`] —
//!   the remapping unit checks the source-id and resolves the message to the grant's guest
//!   route (for a KVM VM: its irqfd, then KVM, then the vCPU).
//!
//! Nothing here knows about KVM, so the in-memory simulator drives the same device.
//!
//! Which memory: the tables may be placed in any `GuestMemoryMmap` the caller hands over —
//! the in-process channel's, or (as the end-to-end tests do) a region of their own standing
//! for the device's BAR; here host-side code plays the guest driver. When the guest image
//! programs a device itself inside a KVM VM, the device is [`crate::vmm::bar`], built on
//! these same tables.
//!
//! A masked slot that fires holds its interrupt pending and sends it once when unmasked
//! ([`PassthroughDevice::unmask`]), as hardware does with the PBA. A mask bit the guest
//! clears by writing the table directly is seen when the device next re-reads its pending
//! slots: before every message it sends, and at [`PassthroughDevice::poll_pending`].
//!
//! Entry formats ([`entry`]): MSI-X entries of 16 bytes `{addr_lo, addr_hi, data,
//! vector_control}` (bit 0 masks); IMS slots `{addr_lo, addr_hi, data, ctrl}` as Intel IDXD
//! lays them out (ctrl bit 0 masks, bit 3 enables the PASID in bits 31:12). The PASID is
//! recorded in the slot; the host's remapping model checks the requester ID only.

mod device;
pub mod entry;
mod error;
mod slot;
mod tables;

pub use device::PassthroughDevice;
pub use entry::SlotState;
pub use error::PassthroughError;
pub use slot::Slot;
pub use tables::{DeviceTables, TableRegion};

#[cfg(test)]
mod tests;
