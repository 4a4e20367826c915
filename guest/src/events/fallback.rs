//! Getting back what a fallback gave up (spec §5.1, §12): a driver that was refused
//! NO_SPACE and settled for fewer vectors (sharing them, or INTx) retries when the device
//! says, with an AVAILABLE event, that an allocation could now succeed.
//!
//! The pattern:
//! 1. Ask for everything: `min = max = wanted`. A NO_SPACE arms one AVAILABLE for the
//!    device, remembering the refused `min_count` (spec §12). A driver that asks
//!    `1..=wanted` and is granted fewer gets no NO_SPACE and arms nothing: it is never told.
//! 2. Fall back: ask again with `min` lowered to [`crate::Error::fallback_count`] (or
//!    share what it holds), and record the [`Shortfall`].
//! 3. On an event, [`Shortfall::retry`] says whether and how many to ask for: allocate
//!    `1..=n` (parked or spread, so no per-vector targets are needed before the count is
//!    known), then [`Shortfall::granted`]. The AVAILABLE armed in step 1 waits for room for
//!    all `wanted`, more than is missing; a driver that wants to hear sooner asks once for
//!    `min = max = missing` after the fallback, which a NO_SPACE re-arms for that count.
//!    A NO_SPACE on the retry (another VM was faster) arms the next AVAILABLE the same way:
//!    keep the shortfall and wait.
//!
//! AVAILABLE is advisory and sent once per NO_SPACE. A LIMITS that raises the quota or the
//! device's share may make room too, without an AVAILABLE (spec §12 re-checks when vectors
//! are freed and when the host releases shared resources): a driver may retry on it as
//! well. A DEVICE_REMOVED ends the shortfall ([`Shortfall::is_gone`]).

use pvirq_proto::{Event, EventBody, Kind};

/// Vectors a driver wanted for one device and kind but did not get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shortfall {
    /// The device handle.
    pub device: u32,
    /// The kind it allocates.
    pub kind: Kind,
    /// Vectors still missing (at least 1).
    pub missing: u16,
}

impl Shortfall {
    /// After an allocation that got `got` of the `wanted` vectors: what is missing, or
    /// `None` when nothing is.
    pub fn new(device: u32, kind: Kind, wanted: u16, got: u16) -> Option<Self> {
        let missing = wanted.checked_sub(got).filter(|m| *m > 0)?;
        Some(Shortfall {
            device,
            kind,
            missing,
        })
    }

    /// How many vectors to ask for now that `event` arrived: for an AVAILABLE about this
    /// device, the smaller of what is missing and what the device says it could grant
    /// (at least 1); `None` for any other event. For MSI, the largest power of two not
    /// above that (an MSI block grows only by a FREE and a new ALLOC of the whole block,
    /// which the caller decides).
    pub fn retry(&self, event: &Event) -> Option<u16> {
        match event.body {
            EventBody::Available { device, count } if device == self.device && count > 0 => {
                let n = u16::try_from(count).unwrap_or(u16::MAX).min(self.missing);
                Some(if self.kind == Kind::Msi {
                    1 << (15 - n.leading_zeros())
                } else {
                    n
                })
            }
            _ => None,
        }
    }

    /// Whether `event` ends the shortfall without a retry: the device was removed.
    pub fn is_gone(&self, event: &Event) -> bool {
        matches!(event.body, EventBody::DeviceRemoved { device } if device == self.device)
    }

    /// Records `got` more vectors: the shortfall left, or `None` when nothing is missing.
    pub fn granted(self, got: u16) -> Option<Self> {
        Shortfall::new(self.device, self.kind, self.missing, got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn available(device: u32, count: u32) -> Event {
        Event {
            sequence: 1,
            body: EventBody::Available { device, count },
        }
    }

    #[test]
    fn a_shortfall_retries_on_its_own_available_and_shrinks() {
        assert_eq!(Shortfall::new(0, Kind::MsiX, 8, 8), None);
        assert_eq!(Shortfall::new(0, Kind::MsiX, 8, 9), None);
        let s = Shortfall::new(2, Kind::MsiX, 8, 3).unwrap();
        assert_eq!(s.missing, 5);
        assert_eq!(s.retry(&available(2, 100)), Some(5));
        assert_eq!(s.retry(&available(2, 2)), Some(2));
        assert_eq!(s.retry(&available(2, 0)), None);
        assert_eq!(s.retry(&available(1, 100)), None, "another device");
        let removed = Event {
            sequence: 1,
            body: EventBody::DeviceRemoved { device: 2 },
        };
        assert_eq!(s.retry(&removed), None);
        assert!(s.is_gone(&removed) && !s.is_gone(&available(2, 1)));
        let s = s.granted(2).unwrap();
        assert_eq!(s.missing, 3);
        assert_eq!(s.granted(3), None);
        let msi = Shortfall::new(0, Kind::Msi, 16, 4).unwrap();
        assert_eq!(msi.retry(&available(0, 7)), Some(4), "a power of two");
        assert_eq!(msi.retry(&available(0, 100)), Some(8));
    }
}
