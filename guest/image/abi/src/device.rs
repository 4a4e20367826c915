//! The pass-through device model's BAR, as the guest driver programs it.
//!
//! ```text
//! 0x0000  DOORBELL      w   fire a slot: bit 31 set = IMS slot, clear = MSI-X entry; bits 30:0 index
//! 0x0004  PLAIN         w   write the VMM's plain irqfd (benchmark baseline: no pvirq in the path)
//! 0x0008  IMS_BASE_LO   rw  guest-physical address of the IMS slot array (in guest RAM)
//! 0x000C  IMS_BASE_HI   rw
//! 0x0010  IMS_SLOTS     r   number of IMS slots
//! 0x0014  MSIX_ENTRIES  r   MSI-X table size
//! 0x0018  TABLE_TRAPPED r   1: every MSI-X table access exits to the VMM; 0: the table is memory
//! 0x001C  MSIX_DISABLE  w   mask every MSI-X entry; the VMM releases what it built behind them
//! 0x1000  MSI-X table   16 bytes per entry {addr_lo, addr_hi, data, vector control}
//! 0x9000  PBA           r   pending bits, one per MSI-X entry (always trapped)
//! ```
//! IMS slots are `{addr_lo, addr_hi, data, ctrl}` as Intel IDXD keeps them: ctrl bit 0
//! masks, bit 3 enables the PASID in bits 31:12.

/// Write: fire the slot named by the value.
pub const DOORBELL: u64 = 0x0;
/// Write: the VMM writes its plain irqfd.
pub const PLAIN: u64 = 0x4;
/// Read/write: IMS slot array address, low half.
pub const IMS_BASE_LO: u64 = 0x8;
/// Read/write: IMS slot array address, high half.
pub const IMS_BASE_HI: u64 = 0xC;
/// Read: number of IMS slots.
pub const IMS_SLOTS: u64 = 0x10;
/// Read: number of MSI-X entries.
pub const MSIX_ENTRIES: u64 = 0x14;
/// Read: whether the MSI-X table is trapped.
pub const TABLE_TRAPPED: u64 = 0x18;
/// Write: mask every MSI-X entry and let the VMM release the routes it built for them (what
/// a guest's MSI-X disable does; only the trapped flow builds any).
pub const MSIX_DISABLE: u64 = 0x1C;
/// Offset of the MSI-X table.
pub const MSIX_TABLE: u64 = 0x1000;
/// The most MSI-X entries (PCI's limit).
pub const MSIX_MAX: u32 = 2048;
/// Offset of the pending-bit array.
pub const MSIX_PBA: u64 = 0x9000;
/// Bytes of the register page.
pub const REGS_SIZE: u64 = 0x1000;
/// Bytes of the MSI-X table window (for [`MSIX_MAX`] entries).
pub const MSIX_TABLE_SIZE: u64 = MSIX_MAX as u64 * ENTRY_SIZE;
/// Bytes of the PBA window.
pub const MSIX_PBA_SIZE: u64 = 0x1000;

/// Bytes per MSI-X entry and per IMS slot.
pub const ENTRY_SIZE: u64 = 16;
/// Control bit 0 (both formats): masked.
pub const CTRL_MASK: u32 = 1 << 0;
/// IMS control bit 3: the PASID field is valid.
pub const IMS_PASID_ENABLE: u32 = 1 << 3;
/// IMS control: the PASID sits in bits 31:12.
pub const IMS_PASID_SHIFT: u32 = 12;

/// DOORBELL bit: the index names an IMS slot.
pub const DOORBELL_IMS: u32 = 1 << 31;

/// The DOORBELL value that fires MSI-X entry (`ims` false) or IMS slot `index`.
pub const fn doorbell(ims: bool, index: u32) -> u32 {
    if ims {
        DOORBELL_IMS | (index & !DOORBELL_IMS)
    } else {
        index & !DOORBELL_IMS
    }
}
