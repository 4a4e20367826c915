//! The event queue *(extension, bit 9)*: the device tells the driver, unasked, what changed
//! (spec §12) — grants to reprogram or revoked, limits, vectors available again, devices
//! added or removed.

pub(crate) mod check;
pub(crate) mod fallback;
mod poll;
pub(crate) mod program;
pub(crate) mod queue;
