//! Host events *(extension, bit 9)*: the 32-byte records the device writes, unasked, into
//! the event queue's buffers (spec §12).

use crate::error::Error;
use crate::le::Le32;
use crate::msi::MsiMessage;
use crate::types::{EventType, GrantMode, Kind, Resource};
use crate::wire::{EVENT_DEVICE_VM, WireEvent, read};
use core::fmt;
use core::mem::size_of;

/// Bytes of one event record; the device returns an event buffer with this used length.
pub const EVENT_LEN: usize = size_of::<WireEvent>();

/// What an event says, with the fields its type uses (spec §12, *Types*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventBody {
    /// The grant (`device`, `kind`, `index`) now has `message`; the driver masks, programs
    /// it, unmasks, and treats the vector as possibly having lost an interrupt.
    Reprogram {
        /// The device handle.
        device: u32,
        /// The grant's kind.
        kind: Kind,
        /// The grant's index.
        index: u32,
        /// The new message.
        message: MsiMessage,
        /// The grant's delivery mode (unchanged while it is held, spec §3.4).
        mode: GrantMode,
    },
    /// The grant no longer exists: it is freed and its quota returned.
    Revoke {
        /// The device handle.
        device: u32,
        /// The grant's kind.
        kind: Kind,
        /// The grant's index.
        index: u32,
        /// The resource the host lacked (`none`: the host refused without naming one).
        reason: Resource,
    },
    /// The VM's quota (`device` = `None`) or one device's share changed to `limit`.
    Limits {
        /// The device handle, or `None` for the whole VM (0xFFFF_FFFF on the wire).
        device: Option<u32>,
        /// The new limit.
        limit: u32,
    },
    /// An ALLOC for `device` that was refused NO_SPACE could now be granted at least the
    /// refused `min_count`.
    Available {
        /// The device handle.
        device: u32,
        /// The count an ALLOC could be granted now (advisory).
        count: u32,
    },
    /// A new assigned device has handle `device`.
    DeviceAdded {
        /// The new handle.
        device: u32,
    },
    /// The assigned device `device` is gone, with every grant it had.
    DeviceRemoved {
        /// The handle, which answers NO_DEVICE from now on.
        device: u32,
    },
}

impl EventBody {
    /// The event's type.
    pub const fn event_type(&self) -> EventType {
        match self {
            EventBody::Reprogram { .. } => EventType::Reprogram,
            EventBody::Revoke { .. } => EventType::Revoke,
            EventBody::Limits { .. } => EventType::Limits,
            EventBody::Available { .. } => EventType::Available,
            EventBody::DeviceAdded { .. } => EventType::DeviceAdded,
            EventBody::DeviceRemoved { .. } => EventType::DeviceRemoved,
        }
    }

    /// The device handle the event is about; `None` for a LIMITS event about the VM.
    pub const fn device(&self) -> Option<u32> {
        match *self {
            EventBody::Reprogram { device, .. }
            | EventBody::Revoke { device, .. }
            | EventBody::Available { device, .. }
            | EventBody::DeviceAdded { device }
            | EventBody::DeviceRemoved { device } => Some(device),
            EventBody::Limits { device, .. } => device,
        }
    }
}

/// One event: its sequence number and what it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// 1 for the first event after DRIVER_OK, then one more per event (modulo 2^32).
    pub sequence: u32,
    /// What it says.
    pub body: EventBody,
}

/// Offsets of the record's fields, for [`Error::EventFieldNotZero`].
const KIND_AT: u8 = 1;
const DETAIL_AT: u8 = 2;
const RESERVED_AT: u8 = 3;
const INDEX_AT: u8 = 12;
const VALUE_AT: u8 = 16;
const ADDRESS_LO_AT: u8 = 20;
const ADDRESS_HI_AT: u8 = 24;
const DATA_AT: u8 = 28;

/// Fails with the offset of the first non-zero field among `fields`, in record order.
fn zero(fields: &[(u8, u32)]) -> Result<(), Error> {
    match fields.iter().find(|(_, value)| *value != 0) {
        Some((offset, _)) => Err(Error::EventFieldNotZero { offset: *offset }),
        None => Ok(()),
    }
}

impl Event {
    /// Decodes and validates an event record: exactly [`EVENT_LEN`] bytes, a known type,
    /// the reserved byte and every field the type does not use 0, and for REPROGRAM and
    /// REVOKE a defined kind, mode or reason. Fields are checked in record order.
    pub fn decode(bytes: &[u8]) -> Result<Event, Error> {
        let w: WireEvent = read(bytes, 0)?;
        if bytes.len() != EVENT_LEN {
            return Err(Error::LengthMismatch {
                expected: EVENT_LEN,
                got: bytes.len(),
            });
        }
        let event_type =
            EventType::from_wire(w.event_type).ok_or(Error::UnknownEventType(w.event_type))?;
        let grant_event = matches!(event_type, EventType::Reprogram | EventType::Revoke);
        let kind = if grant_event {
            Some(Kind::from_wire(w.kind).ok_or(Error::UnknownKind(w.kind))?)
        } else {
            zero(&[(KIND_AT, u32::from(w.kind))])?;
            None
        };
        let detail = w.detail;
        match event_type {
            EventType::Reprogram if GrantMode::from_wire(detail).is_none() => {
                return Err(Error::UnknownGrantMode(detail));
            }
            EventType::Revoke if Resource::from_wire(detail).is_none() => {
                return Err(Error::UnknownResource(detail));
            }
            EventType::Reprogram | EventType::Revoke => {}
            _ => zero(&[(DETAIL_AT, u32::from(detail))])?,
        }
        zero(&[(RESERVED_AT, u32::from(w.reserved))])?;
        let (index, value) = (w.index.get(), w.value.get());
        let message = MsiMessage {
            address: u64::from(w.address_hi.get()) << 32 | u64::from(w.address_lo.get()),
            data: w.data.get(),
        };
        let message_fields = [
            (ADDRESS_LO_AT, w.address_lo.get()),
            (ADDRESS_HI_AT, w.address_hi.get()),
            (DATA_AT, w.data.get()),
        ];
        let device = w.device.get();
        // Handle 0xFFFF_FFFF is never assigned (spec §2.4): only LIMITS uses it, for the VM.
        if device == EVENT_DEVICE_VM && event_type != EventType::Limits {
            return Err(Error::AmbiguousDevice(device));
        }
        let body = match (event_type, kind) {
            (EventType::Reprogram, Some(kind)) => {
                zero(&[(VALUE_AT, value)])?;
                EventBody::Reprogram {
                    device,
                    kind,
                    index,
                    message,
                    mode: GrantMode::from_wire(detail).unwrap_or(GrantMode::Remapped),
                }
            }
            (EventType::Revoke, Some(kind)) => {
                zero(&[(VALUE_AT, value)])?;
                zero(&message_fields)?;
                EventBody::Revoke {
                    device,
                    kind,
                    index,
                    reason: Resource::from_wire(detail).unwrap_or(Resource::None),
                }
            }
            (EventType::Limits, _) => {
                zero(&[(INDEX_AT, index)])?;
                zero(&message_fields)?;
                EventBody::Limits {
                    device: (device != EVENT_DEVICE_VM).then_some(device),
                    limit: value,
                }
            }
            (EventType::Available, _) => {
                zero(&[(INDEX_AT, index)])?;
                zero(&message_fields)?;
                EventBody::Available {
                    device,
                    count: value,
                }
            }
            (EventType::DeviceAdded | EventType::DeviceRemoved, _) => {
                zero(&[(INDEX_AT, index), (VALUE_AT, value)])?;
                zero(&message_fields)?;
                if event_type == EventType::DeviceAdded {
                    EventBody::DeviceAdded { device }
                } else {
                    EventBody::DeviceRemoved { device }
                }
            }
            // REPROGRAM and REVOKE always have a kind (checked above).
            (EventType::Reprogram | EventType::Revoke, None) => {
                return Err(Error::UnknownKind(w.kind));
            }
        };
        Ok(Event {
            sequence: w.sequence.get(),
            body,
        })
    }

    /// The record. Fails only for an event about device handle 0xFFFF_FFFF, which is never
    /// assigned (spec §2.4) and which a LIMITS event uses for the whole VM.
    pub fn to_wire(&self) -> Result<WireEvent, Error> {
        let mut w = WireEvent {
            event_type: self.body.event_type().to_wire(),
            sequence: Le32::new(self.sequence),
            ..WireEvent::default()
        };
        let set_message = |w: &mut WireEvent, m: MsiMessage| {
            w.address_lo = Le32::new(m.address as u32);
            w.address_hi = Le32::new((m.address >> 32) as u32);
            w.data = Le32::new(m.data);
        };
        match self.body {
            EventBody::Reprogram {
                device,
                kind,
                index,
                message,
                mode,
            } => {
                w.kind = kind.to_wire();
                w.detail = mode.to_wire();
                w.device = Le32::new(device);
                w.index = Le32::new(index);
                set_message(&mut w, message);
            }
            EventBody::Revoke {
                device,
                kind,
                index,
                reason,
            } => {
                w.kind = kind.to_wire();
                w.detail = reason.to_wire();
                w.device = Le32::new(device);
                w.index = Le32::new(index);
            }
            EventBody::Limits { device, limit } => {
                if device == Some(EVENT_DEVICE_VM) {
                    return Err(Error::AmbiguousDevice(EVENT_DEVICE_VM));
                }
                w.device = Le32::new(device.unwrap_or(EVENT_DEVICE_VM));
                w.value = Le32::new(limit);
            }
            EventBody::Available { device, count } => {
                w.device = Le32::new(device);
                w.value = Le32::new(count);
            }
            EventBody::DeviceAdded { device } | EventBody::DeviceRemoved { device } => {
                w.device = Le32::new(device);
            }
        }
        if w.device.get() == EVENT_DEVICE_VM && !matches!(self.body, EventBody::Limits { .. }) {
            return Err(Error::AmbiguousDevice(EVENT_DEVICE_VM));
        }
        Ok(w)
    }

    /// Encodes into `buf` and returns the length written ([`EVENT_LEN`]).
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let got = buf.len();
        let out = buf.get_mut(..EVENT_LEN).ok_or(Error::BufferTooSmall {
            needed: EVENT_LEN,
            got,
        })?;
        out.copy_from_slice(bytemuck::bytes_of(&self.to_wire()?));
        Ok(EVENT_LEN)
    }
}

impl fmt::Display for Event {
    /// Canonical text (spec §7): `event seq=<n> <type> device=<n|vm>`, then the fields of
    /// the type in record order: REPROGRAM `kind= mode= index= message=<address>:<data>`,
    /// REVOKE `kind= reason= index=`, LIMITS `limit=`, AVAILABLE `count=`; DEVICE_ADDED and
    /// DEVICE_REMOVED nothing more.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event seq={} {} device=",
            self.sequence,
            self.body.event_type()
        )?;
        match self.body.device() {
            Some(device) => write!(f, "{device}")?,
            None => f.write_str("vm")?,
        }
        match self.body {
            EventBody::Reprogram {
                kind,
                index,
                message,
                mode,
                ..
            } => write!(
                f,
                " kind={kind} mode={mode} index={index} message={message}"
            ),
            EventBody::Revoke {
                kind,
                index,
                reason,
                ..
            } => write!(f, " kind={kind} reason={reason} index={index}"),
            EventBody::Limits { limit, .. } => write!(f, " limit={limit}"),
            EventBody::Available { count, .. } => write!(f, " count={count}"),
            EventBody::DeviceAdded { .. } | EventBody::DeviceRemoved { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(event: Event, text: &str) {
        let mut buf = [0u8; EVENT_LEN];
        assert_eq!(event.encode(&mut buf), Ok(EVENT_LEN));
        assert_eq!(Event::decode(&buf), Ok(event));
        assert_eq!(format!("{event}"), text);
    }

    #[test]
    fn every_type_round_trips_and_prints_canonically() {
        let message = MsiMessage {
            address: 0x7076_6971_fee0_0000,
            data: 0x0201_0005,
        };
        let cases = [
            (
                EventBody::Reprogram {
                    device: 1,
                    kind: Kind::MsiX,
                    index: 5,
                    message,
                    mode: GrantMode::Posted,
                },
                "event seq=7 reprogram device=1 kind=msix mode=posted index=5 \
                 message=0x70766971fee00000:0x2010005",
            ),
            (
                EventBody::Revoke {
                    device: 2,
                    kind: Kind::Ims,
                    index: 9,
                    reason: Resource::DeviceRemoved,
                },
                "event seq=7 revoke device=2 kind=ims reason=device-removed index=9",
            ),
            (
                EventBody::Limits {
                    device: None,
                    limit: 64,
                },
                "event seq=7 limits device=vm limit=64",
            ),
            (
                EventBody::Limits {
                    device: Some(3),
                    limit: 8,
                },
                "event seq=7 limits device=3 limit=8",
            ),
            (
                EventBody::Available {
                    device: 0,
                    count: 4,
                },
                "event seq=7 available device=0 count=4",
            ),
            (
                EventBody::DeviceAdded { device: 4 },
                "event seq=7 device-added device=4",
            ),
            (
                EventBody::DeviceRemoved { device: 4 },
                "event seq=7 device-removed device=4",
            ),
        ];
        for (body, text) in cases {
            round_trip(Event { sequence: 7, body }, text);
        }
    }

    #[test]
    fn records_are_checked_field_by_field() {
        let valid = Event {
            sequence: 1,
            body: EventBody::Available {
                device: 0,
                count: 1,
            },
        };
        let mut buf = [0u8; EVENT_LEN];
        valid.encode(&mut buf).unwrap();
        let with = |offset: usize, value: u8| {
            let mut b = buf;
            b[offset] = value;
            Event::decode(&b)
        };
        assert_eq!(with(0, 0), Err(Error::UnknownEventType(0)));
        assert_eq!(with(0, 7), Err(Error::UnknownEventType(7)));
        assert_eq!(with(1, 2), Err(Error::EventFieldNotZero { offset: 1 }));
        assert_eq!(with(2, 1), Err(Error::EventFieldNotZero { offset: 2 }));
        assert_eq!(with(3, 1), Err(Error::EventFieldNotZero { offset: 3 }));
        assert_eq!(with(12, 1), Err(Error::EventFieldNotZero { offset: 12 }));
        assert_eq!(with(31, 1), Err(Error::EventFieldNotZero { offset: 28 }));
        assert_eq!(
            with(16, 9).map(|e| e.body),
            Ok(EventBody::Available {
                device: 0,
                count: 9
            })
        );
        // A reprogram needs a defined kind and mode; a revoke a defined reason.
        assert_eq!(with(0, 1), Err(Error::UnknownKind(0)));
        let mut b = buf;
        b[0] = 1;
        b[1] = 2;
        b[16] = 0;
        b[2] = 2;
        assert_eq!(Event::decode(&b), Err(Error::UnknownGrantMode(2)));
        b[0] = 2;
        b[2] = 10;
        assert_eq!(Event::decode(&b), Err(Error::UnknownResource(10)));
        b[2] = 9;
        assert!(Event::decode(&b).is_ok());
        assert!(matches!(
            Event::decode(&buf[..31]),
            Err(Error::TooShort { .. })
        ));
        let mut long = [0u8; 33];
        long[..32].copy_from_slice(&buf);
        assert!(matches!(
            Event::decode(&long),
            Err(Error::LengthMismatch { .. })
        ));
        let ambiguous = Event {
            sequence: 0,
            body: EventBody::Limits {
                device: Some(u32::MAX),
                limit: 0,
            },
        };
        assert_eq!(
            ambiguous.encode(&mut buf),
            Err(Error::AmbiguousDevice(u32::MAX))
        );
        assert_eq!(
            Event::decode(&buf[..]).map(|_| ()),
            Ok(()),
            "a failed encode leaves the buffer as it was"
        );
    }
}
