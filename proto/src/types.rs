//! The protocol's enumerations: opcodes, interrupt kinds, statuses, resources and fields.

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

/// Why a request was refused: a non-OK [`Status`] with its typed details (spec §5).
///
/// This is what a driver acts on; [`Refusal::to_wire`] and [`Refusal::from_wire`] map it to
/// and from the response header's `status`, `detail` and `info` fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `resource` ran out; at most `available` vectors could have been granted.
    NoSpace {
        /// The resource that was short.
        resource: Resource,
        /// How many vectors the request could have had.
        available: u32,
    },
    /// The request is malformed.
    BadRequest {
        /// The offending field.
        field: Field,
        /// For a per-target field, the target's position; otherwise 0.
        entry: u32,
    },
    /// The opcode, kind or feature is not offered or not negotiated.
    Unsupported {
        /// The field that asked for it.
        field: Field,
    },
    /// No such device behind this channel.
    NoDevice,
    /// `index` is outside the device's table.
    IndexOutOfRange {
        /// The first offending index.
        index: u32,
    },
    /// `index` is already granted.
    IndexInUse {
        /// The first offending index.
        index: u32,
    },
    /// `index` is not granted to this device.
    NotGranted {
        /// The first offending index.
        index: u32,
    },
    /// A destination is unusable.
    InvalidTarget {
        /// `TargetVcpu` or `TargetVector`.
        field: Field,
        /// The target's position in the request.
        entry: u32,
    },
    /// The count exceeds `max_batch`.
    BatchTooLarge {
        /// The device's `max_batch`.
        max_batch: u32,
    },
    /// The reply does not fit the writable buffers.
    ResponseTooSmall {
        /// Bytes the reply needs.
        needed: u32,
    },
    /// The host failed internally; nothing changed.
    DeviceError {
        /// The resource layer that failed.
        resource: Resource,
    },
}

impl Refusal {
    /// The status this refusal travels as.
    pub const fn status(&self) -> Status {
        match self {
            Refusal::NoSpace { .. } => Status::NoSpace,
            Refusal::BadRequest { .. } => Status::BadRequest,
            Refusal::Unsupported { .. } => Status::Unsupported,
            Refusal::NoDevice => Status::NoDevice,
            Refusal::IndexOutOfRange { .. } => Status::IndexOutOfRange,
            Refusal::IndexInUse { .. } => Status::IndexInUse,
            Refusal::NotGranted { .. } => Status::NotGranted,
            Refusal::InvalidTarget { .. } => Status::InvalidTarget,
            Refusal::BatchTooLarge { .. } => Status::BatchTooLarge,
            Refusal::ResponseTooSmall { .. } => Status::ResponseTooSmall,
            Refusal::DeviceError { .. } => Status::DeviceError,
        }
    }

    /// The header fields `(status, detail, info)` that carry this refusal.
    pub const fn to_wire(&self) -> (u8, u8, u32) {
        let (detail, info) = match *self {
            Refusal::NoSpace {
                resource,
                available,
            } => (resource as u8, available),
            Refusal::BadRequest { field, entry } => (field as u8, entry),
            Refusal::Unsupported { field } => (field as u8, 0),
            Refusal::NoDevice => (0, 0),
            Refusal::IndexOutOfRange { index }
            | Refusal::IndexInUse { index }
            | Refusal::NotGranted { index } => (0, index),
            Refusal::InvalidTarget { field, entry } => (field as u8, entry),
            Refusal::BatchTooLarge { max_batch } => (0, max_batch),
            Refusal::ResponseTooSmall { needed } => (0, needed),
            Refusal::DeviceError { resource } => (resource as u8, 0),
        };
        (self.status() as u8, detail, info)
    }

    /// The refusal carried by a header's `(status, detail, info)`.
    ///
    /// `None` when the status is OK, unknown, or `detail`/`info` hold a value the status does
    /// not allow (a `detail` that must be 0 and is not counts as malformed).
    pub fn from_wire(status: u8, detail: u8, info: u32) -> Option<Refusal> {
        let resource = || Resource::from_wire(detail);
        let field = || Field::from_wire(detail);
        let no_detail = |r: Refusal| (detail == 0).then_some(r);
        match Status::from_wire(status)? {
            Status::Ok => None,
            Status::NoSpace => Some(Refusal::NoSpace {
                resource: resource()?,
                available: info,
            }),
            Status::BadRequest => Some(Refusal::BadRequest {
                field: field()?,
                entry: info,
            }),
            Status::Unsupported => (info == 0).then_some(Refusal::Unsupported { field: field()? }),
            Status::NoDevice => (info == 0).then_some(()).and(no_detail(Refusal::NoDevice)),
            Status::IndexOutOfRange => no_detail(Refusal::IndexOutOfRange { index: info }),
            Status::IndexInUse => no_detail(Refusal::IndexInUse { index: info }),
            Status::NotGranted => no_detail(Refusal::NotGranted { index: info }),
            Status::InvalidTarget => Some(Refusal::InvalidTarget {
                field: field()?,
                entry: info,
            }),
            Status::BatchTooLarge => no_detail(Refusal::BatchTooLarge { max_batch: info }),
            Status::ResponseTooSmall => no_detail(Refusal::ResponseTooSmall { needed: info }),
            Status::DeviceError => (info == 0).then_some(Refusal::DeviceError {
                resource: resource()?,
            }),
        }
    }
}

impl fmt::Display for Refusal {
    /// Canonical text, as used by the test vectors: the status name then its details.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.status();
        match *self {
            Refusal::NoSpace {
                resource,
                available,
            } => {
                write!(f, "{status} resource={resource} available={available}")
            }
            Refusal::BadRequest { field, entry } => {
                write!(f, "{status} field={field} entry={entry}")
            }
            Refusal::Unsupported { field } => write!(f, "{status} field={field}"),
            Refusal::NoDevice => write!(f, "{status}"),
            Refusal::IndexOutOfRange { index }
            | Refusal::IndexInUse { index }
            | Refusal::NotGranted { index } => write!(f, "{status} index={index}"),
            Refusal::InvalidTarget { field, entry } => {
                write!(f, "{status} field={field} entry={entry}")
            }
            Refusal::BatchTooLarge { max_batch } => write!(f, "{status} max_batch={max_batch}"),
            Refusal::ResponseTooSmall { needed } => write!(f, "{status} needed={needed}"),
            Refusal::DeviceError { resource } => write!(f, "{status} resource={resource}"),
        }
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
    fn refusals_round_trip_and_detail_must_be_zero_where_unused() {
        let all = [
            Refusal::NoSpace {
                resource: Resource::Irte,
                available: 3,
            },
            Refusal::BadRequest {
                field: Field::TargetReserved,
                entry: 9,
            },
            Refusal::Unsupported { field: Field::Kind },
            Refusal::NoDevice,
            Refusal::IndexOutOfRange { index: 70 },
            Refusal::IndexInUse { index: 1 },
            Refusal::NotGranted { index: 2 },
            Refusal::InvalidTarget {
                field: Field::TargetVcpu,
                entry: 4,
            },
            Refusal::BatchTooLarge { max_batch: 256 },
            Refusal::ResponseTooSmall { needed: 88 },
            Refusal::DeviceError {
                resource: Resource::GuestRoute,
            },
        ];
        for refusal in all {
            let (s, d, i) = refusal.to_wire();
            assert_eq!(Refusal::from_wire(s, d, i), Some(refusal), "{refusal}");
        }
        assert_eq!(Refusal::from_wire(Status::NoDevice as u8, 1, 0), None);
        assert_eq!(Refusal::from_wire(Status::IndexInUse as u8, 2, 5), None);
        assert_eq!(Refusal::from_wire(Status::NoSpace as u8, 99, 5), None);
        assert_eq!(Refusal::from_wire(Status::Ok as u8, 0, 0), None);
    }
}
