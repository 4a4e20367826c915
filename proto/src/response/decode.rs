//! Response decoding under the negotiated features: what a driver accepts (spec §4, §5, §8).
//!
//! Without [`feature::INFO`] this is version 1's decoder: 24-byte QUERY bodies, 16-byte
//! grant records, and the extended resource and field codes are undefined.

use crate::error::Error;
use crate::feature;
use crate::refusal::Refusal;
use crate::response::{DeviceInfo, Grant, GrantInfo, GrantSlice, Outcome, Response};
use crate::types::{Field, Opcode, Status};
use crate::wire::{QueryBody, QueryBodyExt, ResponseHeader, WireGrant, WireGrantInfo, read};
use core::mem::size_of;

const HEADER_LEN: usize = size_of::<ResponseHeader>();

fn exact(total: usize, expected: usize) -> Result<(), Error> {
    if total == expected {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            expected,
            got: total,
        })
    }
}

/// The `count` grant records that make up `body`, in the layout `features` selects.
/// Lengths in errors count the header too.
fn grants(body: &[u8], count: u32, features: u64) -> Result<GrantSlice<'_>, Error> {
    let info = features & feature::INFO != 0;
    let record = if info {
        size_of::<WireGrantInfo>()
    } else {
        size_of::<WireGrant>()
    };
    let total = HEADER_LEN + body.len();
    let n = usize::try_from(count).map_err(|_| Error::InvalidResponseCount(count))?;
    if n == 0 {
        return Err(Error::InvalidResponseCount(count));
    }
    let expected = n
        .checked_mul(record)
        .and_then(|b| b.checked_add(HEADER_LEN))
        .ok_or(Error::InvalidResponseCount(count))?;
    exact(total, expected)?;
    let length = |_| Error::LengthMismatch {
        expected,
        got: total,
    };
    if info {
        let grants: &[GrantInfo] = bytemuck::try_cast_slice(body).map_err(length)?;
        for grant in grants {
            grant.check(features)?;
        }
        Ok(GrantSlice::Info(grants))
    } else {
        let grants: &[Grant] = bytemuck::try_cast_slice(body).map_err(length)?;
        Ok(GrantSlice::Basic(grants))
    }
}

impl<'a> Response<'a> {
    /// Decodes and validates a response occupying exactly `bytes` (the used length), sent
    /// to a driver that negotiated `features`.
    ///
    /// With [`feature::INFO`], QUERY bodies are 64 bytes, grant records 24, and refusals may
    /// name resources 6–8 and fields 13–14; a posted or parked grant needs
    /// [`feature::POSTED`] or [`feature::PARKED`]. Without `INFO`, version 1's rules hold
    /// exactly.
    pub fn decode(bytes: &'a [u8], features: u64) -> Result<Response<'a>, Error> {
        let (header, body) = bytes
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(Error::TooShort {
                needed: HEADER_LEN,
                got: bytes.len(),
            })?;
        Response::decode_parts(header, body, features)
    }

    /// Decodes and validates a response whose header and body lie in separate buffers: a
    /// driver that copies a reply out of memory the device can write puts the header in its
    /// own memory and the grants straight into its caller's array. The checks are those of
    /// [`Response::decode`] on `header` followed by `body`; lengths in errors count both.
    pub fn decode_parts(
        header: &[u8; HEADER_LEN],
        body: &'a [u8],
        features: u64,
    ) -> Result<Response<'a>, Error> {
        let info = features & feature::INFO != 0;
        let h: ResponseHeader = bytemuck::pod_read_unaligned(header);
        let total = HEADER_LEN + body.len();
        if h.reserved != 0 {
            return Err(Error::ReservedNotZero(Field::HeaderReserved));
        }
        let (count, info_field) = (h.count.get(), h.info.get());
        let invalid = Error::InvalidStatus {
            status: h.status,
            detail: h.detail,
            info: info_field,
        };
        let status = Status::from_wire(h.status).ok_or(invalid)?;
        let outcome = if status != Status::Ok {
            let refusal = Refusal::from_wire(h.status, h.detail, info_field)
                .filter(|r| info || !r.needs_info())
                .ok_or(invalid)?;
            if count != 0 {
                return Err(Error::InvalidResponseCount(count));
            }
            exact(total, HEADER_LEN)?;
            Outcome::Refused(refusal)
        } else {
            if h.detail != 0 {
                return Err(invalid);
            }
            let opcode = Opcode::from_wire(h.opcode).ok_or(Error::UnknownOpcode(h.opcode))?;
            let quota_remaining = info_field;
            match opcode {
                Opcode::Query => {
                    if count != 0 {
                        return Err(Error::InvalidResponseCount(count));
                    }
                    let body_len = size_of::<QueryBody>();
                    let ext_len = if info { size_of::<QueryBodyExt>() } else { 0 };
                    exact(total, HEADER_LEN + body_len + ext_len)?;
                    let ext: Option<QueryBodyExt> = if info {
                        Some(read(body, body_len)?)
                    } else {
                        None
                    };
                    let info = DeviceInfo::from_wire(&read(body, 0)?, ext.as_ref())?;
                    Outcome::Queried {
                        info,
                        quota_remaining,
                    }
                }
                Opcode::Alloc => Outcome::Allocated {
                    grants: grants(body, count, features)?,
                    quota_remaining,
                },
                Opcode::Free | Opcode::Retarget | Opcode::Reset => {
                    exact(total, HEADER_LEN)?;
                    match opcode {
                        Opcode::Free => Outcome::Freed {
                            count,
                            quota_remaining,
                        },
                        Opcode::Retarget => Outcome::Retargeted {
                            count,
                            quota_remaining,
                        },
                        _ => Outcome::Reset {
                            count,
                            quota_remaining,
                        },
                    }
                }
            }
        };
        Ok(Response {
            opcode: h.opcode,
            device: h.device.get(),
            tag: h.tag.get(),
            outcome,
        })
    }
}
