//! Byte-exact wire structures (spec §4). All fields little-endian, alignment 1, no padding.
//!
//! These are raw layouts: any bit pattern is representable. [`crate::request`] and
//! [`crate::response`] turn them into validated values.

use crate::le::{Le16, Le32, Le64};
use bytemuck::{Pod, Zeroable};

/// ALLOC `flags`: ignore `first_index`; the device chooses the indices.
pub const ALLOC_FLAG_ANY_INDEX: u8 = 1 << 0;
/// ALLOC `flags`: `pasid` is valid (IMS only, needs the PASID feature).
pub const ALLOC_FLAG_PASID: u8 = 1 << 1;
/// Every ALLOC flag version 1 defines.
pub const ALLOC_FLAGS_DEFINED: u8 = ALLOC_FLAG_ANY_INDEX | ALLOC_FLAG_PASID;

/// The first 16 bytes of every request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct RequestHeader {
    /// [`crate::Opcode`].
    pub opcode: u8,
    /// Must be 0.
    pub reserved0: u8,
    /// Must be 0.
    pub reserved1: Le16,
    /// Device handle, `0..num_devices`.
    pub device: Le32,
    /// Chosen by the driver, echoed in the response.
    pub tag: Le64,
}

/// ALLOC body, after the header; followed by `max_count` [`WireTarget`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct AllocBody {
    /// [`crate::Kind`].
    pub kind: u8,
    /// `ALLOC_FLAG_*`.
    pub flags: u8,
    /// Must be 0.
    pub reserved: Le16,
    /// First table index (0 when `ANY_INDEX`).
    pub first_index: Le32,
    /// Fewest vectors the driver accepts.
    pub min_count: Le16,
    /// Most vectors the driver wants; also the number of targets that follow.
    pub max_count: Le16,
    /// PASID (20 bits) when `flags` has `PASID`, else 0.
    pub pasid: Le32,
}

/// FREE and RETARGET body: a run of indices. RETARGET is followed by `count` targets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct RangeBody {
    /// [`crate::Kind`].
    pub kind: u8,
    /// Must be 0.
    pub reserved0: u8,
    /// Must be 0.
    pub reserved1: Le16,
    /// First index of the run.
    pub first_index: Le32,
    /// Length of the run.
    pub count: Le16,
    /// Must be 0.
    pub reserved2: Le16,
    /// Must be 0.
    pub reserved3: Le32,
}

/// Where one interrupt must arrive in the guest: 8 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct WireTarget {
    /// Destination vCPU index, `0..num_vcpus`.
    pub vcpu: Le32,
    /// Guest vector, `0x20..=0xff`.
    pub vector: u8,
    /// Must be 0.
    pub reserved: [u8; 3],
}

/// The first 24 bytes of every response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct ResponseHeader {
    /// The request's opcode.
    pub opcode: u8,
    /// [`crate::Status`].
    pub status: u8,
    /// Status-specific: a [`crate::Resource`] or [`crate::Field`], else 0.
    pub detail: u8,
    /// Must be 0.
    pub reserved: u8,
    /// The request's device handle.
    pub device: Le32,
    /// The request's tag.
    pub tag: Le64,
    /// OK: vectors granted, freed or retargeted. Otherwise 0.
    pub count: Le32,
    /// OK: the VM's remaining quota. Otherwise status-specific (spec §5).
    pub info: Le32,
}

/// One granted vector in an ALLOC reply: 16 bytes, the message to program at `index`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct WireGrant {
    /// Table index (MSI-X entry, IMS slot, or position within the MSI block).
    pub index: Le32,
    /// Message address, low 32 bits.
    pub address_lo: Le32,
    /// Message address, high 32 bits.
    pub address_hi: Le32,
    /// Message data.
    pub data: Le32,
}

/// QUERY reply body: 24 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct QueryBody {
    /// Kinds the device supports and the driver negotiated (bit `kind - 1`).
    pub kinds: Le32,
    /// Largest MSI block (power of two, 1–32), 0 without MSI.
    pub msi_max: Le16,
    /// MSI-X table size (1–2048), 0 without MSI-X.
    pub msix_table_size: Le16,
    /// IMS slots, 0 without IMS.
    pub ims_slots: Le32,
    /// Vectors currently granted to this device.
    pub granted: Le32,
    /// The VM's total quota.
    pub vm_quota: Le32,
    /// Largest count an ALLOC for this device could be granted now (advisory).
    pub available: Le32,
}

// The only unsafe code of the crate: vm-memory's `ByteValued` is an unsafe trait.
#[cfg(feature = "vm-memory")]
#[allow(unsafe_code)]
mod byte_valued {
    use super::*;
    // SAFETY: each type is `repr(C)` of byte arrays and `u8`s (the `Pod` derive checks that
    // there is no padding), so every bit pattern is a valid value, as `ByteValued` requires.
    unsafe impl vm_memory::ByteValued for RequestHeader {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for AllocBody {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for RangeBody {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for WireTarget {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for ResponseHeader {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for WireGrant {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for QueryBody {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for crate::Config {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn sizes_match_the_spec_and_alignment_is_one() {
        assert_eq!(size_of::<RequestHeader>(), 16);
        assert_eq!(size_of::<AllocBody>(), 16);
        assert_eq!(size_of::<RangeBody>(), 16);
        assert_eq!(size_of::<WireTarget>(), 8);
        assert_eq!(size_of::<ResponseHeader>(), 24);
        assert_eq!(size_of::<WireGrant>(), 16);
        assert_eq!(size_of::<QueryBody>(), 24);
        assert_eq!(align_of::<RequestHeader>(), 1);
        assert_eq!(align_of::<ResponseHeader>(), 1);
    }

    #[test]
    fn header_fields_sit_at_spec_offsets() {
        let header = RequestHeader {
            opcode: 2,
            reserved0: 0,
            reserved1: Le16::new(0),
            device: Le32::new(0x0403_0201),
            tag: Le64::new(0x0807_0605_0403_0201),
        };
        let bytes = bytemuck::bytes_of(&header);
        assert_eq!(bytes[0], 2);
        assert_eq!(&bytes[4..8], &[1, 2, 3, 4]);
        assert_eq!(&bytes[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
