//! What an event record must satisfy beyond decoding (spec §8 [DRV-9], §12): the sequence
//! number one above the last, a kind and delivery mode the driver negotiated, and an index
//! inside the table QUERY reported. The device handle is checked by the caller, which may
//! have to re-read `num_devices` first.

use crate::Error;
use crate::tables::TableCache;
use pvirq_proto::{Event, EventBody, GrantMode, Kind, feature};

/// The feature bit that offers `kind`.
pub(crate) const fn kind_feature(kind: Kind) -> u64 {
    match kind {
        Kind::Msi => feature::MSI,
        Kind::MsiX => feature::MSIX,
        Kind::Ims => feature::IMS,
    }
}

/// Checks `event` against the sequence (`last` is the sequence of the last event handled),
/// the negotiated `features` and the known tables.
pub(crate) fn check(
    event: &Event,
    last: u32,
    features: u64,
    tables: &TableCache,
) -> Result<(), Error> {
    let expected = last.wrapping_add(1);
    if event.sequence != expected {
        return Err(Error::EventSequence {
            expected,
            got: event.sequence,
        });
    }
    let (device, kind, index, needed) = match event.body {
        EventBody::Reprogram {
            device,
            kind,
            index,
            mode,
            ..
        } => {
            let posted = if mode == GrantMode::Posted {
                feature::POSTED
            } else {
                0
            };
            (device, kind, index, kind_feature(kind) | posted)
        }
        EventBody::Revoke {
            device,
            kind,
            index,
            ..
        } => (device, kind, index, kind_feature(kind)),
        _ => return Ok(()),
    };
    let missing = needed & !features;
    if missing != 0 {
        return Err(Error::EventNotNegotiated(missing));
    }
    if tables.size(device, kind).is_some_and(|size| index >= size) {
        return Err(Error::EventIndex {
            device,
            kind,
            index,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvirq_proto::{DeviceInfo, MsiMessage, Resource};

    fn reprogram(sequence: u32, kind: Kind, index: u32, mode: GrantMode) -> Event {
        Event {
            sequence,
            body: EventBody::Reprogram {
                device: 1,
                kind,
                index,
                message: MsiMessage::default(),
                mode,
            },
        }
    }

    #[test]
    fn sequence_kind_mode_and_table_are_checked_in_that_order() {
        let mut tables = TableCache::default();
        let v1 = feature::V1 | feature::INFO | feature::EVENTS;
        let ok = reprogram(1, Kind::MsiX, 3, GrantMode::Remapped);
        assert_eq!(check(&ok, 0, v1, &tables), Ok(()));
        assert_eq!(
            check(&ok, 1, v1, &tables),
            Err(Error::EventSequence {
                expected: 2,
                got: 1
            })
        );
        let wrapped = reprogram(0, Kind::MsiX, 3, GrantMode::Remapped);
        assert_eq!(
            check(&wrapped, u32::MAX, v1, &tables),
            Ok(()),
            "modulo 2^32"
        );
        let posted = reprogram(1, Kind::MsiX, 3, GrantMode::Posted);
        assert_eq!(
            check(&posted, 0, v1, &tables),
            Err(Error::EventNotNegotiated(feature::POSTED))
        );
        assert_eq!(check(&posted, 0, v1 | feature::POSTED, &tables), Ok(()));
        let ims = Event {
            sequence: 1,
            body: EventBody::Revoke {
                device: 1,
                kind: Kind::Ims,
                index: 0,
                reason: Resource::Irte,
            },
        };
        assert_eq!(
            check(&ims, 0, v1 & !feature::IMS & !feature::PASID, &tables),
            Err(Error::EventNotNegotiated(feature::IMS))
        );
        tables.learn(
            1,
            &DeviceInfo {
                msix_table_size: 3,
                ..DeviceInfo::default()
            },
        );
        assert_eq!(
            check(&ok, 0, v1, &tables),
            Err(Error::EventIndex {
                device: 1,
                kind: Kind::MsiX,
                index: 3
            })
        );
        let limits = Event {
            sequence: 1,
            body: EventBody::Limits {
                device: None,
                limit: 3,
            },
        };
        assert_eq!(check(&limits, 0, v1, &tables), Ok(()));
    }
}
