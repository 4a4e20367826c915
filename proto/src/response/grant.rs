//! Grant records of an ALLOC reply (spec §4.5): version 1's 16 bytes, and with
//! [`crate::feature::INFO`] 24 bytes carrying the mode, the parked flag and the PASID.

use crate::error::Error;
use crate::feature;
use crate::le::{Le16, Le32};
use crate::msi::MsiMessage;
use crate::request::MAX_PASID;
use crate::types::{Field, GrantMode};
use crate::wire::{GRANT_FLAG_PARKED, GRANT_FLAG_PASID, WireGrant, WireGrantInfo};
use bytemuck::{Pod, Zeroable};
use core::fmt;

/// One granted vector in version 1's 16-byte record: the message the driver programs at
/// `index`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(transparent)]
pub struct Grant(WireGrant);

impl Grant {
    /// A grant of `message` at table index `index`.
    pub const fn new(index: u32, message: MsiMessage) -> Self {
        Grant(WireGrant {
            index: Le32::new(index),
            address_lo: Le32::new(message.address as u32),
            address_hi: Le32::new((message.address >> 32) as u32),
            data: Le32::new(message.data),
        })
    }

    /// The table index (MSI-X entry, IMS slot, or position in the MSI block).
    pub const fn index(&self) -> u32 {
        self.0.index.get()
    }

    /// The message to program.
    pub const fn message(&self) -> MsiMessage {
        MsiMessage {
            address: (self.0.address_hi.get() as u64) << 32 | self.0.address_lo.get() as u64,
            data: self.0.data.get(),
        }
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Grant {
    /// Canonical text: `index:address:data`, e.g. `3:0xfee00078:0x0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.message();
        write!(f, "{}:{:#x}:{:#x}", self.index(), m.address, m.data)
    }
}

/// One granted vector in the 24-byte record of [`crate::feature::INFO`]: the version-1
/// fields, the delivery mode, whether the grant is parked, and the PASID it was made for.
///
/// A `GrantInfo` built here or decoded from a response is valid (defined mode, flags and
/// PASID); its accessors read the record as it is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(transparent)]
pub struct GrantInfo(WireGrantInfo);

impl GrantInfo {
    /// An active grant of `message` at `index`, delivered in `mode`, without a PASID.
    pub const fn new(index: u32, message: MsiMessage, mode: GrantMode) -> Self {
        GrantInfo(WireGrantInfo {
            grant: Grant::new(index, message).0,
            mode: mode.to_wire(),
            grant_flags: 0,
            reserved: Le16::new(0),
            pasid: Le32::new(0),
        })
    }

    /// This grant, parked (no target, spec §3.5) or not.
    pub const fn with_parked(mut self, parked: bool) -> Self {
        if parked {
            self.0.grant_flags |= GRANT_FLAG_PARKED;
        } else {
            self.0.grant_flags &= !GRANT_FLAG_PARKED;
        }
        self
    }

    /// This grant, made for `pasid` or for none.
    pub const fn with_pasid(mut self, pasid: Option<u32>) -> Self {
        match pasid {
            Some(p) => {
                self.0.grant_flags |= GRANT_FLAG_PASID;
                self.0.pasid = Le32::new(p);
            }
            None => {
                self.0.grant_flags &= !GRANT_FLAG_PASID;
                self.0.pasid = Le32::new(0);
            }
        }
        self
    }

    /// What a version-1 record says of a grant: remapped (a version-1 driver's grants
    /// always are, spec §3.4), active, no PASID reported.
    pub const fn from_grant(grant: Grant) -> Self {
        GrantInfo::new(grant.index(), grant.message(), GrantMode::Remapped)
    }

    /// The version-1 record: index and message.
    pub const fn grant(&self) -> Grant {
        Grant(self.0.grant)
    }

    /// The table index.
    pub const fn index(&self) -> u32 {
        self.grant().index()
    }

    /// The message to program.
    pub const fn message(&self) -> MsiMessage {
        self.grant().message()
    }

    /// How the host delivers it (spec §3.4). An undefined byte, which decoding rejects,
    /// reads as remapped.
    pub const fn mode(&self) -> GrantMode {
        match GrantMode::from_wire(self.0.mode) {
            Some(mode) => mode,
            None => GrantMode::Remapped,
        }
    }

    /// Whether the grant has no target yet (spec §3.5).
    pub const fn parked(&self) -> bool {
        self.0.grant_flags & GRANT_FLAG_PARKED != 0
    }

    /// The PASID the grant was made for, if any.
    pub const fn pasid(&self) -> Option<u32> {
        if self.0.grant_flags & GRANT_FLAG_PASID != 0 {
            Some(self.0.pasid.get())
        } else {
            None
        }
    }

    /// The feature bits a driver needs to be told this grant: [`feature::POSTED`] for a
    /// posted one, [`feature::PARKED`] for a parked one (and [`feature::INFO`] for the
    /// record itself).
    pub const fn required_features(&self) -> u64 {
        let mut bits = feature::INFO;
        if matches!(GrantMode::from_wire(self.0.mode), Some(GrantMode::Posted)) {
            bits |= feature::POSTED;
        }
        if self.parked() {
            bits |= feature::PARKED;
        }
        bits
    }

    /// Checks a record read from a response to a driver with `features`.
    pub(crate) fn check(&self, features: u64) -> Result<(), Error> {
        let r = &self.0;
        if GrantMode::from_wire(r.mode).is_none() {
            return Err(Error::UnknownGrantMode(r.mode));
        }
        if r.grant_flags & !(GRANT_FLAG_PARKED | GRANT_FLAG_PASID) != 0 || r.reserved.get() != 0 {
            return Err(Error::ReservedNotZero(Field::BodyReserved));
        }
        let pasid = r.pasid.get();
        if r.grant_flags & GRANT_FLAG_PASID != 0 {
            if pasid > MAX_PASID {
                return Err(Error::InvalidPasid(pasid));
            }
        } else if pasid != 0 {
            return Err(Error::ReservedNotZero(Field::Pasid));
        }
        // A device posts and parks only for a driver that negotiated it (spec §3.4, §3.5).
        let missing = self.required_features() & !features;
        if missing != 0 {
            return Err(Error::NotNegotiated(missing));
        }
        Ok(())
    }
}

impl fmt::Debug for GrantInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for GrantInfo {
    /// Canonical text (spec §7): `index:address:data:mode[:parked][:pasid=<hex>]`, e.g.
    /// `3:0xfee00078:0x0:posted` or `0:0xfee00018:0x0:remapped:parked:pasid=0x42`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.grant(), self.mode())?;
        if self.parked() {
            f.write_str(":parked")?;
        }
        if let Some(pasid) = self.pasid() {
            write!(f, ":pasid={pasid:#x}")?;
        }
        Ok(())
    }
}

/// The grants of an ALLOC reply, in whichever record layout the channel uses; borrowed
/// from the decoded buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantSlice<'a> {
    /// Version 1's 16-byte records (no [`crate::feature::INFO`]).
    Basic(&'a [Grant]),
    /// 24-byte records ([`crate::feature::INFO`]).
    Info(&'a [GrantInfo]),
}

impl<'a> GrantSlice<'a> {
    /// Number of grants.
    pub const fn len(&self) -> usize {
        match self {
            GrantSlice::Basic(g) => g.len(),
            GrantSlice::Info(g) => g.len(),
        }
    }

    /// Whether there is none (never true of a decoded reply).
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Grant `i`; a version-1 record reads as remapped, active, without a PASID
    /// ([`GrantInfo::from_grant`]).
    pub fn get(&self, i: usize) -> Option<GrantInfo> {
        match self {
            GrantSlice::Basic(g) => g.get(i).copied().map(GrantInfo::from_grant),
            GrantSlice::Info(g) => g.get(i).copied(),
        }
    }

    /// The grants in grant order, as [`GrantSlice::get`] reads them.
    pub fn iter(&self) -> GrantIter<'a> {
        GrantIter {
            grants: *self,
            next: 0,
        }
    }

    /// The records as they travel on the wire, in their layout.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            GrantSlice::Basic(g) => bytemuck::cast_slice(g),
            GrantSlice::Info(g) => bytemuck::cast_slice(g),
        }
    }

    /// The feature bits a driver needs to be told these grants.
    pub fn required_features(&self) -> u64 {
        match self {
            GrantSlice::Basic(_) => 0,
            GrantSlice::Info(g) => g.iter().fold(feature::INFO, |bits, grant| {
                bits | grant.required_features()
            }),
        }
    }
}

impl<'a> IntoIterator for GrantSlice<'a> {
    type Item = GrantInfo;
    type IntoIter = GrantIter<'a>;

    fn into_iter(self) -> GrantIter<'a> {
        self.iter()
    }
}

/// The grants of a [`GrantSlice`], in grant order.
#[derive(Clone, Debug)]
pub struct GrantIter<'a> {
    grants: GrantSlice<'a>,
    next: usize,
}

impl Iterator for GrantIter<'_> {
    type Item = GrantInfo;

    fn next(&mut self) -> Option<GrantInfo> {
        let grant = self.grants.get(self.next)?;
        self.next += 1;
        Some(grant)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.grants.len().saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for GrantIter<'_> {}

impl fmt::Display for GrantSlice<'_> {
    /// Canonical text: `[<grant>,...]`, each grant in its record's form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for i in 0..self.len() {
            if i > 0 {
                f.write_str(",")?;
            }
            match self {
                GrantSlice::Basic(g) => {
                    if let Some(grant) = g.get(i) {
                        write!(f, "{grant}")?;
                    }
                }
                GrantSlice::Info(g) => {
                    if let Some(grant) = g.get(i) {
                        write!(f, "{grant}")?;
                    }
                }
            }
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_info_builders_and_accessors_agree() {
        let message = MsiMessage {
            address: 0x1_fee0_0018,
            data: 7,
        };
        let g = GrantInfo::new(3, message, GrantMode::Posted)
            .with_parked(true)
            .with_pasid(Some(0x42));
        assert_eq!(
            (g.index(), g.message(), g.mode()),
            (3, message, GrantMode::Posted)
        );
        assert!(g.parked());
        assert_eq!(g.pasid(), Some(0x42));
        assert_eq!(format!("{g}"), "3:0x1fee00018:0x7:posted:parked:pasid=0x42");
        assert_eq!(
            g.required_features(),
            feature::INFO | feature::POSTED | feature::PARKED
        );
        let plain = g.with_parked(false).with_pasid(None);
        assert_eq!(format!("{plain}"), "3:0x1fee00018:0x7:posted");
        assert_eq!(plain.grant(), Grant::new(3, message));
        assert_eq!(plain.check(feature::ALL), Ok(()));
        assert_eq!(
            plain.check(feature::V1 | feature::INFO),
            Err(Error::NotNegotiated(feature::POSTED))
        );
    }

    #[test]
    fn basic_slices_read_as_remapped_active_grants() {
        let grants = [Grant::new(
            0,
            MsiMessage {
                address: 0xfee0_0010,
                data: 0,
            },
        )];
        let slice = GrantSlice::Basic(&grants);
        let g = slice.get(0).unwrap();
        assert_eq!(
            (g.mode(), g.parked(), g.pasid()),
            (GrantMode::Remapped, false, None)
        );
        assert_eq!(slice.get(1), None);
        assert_eq!(slice.iter().count(), 1);
        assert_eq!(format!("{slice}"), "[0:0xfee00010:0x0]");
        assert_eq!(slice.required_features(), 0);
    }
}
