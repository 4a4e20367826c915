//! Byte-exact wire structures (spec §4). All fields little-endian, alignment 1, no padding.
//!
//! These are raw layouts: any bit pattern is representable. [`crate::request`] and
//! [`crate::response`] turn them into validated values.

use crate::error::Error;
use crate::le::{Le16, Le32, Le64};
use bytemuck::{Pod, Zeroable};

/// ALLOC `flags`: ignore `first_index`; the device chooses the indices.
pub const ALLOC_FLAG_ANY_INDEX: u8 = 1 << 0;
/// ALLOC `flags`: `pasid` is valid (IMS only, needs the PASID feature).
pub const ALLOC_FLAG_PASID: u8 = 1 << 1;
/// ALLOC `flags` *(extension, bit 8)*: no targets follow; the grants are parked (§3.5).
pub const ALLOC_FLAG_PARKED: u8 = 1 << 2;
/// ALLOC `flags` *(extension, bit 10)*: `num_targets` targets follow; the granted vectors
/// are spread over them (§4.5).
pub const ALLOC_FLAG_SPREAD: u8 = 1 << 3;
/// ALLOC `flags` *(extension, bit 11)*: with `ANY_INDEX`, the chosen indices form one run.
pub const ALLOC_FLAG_ANY_CONTIGUOUS: u8 = 1 << 4;
/// Every ALLOC flag version 1 defines.
pub const ALLOC_FLAGS_DEFINED: u8 = ALLOC_FLAG_ANY_INDEX | ALLOC_FLAG_PASID;

/// FREE and RETARGET `flags` *(extension, bit 12)*: `count` indices (4 bytes each) follow
/// the body instead of naming a run (§4.6, §4.7).
pub const RANGE_FLAG_LIST: u8 = 1 << 0;
/// RETARGET `flags` *(extension, bit 8)*: no targets follow; the named grants are parked.
pub const RANGE_FLAG_PARK: u8 = 1 << 1;

/// Grant record `grant_flags` *(extension, bit 6)*: the grant has no target (§4.5).
pub const GRANT_FLAG_PARKED: u8 = 1 << 0;
/// Grant record `grant_flags` *(extension, bit 6)*: `pasid` is valid.
pub const GRANT_FLAG_PASID: u8 = 1 << 1;

/// QUERY `identity_flags` *(extension, bit 6)*: the device is an assignable interface of a
/// scalable device, told apart from its siblings by `pasid` (§4.4).
pub const IDENTITY_FLAG_PASID_VALID: u8 = 1 << 0;
/// QUERY `identity_flags` *(extension, bit 6)*: the host can post this device's grants.
pub const IDENTITY_FLAG_CAN_POST: u8 = 1 << 1;

/// Event `device` of a LIMITS event about the whole VM (§12).
pub const EVENT_DEVICE_VM: u32 = 0xFFFF_FFFF;

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

/// ALLOC body, after the header; followed by the targets: `max_count` of them, or
/// `num_targets` with `SPREAD`, or none with `PARKED`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct AllocBody {
    /// [`crate::Kind`].
    pub kind: u8,
    /// `ALLOC_FLAG_*`.
    pub flags: u8,
    /// With `SPREAD`: the number of targets. Otherwise 0 (version 1: `reserved`).
    pub num_targets: Le16,
    /// First table index (0 when `ANY_INDEX`).
    pub first_index: Le32,
    /// Fewest vectors the driver accepts.
    pub min_count: Le16,
    /// Most vectors the driver wants; also the number of targets that follow, unless
    /// `SPREAD` or `PARKED` says otherwise.
    pub max_count: Le16,
    /// PASID (20 bits) when `flags` has `PASID`, else 0.
    pub pasid: Le32,
}

/// FREE and RETARGET body: a run of indices, or with `LIST` the count of the index list
/// that follows. RETARGET is then followed by `count` targets, unless `PARK`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct RangeBody {
    /// [`crate::Kind`].
    pub kind: u8,
    /// `RANGE_FLAG_*`, when `INDEX_LIST` or `PARKED` was negotiated; else reserved, 0
    /// (version 1: `reserved0`).
    pub flags: u8,
    /// Must be 0.
    pub reserved1: Le16,
    /// First index of the run; 0 with `LIST`.
    pub first_index: Le32,
    /// Length of the run, or of the index list.
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
    /// The destination CPU: a vCPU index `0..num_vcpus`, or with the `APIC_ID` feature an
    /// x2APIC ID (version 1 names this field `vcpu`).
    pub dest: Le32,
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

/// One granted vector in an ALLOC reply with the `INFO` feature: 24 bytes, the 16 of
/// [`WireGrant`] followed by the grant's mode, flags and PASID (spec §4.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct WireGrantInfo {
    /// The version-1 record.
    pub grant: WireGrant,
    /// [`crate::GrantMode`].
    pub mode: u8,
    /// `GRANT_FLAG_*`.
    pub grant_flags: u8,
    /// Must be 0.
    pub reserved: Le16,
    /// With `GRANT_FLAG_PASID`: the PASID the grant was made for; else 0.
    pub pasid: Le32,
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

/// The 40 bytes the `INFO` feature appends to the QUERY body (spec §4.4, offsets 24–63).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct QueryBodyExt {
    /// PCI segment, as the guest enumerates the device.
    pub segment: Le16,
    /// PCI bus, as the guest enumerates it.
    pub bus: u8,
    /// `device << 3 | function`, as the guest enumerates it.
    pub devfn: u8,
    /// The requester ID the guest's view of the device uses.
    pub requester_id: Le16,
    /// [`crate::MessageFormat`].
    pub format: u8,
    /// `IDENTITY_FLAG_*`.
    pub identity_flags: u8,
    /// With `IDENTITY_FLAG_PASID_VALID`: the interface's PASID; else 0.
    pub pasid: Le32,
    /// The device's share (§3.7).
    pub share: Le32,
    /// Longest run of consecutive free MSI-X indices.
    pub msix_free_run: Le16,
    /// Must be 0.
    pub reserved0: Le16,
    /// Longest run of consecutive free IMS slots.
    pub ims_free_run: Le32,
    /// Interrupts dropped for the device's parked grants (saturating).
    pub parked_drops: Le32,
    /// Must be 0.
    pub reserved1: [u8; 12],
}

/// An event record on the event queue *(extension, bit 9)*: 32 bytes (spec §12).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct WireEvent {
    /// [`crate::EventType`].
    pub event_type: u8,
    /// REPROGRAM, REVOKE: the grant's [`crate::Kind`]; else 0.
    pub kind: u8,
    /// REPROGRAM: the grant's [`crate::GrantMode`]; REVOKE: a [`crate::Resource`]; else 0.
    pub detail: u8,
    /// Must be 0.
    pub reserved: u8,
    /// The device handle; [`EVENT_DEVICE_VM`] for a LIMITS event about the whole VM.
    pub device: Le32,
    /// 1 for the first event after DRIVER_OK, then one more per event (modulo 2^32).
    pub sequence: Le32,
    /// REPROGRAM, REVOKE: the grant's index; else 0.
    pub index: Le32,
    /// LIMITS: the new limit; AVAILABLE: the count an ALLOC could be granted; else 0.
    pub value: Le32,
    /// REPROGRAM: the new message's address, low 32 bits; else 0.
    pub address_lo: Le32,
    /// REPROGRAM: the new message's address, high 32 bits; else 0.
    pub address_hi: Le32,
    /// REPROGRAM: the new message's data; else 0.
    pub data: Le32,
}

/// Reads a `T` at `offset` of `bytes`, or reports how many bytes were needed.
pub(crate) fn read<T: Pod>(bytes: &[u8], offset: usize) -> Result<T, Error> {
    let end = offset.saturating_add(core::mem::size_of::<T>());
    bytes
        .get(offset..end)
        .map(bytemuck::pod_read_unaligned)
        .ok_or(Error::TooShort {
            needed: end,
            got: bytes.len(),
        })
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
    unsafe impl vm_memory::ByteValued for WireGrantInfo {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for QueryBody {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for QueryBodyExt {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for WireEvent {}
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
        assert_eq!(size_of::<WireGrantInfo>(), 24);
        assert_eq!(size_of::<QueryBodyExt>(), 40);
        assert_eq!(size_of::<WireEvent>(), 32);
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

    #[test]
    fn extension_fields_sit_at_spec_offsets() {
        let ext = QueryBodyExt {
            segment: Le16::new(0x0201),
            bus: 3,
            devfn: 4,
            requester_id: Le16::new(0x0605),
            format: 7,
            identity_flags: 8,
            pasid: Le32::new(0x0c0b_0a09),
            share: Le32::new(0x100f_0e0d),
            msix_free_run: Le16::new(0x1211),
            reserved0: Le16::new(0),
            ims_free_run: Le32::new(0x1817_1615),
            parked_drops: Le32::new(0x1c1b_1a19),
            reserved1: [0; 12],
        };
        let bytes = bytemuck::bytes_of(&ext);
        // Offsets 24.. of the QUERY body, as the spec's table gives them.
        assert_eq!(
            &bytes[..16],
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
        );
        assert_eq!(&bytes[16..18], &[0x11, 0x12]);
        assert_eq!(
            &bytes[20..28],
            &[0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c]
        );
        let record = WireGrantInfo {
            mode: 1,
            grant_flags: 2,
            pasid: Le32::new(0x1413_1211),
            ..WireGrantInfo::default()
        };
        let bytes = bytemuck::bytes_of(&record);
        assert_eq!(&bytes[16..24], &[1, 2, 0, 0, 0x11, 0x12, 0x13, 0x14]);
        let event = WireEvent {
            event_type: 1,
            kind: 2,
            detail: 3,
            device: Le32::new(4),
            sequence: Le32::new(5),
            index: Le32::new(6),
            value: Le32::new(7),
            address_lo: Le32::new(8),
            address_hi: Le32::new(9),
            data: Le32::new(10),
            ..WireEvent::default()
        };
        let bytes = bytemuck::bytes_of(&event);
        assert_eq!(&bytes[..4], &[1, 2, 3, 0]);
        for (offset, value) in [(4, 4), (8, 5), (12, 6), (16, 7), (20, 8), (24, 9), (28, 10)] {
            assert_eq!(bytes[offset], value, "offset {offset}");
        }
    }
}
