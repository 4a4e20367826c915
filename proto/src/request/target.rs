//! Where one interrupt must arrive in the guest (spec §4.5, *Target*).

use crate::error::Error;
use crate::le::Le32;
use crate::wire::WireTarget;
use bytemuck::{Pod, Zeroable};
use core::fmt;
use core::mem::size_of;

/// Lowest guest vector a target may name: x86 reserves 0–31 for exceptions.
pub const MIN_GUEST_VECTOR: u8 = 0x20;

/// Bytes of one target on the wire.
pub(crate) const TARGET_LEN: usize = size_of::<WireTarget>();

/// Where one interrupt must arrive in the guest: a CPU and a guest vector.
///
/// The CPU is a vCPU index for a version-1 driver, or an x2APIC ID with
/// [`crate::feature::APIC_ID`]; the wire format is the same. A `Target` built with
/// [`Target::new`] always has its reserved bytes zero; one read from a request was checked
/// by [`crate::Request::decode`] (vector at least 0x20, reserved zero). Whether the CPU
/// exists is the device's call.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(transparent)]
pub struct Target(WireTarget);

impl Target {
    /// A destination: CPU (vCPU index, or x2APIC ID with `APIC_ID`) and guest vector.
    pub const fn new(dest: u32, vector: u8) -> Self {
        Target(WireTarget {
            dest: Le32::new(dest),
            vector,
            reserved: [0; 3],
        })
    }

    /// The destination CPU: a vCPU index, or an x2APIC ID with `APIC_ID` (spec §4.5).
    pub const fn dest(&self) -> u32 {
        self.0.dest.get()
    }

    /// The destination CPU under version 1's name: the vCPU index. The same value as
    /// [`Target::dest`], which is what it means with `APIC_ID`.
    pub const fn vcpu(&self) -> u32 {
        self.dest()
    }

    /// The guest vector.
    pub const fn vector(&self) -> u8 {
        self.0.vector
    }

    /// Checks one target read from a request at position `entry`: reserved bytes first,
    /// then the vector (spec §5.3 step 4).
    fn check(&self, entry: usize) -> Result<(), Error> {
        let entry = u32::try_from(entry).unwrap_or(u32::MAX);
        if self.0.reserved != [0; 3] {
            return Err(Error::TargetReserved { entry });
        }
        if self.0.vector < MIN_GUEST_VECTOR {
            return Err(Error::VectorOutOfRange {
                entry,
                vector: self.0.vector,
            });
        }
        Ok(())
    }
}

/// The targets that fill `bytes` exactly, each checked in order. The caller has checked
/// that the length is a whole number of targets.
pub(crate) fn checked_targets(bytes: &[u8]) -> Result<&[Target], Error> {
    // Alignment is 1 and the caller checked the length, so the cast cannot fail; map the
    // impossible error rather than unwrap on a guest-reachable path.
    let targets: &[Target] =
        bytemuck::try_cast_slice(bytes).map_err(|_| Error::LengthMismatch {
            expected: bytes.len() / TARGET_LEN * TARGET_LEN,
            got: bytes.len(),
        })?;
    for (entry, target) in targets.iter().enumerate() {
        target.check(entry)?;
    }
    Ok(targets)
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Target {
    /// Canonical text: `dest:vector`, e.g. `1:0x31`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{:#x}", self.dest(), self.vector())
    }
}

/// A list of targets in canonical text: `[0:0x30,1:0x31]`.
pub(crate) struct TargetList<'a>(pub(crate) &'a [Target]);

impl fmt::Display for TargetList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{t}")?;
        }
        f.write_str("]")
    }
}
