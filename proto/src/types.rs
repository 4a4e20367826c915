//! The protocol's enumerations: opcodes, interrupt kinds, statuses, resources, fields,
//! message formats, delivery modes and event types, and QUERY's set of kinds.

use core::fmt;

/// Declares a `u8`-coded enum with its wire value, its canonical lower-case name (used in
/// the test vectors and logs) and a checked conversion from the wire byte.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value from its wire byte, or `None` for a byte this version does not define.
            pub const fn from_wire(byte: u8) -> Option<Self> {
                match byte {
                    $( $value => Some($name::$variant), )+
                    _ => None,
                }
            }

            /// The wire byte.
            pub const fn to_wire(self) -> u8 {
                self as u8
            }

            /// The canonical name used by the spec's test vectors.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// The value with the canonical name `text`.
            pub fn from_name(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.name() == text)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

wire_enum! {
    /// The operation a request asks for (spec §4).
    Opcode {
        /// Report a device's limits, its granted count and the VM's remaining quota.
        Query = 1 => "query",
        /// Reserve and grant vectors.
        Alloc = 2 => "alloc",
        /// Release granted vectors.
        Free = 3 => "free",
        /// Move granted vectors to new destinations without changing their messages.
        Retarget = 4 => "retarget",
        /// Release every vector granted to one device.
        Reset = 5 => "reset",
    }
}

wire_enum! {
    /// The interrupt mechanism a vector belongs to (spec §3.1).
    Kind {
        /// Multi-message MSI: a power-of-two block of 1 to 32 vectors behind one capability.
        Msi = 1 => "msi",
        /// An MSI-X table entry.
        MsiX = 2 => "msix",
        /// An IMS slot (device-specific message storage, optionally tagged with a PASID).
        Ims = 3 => "ims",
    }
}

wire_enum! {
    /// The outcome of a request (spec §5).
    Status {
        /// Done; the body carries the result.
        Ok = 0 => "ok",
        /// A resource ran out; `detail` names it and `info` says how many were available.
        NoSpace = 1 => "no-space",
        /// The request is malformed; `detail` names the field, `info` the entry.
        BadRequest = 2 => "bad-request",
        /// The opcode, kind or feature is not offered or not negotiated; `detail` names the field.
        Unsupported = 3 => "unsupported",
        /// The device handle names no device of this VM.
        NoDevice = 4 => "no-device",
        /// An index lies outside the device's table; `info` is the first such index.
        IndexOutOfRange = 5 => "index-out-of-range",
        /// An index is already granted; `info` is the first such index.
        IndexInUse = 6 => "index-in-use",
        /// FREE or RETARGET named an index not granted to this device; `info` is the first.
        NotGranted = 7 => "not-granted",
        /// A destination names no vCPU or an unusable vector; `detail` the field, `info` the entry.
        InvalidTarget = 8 => "invalid-target",
        /// The count exceeds the device's `max_batch`; `info` is `max_batch`.
        BatchTooLarge = 9 => "batch-too-large",
        /// The writable part of the chain cannot hold the reply; `info` is the bytes needed.
        ResponseTooSmall = 10 => "response-too-small",
        /// The host failed internally; nothing changed; `detail` names the resource layer.
        DeviceError = 11 => "device-error",
    }
}

wire_enum! {
    /// A host resource a grant consumes (spec §3.3), named by NO_SPACE and DEVICE_ERROR.
    Resource {
        /// No particular resource.
        None = 0 => "none",
        /// The VM's vector quota.
        VmQuota = 1 => "vm-quota",
        /// Free entries of the device's own table (MSI-X entries, IMS slots, the MSI block).
        DeviceSlots = 2 => "device-slots",
        /// Interrupt-remapping table entries of the IOMMU unit serving the device.
        Irte = 3 => "irte",
        /// Host CPU vectors.
        HostVector = 4 => "host-vector",
        /// Guest delivery routes (for KVM: GSI routes of this VM).
        GuestRoute = 5 => "guest-route",
        /// *(extension, bit 6)* Enough remapping entries are free, but no naturally aligned
        /// block of the size an MSI block needs. A version-1 driver is told `irte`.
        IrteFragmented = 6 => "irte-fragmented",
        /// *(extension, bit 6)* Enough device slots are free, but no run of consecutive ones
        /// as long as `ANY_CONTIGUOUS` needs. A version-1 driver is told `device-slots`.
        SlotsFragmented = 7 => "slots-fragmented",
        /// *(extension, bit 6)* The assigned device's share (spec §3.7). A version-1 driver
        /// is told `vm-quota`.
        DeviceShare = 8 => "device-share",
        /// *(extension, bit 6; events only)* The assigned device was removed (spec §12).
        DeviceRemoved = 9 => "device-removed",
    }
}

impl Resource {
    /// Whether only a driver that negotiated [`crate::feature::INFO`] may be told this
    /// resource (codes 6–9, spec §3.3).
    pub const fn needs_info(self) -> bool {
        self as u8 >= Resource::IrteFragmented as u8
    }

    /// Whether a response (NO_SPACE, DEVICE_ERROR) may name this resource: every one but
    /// `device-removed`, which only events carry (spec §3.3).
    pub const fn in_responses(self) -> bool {
        !matches!(self, Resource::DeviceRemoved)
    }

    /// What a driver that negotiated `features` is told for this resource (spec §3.3): the
    /// resource itself with [`crate::feature::INFO`]; without it, a cause version 1 does not
    /// tell apart is reported under version 1's code (`irte-fragmented` as `irte`,
    /// `slots-fragmented` as `device-slots`, `device-share` as `vm-quota`), and
    /// `device-removed`, which a version-1 driver is never told, as `none`.
    pub const fn for_features(self, features: u64) -> Resource {
        if features & crate::feature::INFO != 0 {
            return self;
        }
        match self {
            Resource::IrteFragmented => Resource::Irte,
            Resource::SlotsFragmented => Resource::DeviceSlots,
            Resource::DeviceShare => Resource::VmQuota,
            Resource::DeviceRemoved => Resource::None,
            other => other,
        }
    }
}

wire_enum! {
    /// What the messages of an assigned device's grants are (spec §3.2): how the host's
    /// interrupt hardware, or the VMM, recognises them.
    MessageFormat {
        /// VT-d remappable format: the address carries an IRTE handle (version 1's format).
        VtdRemappable = 1 => "vtd-remappable",
        /// AMD IOMMU: compatibility-format address, data = index into the device's own
        /// interrupt-remapping table.
        AmdRemapped = 2 => "amd-remapped",
        /// A token the VMM recognises in its trapped emulation of the device's table; not
        /// a hardware message (the VFIO case, where the host kernel programs the device).
        VmmTrapped = 3 => "vmm-trapped",
    }
}

wire_enum! {
    /// How the host delivers a grant (spec §3.4).
    GrantMode {
        /// Through a host CPU vector, which forwards it to the guest route.
        Remapped = 0 => "remapped",
        /// Posted: the IRTE points at the target vCPU's posted-interrupt descriptor; no host
        /// vector is consumed.
        Posted = 1 => "posted",
    }
}

wire_enum! {
    /// A request field, named by BAD_REQUEST, UNSUPPORTED and INVALID_TARGET (spec §5).
    Field {
        /// No particular field.
        None = 0 => "none",
        /// The length of the readable part of the chain.
        Length = 1 => "length",
        /// `opcode`.
        Opcode = 2 => "opcode",
        /// A reserved field of the request header.
        HeaderReserved = 3 => "header-reserved",
        /// `kind`.
        Kind = 4 => "kind",
        /// `flags`.
        Flags = 5 => "flags",
        /// A reserved field of the operation body.
        BodyReserved = 6 => "body-reserved",
        /// `first_index`.
        FirstIndex = 7 => "first-index",
        /// `min_count`, `max_count` or `count`.
        Count = 8 => "count",
        /// `pasid`.
        Pasid = 9 => "pasid",
        /// A target's `vcpu`.
        TargetVcpu = 10 => "target-vcpu",
        /// A target's `vector`.
        TargetVector = 11 => "target-vector",
        /// A target's reserved bytes.
        TargetReserved = 12 => "target-reserved",
        /// *(extension, bit 6)* ALLOC's `num_targets`.
        NumTargets = 13 => "num-targets",
        /// *(extension, bit 6)* An index-list entry not greater than the one before it.
        IndexList = 14 => "index-list",
    }
}

impl Field {
    /// Whether only a driver that negotiated [`crate::feature::INFO`] may be told this
    /// field (codes 13–14, spec §5.2).
    pub const fn needs_info(self) -> bool {
        self as u8 >= Field::NumTargets as u8
    }
}

wire_enum! {
    /// What an event reports (spec §12).
    EventType {
        /// A grant now has another message, carried in the event.
        Reprogram = 1 => "reprogram",
        /// A grant no longer exists, for the reason the event names.
        Revoke = 2 => "revoke",
        /// The VM's quota or one device's share changed.
        Limits = 3 => "limits",
        /// An ALLOC that was refused NO_SPACE could now be granted.
        Available = 4 => "available",
        /// A new assigned device has a handle.
        DeviceAdded = 5 => "device-added",
        /// An assigned device is gone, with every grant it had.
        DeviceRemoved = 6 => "device-removed",
    }
}

/// A set of [`Kind`]s, as carried by QUERY's `kinds` bitmap (bit `kind - 1`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KindSet(u8);

impl KindSet {
    /// The empty set.
    pub const EMPTY: KindSet = KindSet(0);
    /// Mask of the bits protocol version 1 defines.
    pub const DEFINED_BITS: u32 = 0b111;

    const fn bit(kind: Kind) -> u8 {
        1 << (kind as u8 - 1)
    }

    /// This set with `kind` added.
    pub const fn with(self, kind: Kind) -> Self {
        KindSet(self.0 | Self::bit(kind))
    }

    /// Whether `kind` is in the set.
    pub const fn contains(self, kind: Kind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    /// The wire bitmap.
    pub const fn bits(self) -> u32 {
        self.0 as u32
    }

    /// The set from a wire bitmap, or `None` if a bit this version does not define is set.
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !Self::DEFINED_BITS != 0 {
            None
        } else {
            Some(KindSet(bits as u8))
        }
    }

    /// The kinds in the set, in wire order.
    pub fn iter(self) -> impl Iterator<Item = Kind> {
        Kind::ALL.iter().copied().filter(move |k| self.contains(*k))
    }
}

impl fmt::Debug for KindSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for KindSet {
    /// Canonical text: kind names joined by `|`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        for (i, kind) in self.iter().enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            f.write_str(kind.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_enum_round_trips_through_its_wire_byte_and_name() {
        for op in Opcode::ALL {
            assert_eq!(Opcode::from_wire(op.to_wire()), Some(*op));
            assert_eq!(Opcode::from_name(op.name()), Some(*op));
        }
        for s in Status::ALL {
            assert_eq!(Status::from_wire(s.to_wire()), Some(*s));
        }
        for r in Resource::ALL {
            assert_eq!(Resource::from_name(r.name()), Some(*r));
        }
        for fld in Field::ALL {
            assert_eq!(Field::from_wire(fld.to_wire()), Some(*fld));
        }
        assert_eq!(Opcode::from_wire(0), None);
        assert_eq!(Kind::from_wire(4), None);
        assert_eq!(Status::from_wire(12), None);
    }

    #[test]
    fn kind_set_rejects_undefined_bits_and_prints_canonically() {
        let set = KindSet::EMPTY.with(Kind::Msi).with(Kind::Ims);
        assert_eq!(set.bits(), 0b101);
        assert!(set.contains(Kind::Ims) && !set.contains(Kind::MsiX));
        assert_eq!(KindSet::from_bits(0b1000), None);
        assert_eq!(format!("{set}"), "msi|ims");
        assert_eq!(format!("{}", KindSet::EMPTY), "none");
    }

    #[test]
    fn extended_codes_map_to_what_a_version_1_driver_is_told() {
        use crate::feature;
        for r in Resource::ALL {
            assert_eq!(r.for_features(feature::ALL), *r);
            let v1 = r.for_features(feature::V1);
            assert!(!v1.needs_info(), "{r} reaches a version-1 driver as {v1}");
            if !r.needs_info() {
                assert_eq!(v1, *r);
            }
        }
        assert_eq!(Resource::IrteFragmented.for_features(0), Resource::Irte);
        assert_eq!(
            Resource::SlotsFragmented.for_features(feature::V1),
            Resource::DeviceSlots
        );
        assert_eq!(Resource::DeviceShare.for_features(0), Resource::VmQuota);
        assert_eq!(Resource::DeviceRemoved.for_features(0), Resource::None);
        assert!(Field::NumTargets.needs_info() && Field::IndexList.needs_info());
        assert!(!Field::TargetReserved.needs_info());
        assert_eq!(Field::from_wire(15), None);
        assert_eq!(Resource::from_wire(10), None);
        assert_eq!(
            EventType::from_name("device-added"),
            Some(EventType::DeviceAdded)
        );
        assert_eq!(EventType::from_wire(0), None);
        assert_eq!(EventType::from_wire(7), None);
    }
}
