//! The caller's grant buffers: version 1's 16-byte [`Grant`] or the 24-byte [`GrantInfo`]
//! of [`feature::INFO`](pvirq_proto::feature::INFO), whichever layout the channel uses on
//! the wire.
//!
//! An ALLOC reply's records are copied out of shared memory once, straight into the
//! caller's array seen as bytes, and validated there. When the caller's record type is the
//! wire's, that is all; otherwise the validated records are converted in place, in the
//! caller's own memory (the device can no longer touch them).

use bytemuck::Pod;
use pvirq_proto::{Grant, GrantInfo};

mod sealed {
    pub trait Sealed {}
    impl Sealed for pvirq_proto::Grant {}
    impl Sealed for pvirq_proto::GrantInfo {}
}

/// A record type a caller can receive grants in: [`Grant`] (index and message) or
/// [`GrantInfo`] (also the delivery mode, whether it is parked, and its PASID).
///
/// Either works on any channel. A [`GrantInfo`] buffer needs one entry per vector that may
/// be granted. A [`Grant`] buffer on a channel that negotiated `INFO` receives 24-byte
/// records before they are compacted, so it needs room for them:
/// [`crate::Driver::grant_entries`] says how many entries.
pub trait GrantRecord: Pod + sealed::Sealed {
    /// This record type's view of a validated grant.
    fn from_info(grant: GrantInfo) -> Self;
}

impl GrantRecord for Grant {
    fn from_info(grant: GrantInfo) -> Self {
        grant.grant()
    }
}

impl GrantRecord for GrantInfo {
    fn from_info(grant: GrantInfo) -> Self {
        grant
    }
}

/// Bytes of a version-1 grant record on the wire.
pub(crate) const GRANT_LEN: usize = size_of::<Grant>();
/// Bytes of an `INFO` grant record on the wire.
pub(crate) const GRANT_INFO_LEN: usize = size_of::<GrantInfo>();

/// Entries of `G` that hold `count` wire records of `wire_len` bytes each.
pub(crate) fn entries_for<G: GrantRecord>(count: usize, wire_len: usize) -> usize {
    let bytes = count.saturating_mul(wire_len);
    bytes.div_ceil(size_of::<G>()).max(count)
}

/// Reads wire record `i` (of `wire_len` bytes) from `bytes`, as a [`GrantInfo`].
fn read_record(bytes: &[u8], i: usize, wire_len: usize) -> Option<GrantInfo> {
    let at = i.checked_mul(wire_len)?;
    let record = bytes.get(at..at.checked_add(wire_len)?)?;
    if wire_len == GRANT_INFO_LEN {
        Some(bytemuck::pod_read_unaligned(record))
    } else {
        Some(GrantInfo::from_grant(bytemuck::pod_read_unaligned(record)))
    }
}

/// Turns the first `n` wire records (`wire_len` bytes each) at the start of `buf`, already
/// validated, into `n` records of type `G` in place; returns them, or `None` if `buf` is too
/// short (which the caller's size check rules out).
///
/// Records shrink (24 → 16 bytes) front to back and grow (16 → 24) back to front, so a
/// record is always read before its bytes are overwritten.
pub(crate) fn convert_in_place<G: GrantRecord>(
    buf: &mut [G],
    n: usize,
    wire_len: usize,
) -> Option<&[G]> {
    let size = size_of::<G>();
    if wire_len != size {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
        let mut convert = |i: usize| -> Option<()> {
            let record = G::from_info(read_record(bytes, i, wire_len)?);
            let at = i.checked_mul(size)?;
            bytes
                .get_mut(at..at.checked_add(size)?)?
                .copy_from_slice(bytemuck::bytes_of(&record));
            Some(())
        };
        if wire_len > size {
            (0..n).try_for_each(&mut convert)?;
        } else {
            (0..n).rev().try_for_each(&mut convert)?;
        }
    }
    buf.get(..n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvirq_proto::{GrantMode, MsiMessage};

    fn info(i: u32) -> GrantInfo {
        let message = MsiMessage {
            address: 0xfee0_0000 | u64::from(i) << 5,
            data: i,
        };
        GrantInfo::new(i + 100, message, GrantMode::Posted)
            .with_parked(i.is_multiple_of(2))
            .with_pasid(Some(i))
    }

    #[test]
    fn info_records_compact_into_grants_front_to_back() {
        let records: std::vec::Vec<GrantInfo> = (0..5).map(info).collect();
        let wire: &[u8] = bytemuck::cast_slice(&records);
        let mut buf = std::vec![Grant::new(0, Default::default()); entries_for::<Grant>(5, 24)];
        assert_eq!(buf.len(), 8, "5 records of 24 bytes need 8 of 16");
        bytemuck::cast_slice_mut::<Grant, u8>(&mut buf)[..wire.len()].copy_from_slice(wire);
        let got = convert_in_place(&mut buf, 5, GRANT_INFO_LEN).unwrap();
        let want: std::vec::Vec<Grant> = records.iter().map(|g| g.grant()).collect();
        assert_eq!(got, &want[..]);
    }

    #[test]
    fn basic_records_grow_into_info_back_to_front() {
        let grants: std::vec::Vec<Grant> = (0..5).map(|i| info(i).grant()).collect();
        let wire: &[u8] = bytemuck::cast_slice(&grants);
        let mut buf = std::vec![GrantInfo::from_grant(Grant::new(0, Default::default())); 5];
        assert_eq!(entries_for::<GrantInfo>(5, 16), 5);
        bytemuck::cast_slice_mut::<GrantInfo, u8>(&mut buf)[..wire.len()].copy_from_slice(wire);
        let got = convert_in_place(&mut buf, 5, GRANT_LEN).unwrap();
        let want: std::vec::Vec<GrantInfo> =
            grants.iter().map(|g| GrantInfo::from_grant(*g)).collect();
        assert_eq!(got, &want[..]);
        assert_eq!(convert_in_place(&mut buf, 6, GRANT_LEN), None);
    }

    #[test]
    fn matching_layouts_are_left_alone() {
        let mut buf: std::vec::Vec<GrantInfo> = (0..3).map(info).collect();
        let want = buf.clone();
        assert_eq!(
            convert_in_place(&mut buf, 2, GRANT_INFO_LEN).unwrap(),
            &want[..2]
        );
        assert_eq!(entries_for::<Grant>(3, 16), 3);
    }
}
