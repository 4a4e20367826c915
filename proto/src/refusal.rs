//! Why a request was refused: a non-OK status with its typed details (spec §5).

use crate::types::{Field, Resource, Status};
use core::fmt;

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
    /// not allow (a `detail` that must be 0 and is not counts as malformed, and so does the
    /// events-only resource `device-removed`). The extended codes (resources 6–8, fields
    /// 13–14) are accepted here; whether the driver may be told them is
    /// [`Refusal::needs_info`].
    pub fn from_wire(status: u8, detail: u8, info: u32) -> Option<Refusal> {
        let resource = || Resource::from_wire(detail).filter(|r| r.in_responses());
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

impl Refusal {
    /// Whether the refusal names a code only a driver that negotiated
    /// [`crate::feature::INFO`] may be told (resources 6–9, fields 13–14).
    pub const fn needs_info(&self) -> bool {
        match *self {
            Refusal::NoSpace { resource, .. } | Refusal::DeviceError { resource } => {
                resource.needs_info()
            }
            Refusal::BadRequest { field, .. }
            | Refusal::Unsupported { field }
            | Refusal::InvalidTarget { field, .. } => field.needs_info(),
            _ => false,
        }
    }

    /// What a driver that negotiated `features` is told (spec §3.3, §5.2): the refusal
    /// itself with [`crate::feature::INFO`]; without it, an extended resource becomes
    /// version 1's code ([`Resource::for_features`]). The extended fields cannot arise from
    /// a request decoded under a valid feature set without `INFO`; should they, they become
    /// the field whose bytes carry the extension in version 1: `num-targets` is
    /// `body-reserved` and `index-list` is `flags` (entry 0).
    pub const fn for_features(self, features: u64) -> Refusal {
        if features & crate::feature::INFO != 0 {
            return self;
        }
        match self {
            Refusal::NoSpace {
                resource,
                available,
            } => Refusal::NoSpace {
                resource: resource.for_features(features),
                available,
            },
            Refusal::DeviceError { resource } => Refusal::DeviceError {
                resource: resource.for_features(features),
            },
            Refusal::BadRequest {
                field: Field::NumTargets,
                entry,
            } => Refusal::BadRequest {
                field: Field::BodyReserved,
                entry,
            },
            Refusal::BadRequest {
                field: Field::IndexList,
                ..
            } => Refusal::BadRequest {
                field: Field::Flags,
                entry: 0,
            },
            other => other,
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
        assert_eq!(Refusal::from_wire(Status::NoSpace as u8, 9, 0), None);
        assert_eq!(Refusal::from_wire(Status::DeviceError as u8, 9, 0), None);
    }

    #[test]
    fn extended_refusals_reach_a_version_1_driver_as_version_1_codes() {
        use crate::feature;
        let share = Refusal::NoSpace {
            resource: Resource::DeviceShare,
            available: 2,
        };
        assert!(share.needs_info());
        assert_eq!(share.for_features(feature::ALL), share);
        assert_eq!(
            share.for_features(feature::V1),
            Refusal::NoSpace {
                resource: Resource::VmQuota,
                available: 2
            }
        );
        let list = Refusal::BadRequest {
            field: Field::IndexList,
            entry: 3,
        };
        assert!(list.needs_info());
        assert_eq!(
            list.for_features(feature::V1),
            Refusal::BadRequest {
                field: Field::Flags,
                entry: 0
            }
        );
        let num = Refusal::BadRequest {
            field: Field::NumTargets,
            entry: 0,
        };
        assert_eq!(
            num.for_features(0),
            Refusal::BadRequest {
                field: Field::BodyReserved,
                entry: 0
            }
        );
        for r in [share, list, num] {
            assert!(!r.for_features(feature::V1).needs_info());
            let (s, d, i) = r.to_wire();
            assert_eq!(Refusal::from_wire(s, d, i), Some(r));
        }
        assert!(!Refusal::NoDevice.needs_info());
        assert_eq!(Refusal::NoDevice.for_features(0), Refusal::NoDevice);
    }
}
