//! Feature bits (spec §2.2) and their dependencies.
//!
//! Device-specific bits are 0–23 and 50–127 (bits above 63 do not exist in a `u64` feature
//! word and are never offered). Bits 0–4 are version 1's; bits 5–12 and virtio's
//! `ACCESS_PLATFORM` (33) are the extensions: a driver that accepts none of them is a
//! *version-1 driver* and gets version 1's bytes and answers (spec §2.2 [DEV-24]).

/// The device can grant multi-message MSI blocks.
pub const MSI: u64 = 1 << 0;
/// The device can grant MSI-X table entries.
pub const MSIX: u64 = 1 << 1;
/// The device can grant IMS (Interrupt Message Store) slots.
pub const IMS: u64 = 1 << 2;
/// IMS requests may carry a PASID. Needs [`IMS`].
pub const PASID: u64 = 1 << 3;
/// The RETARGET operation is available.
pub const RETARGET: u64 = 1 << 4;
/// Targets name x2APIC IDs instead of vCPU indices (spec §4.5).
pub const APIC_ID: u64 = 1 << 5;
/// Extended QUERY body, 24-byte grant records, resource codes 6–9 and field codes 13–14
/// (spec §3.3, §4.4, §4.5, §5.2).
pub const INFO: u64 = 1 << 6;
/// The device may grant posted interrupts (spec §3.4). Needs [`INFO`].
pub const POSTED: u64 = 1 << 7;
/// ALLOC flag `PARKED` and RETARGET flag `PARK`; RETARGET activates (spec §3.5). Needs
/// [`INFO`].
pub const PARKED: u64 = 1 << 8;
/// The event queue (spec §12); the configuration may change (§2.4). Needs [`INFO`].
pub const EVENTS: u64 = 1 << 9;
/// ALLOC flag `SPREAD`: the granted vectors are spread over a target set (spec §4.5).
/// Needs [`INFO`].
pub const SPREAD: u64 = 1 << 10;
/// ALLOC flag `ANY_CONTIGUOUS` (spec §4.5). Needs [`INFO`].
pub const CONTIGUOUS: u64 = 1 << 11;
/// FREE and RETARGET flag `LIST`: a list of indices instead of a run (spec §4.6, §4.7).
/// Needs [`INFO`].
pub const INDEX_LIST: u64 = 1 << 12;
/// virtio 1.x device (required).
pub const VERSION_1: u64 = 1 << 32;
/// virtio's `VIRTIO_F_ACCESS_PLATFORM`: the device reaches guest memory through the
/// platform's DMA translation (confidential VMs, a vIOMMU); the driver then treats the
/// device as untrusted (spec §8).
pub const ACCESS_PLATFORM: u64 = 1 << 33;

/// Every bit protocol version 1 defined: what a version-1 driver may accept.
pub const V1: u64 = MSI | MSIX | IMS | PASID | RETARGET | VERSION_1;

/// The extension bits (5–12 and 33): a driver that accepts none of them is a version-1
/// driver (spec §2.2).
pub const EXTENSIONS: u64 =
    APIC_ID | INFO | POSTED | PARKED | EVENTS | SPREAD | CONTIGUOUS | INDEX_LIST | ACCESS_PLATFORM;

/// Every feature bit this crate knows.
pub const ALL: u64 = V1 | EXTENSIONS;

/// The device-specific bits the protocol defines (0–12).
pub const DEVICE_DEFINED: u64 = (1 << 13) - 1;

/// Device-specific bits reserved for later versions (13–23 and 50–63 of the feature word):
/// never offered, never accepted.
pub const RESERVED: u64 = (((1 << 24) - 1) & !DEVICE_DEFINED) | !((1 << 50) - 1);

/// Each bit with a prerequisite, and the bit it needs (spec §2.2, the *needs* column), in
/// bit order.
pub const DEPENDENCIES: [(u64, u64); 7] = [
    (PASID, IMS),
    (POSTED, INFO),
    (PARKED, INFO),
    (EVENTS, INFO),
    (SPREAD, INFO),
    (CONTIGUOUS, INFO),
    (INDEX_LIST, INFO),
];

/// The lowest bit of `features` whose prerequisite `features` lacks, or `None` when every
/// dependency holds. A device refuses FEATURES_OK for such a set (spec §2.2 [DEV-23]).
pub const fn missing_dependency(features: u64) -> Option<u64> {
    let mut rest: &[(u64, u64)] = &DEPENDENCIES;
    while let [(bit, needs), tail @ ..] = rest {
        if features & *bit != 0 && features & *needs == 0 {
            return Some(*bit);
        }
        rest = tail;
    }
    None
}

/// Whether `features` is a version-1 set: none of the extension bits (spec §2.2).
pub const fn is_v1(features: u64) -> bool {
    features & EXTENSIONS == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_distinct_and_sets_are_what_the_spec_lists() {
        let bits = [
            MSI,
            MSIX,
            IMS,
            PASID,
            RETARGET,
            APIC_ID,
            INFO,
            POSTED,
            PARKED,
            EVENTS,
            SPREAD,
            CONTIGUOUS,
            INDEX_LIST,
            VERSION_1,
            ACCESS_PLATFORM,
        ];
        assert_eq!(bits.iter().fold(0u64, |acc, b| acc | b).count_ones(), 15);
        assert_eq!(V1, 0b1_1111 | 1 << 32);
        assert_eq!(EXTENSIONS, 0b1_1111_1110_0000 | 1 << 33);
        assert_eq!(ALL & RESERVED, 0);
        assert_eq!(
            RESERVED & (1 << 24),
            0,
            "virtio's transport bits are not ours"
        );
        assert_eq!(RESERVED & (1 << 49), 0);
        assert_ne!(RESERVED & (1 << 50), 0);
        assert_ne!(RESERVED & (1 << 23), 0);
        assert_ne!(RESERVED & (1 << 13), 0);
        assert!(is_v1(V1) && !is_v1(V1 | ACCESS_PLATFORM));
    }

    #[test]
    fn dependencies_name_the_first_bit_missing_its_prerequisite() {
        assert_eq!(missing_dependency(V1), None);
        assert_eq!(missing_dependency(ALL), None);
        assert_eq!(missing_dependency(PASID), Some(PASID));
        assert_eq!(missing_dependency(ALL & !IMS), Some(PASID));
        assert_eq!(missing_dependency(ALL & !INFO & !PASID), Some(POSTED));
        assert_eq!(missing_dependency(INDEX_LIST | SPREAD), Some(SPREAD));
        assert_eq!(missing_dependency(APIC_ID | ACCESS_PLATFORM), None);
        for (bit, needs) in DEPENDENCIES {
            assert_eq!(missing_dependency(bit), Some(bit));
            assert_eq!(missing_dependency(bit | needs), None);
        }
    }
}
