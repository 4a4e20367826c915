//! Response encoding, and the features a response needs.

use crate::error::Error;
use crate::feature;
use crate::le::{Le32, Le64};
use crate::response::{Outcome, Response};
use crate::types::Opcode;
use crate::wire::{QueryBody, QueryBodyExt, ResponseHeader};
use core::mem::size_of;

const HEADER_LEN: usize = size_of::<ResponseHeader>();

impl Response<'_> {
    /// Bytes [`Response::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        match &self.outcome {
            Outcome::Queried { info, .. } => {
                let ext = if info.ext.is_some() {
                    size_of::<QueryBodyExt>()
                } else {
                    0
                };
                HEADER_LEN + size_of::<QueryBody>() + ext
            }
            Outcome::Allocated { grants, .. } => HEADER_LEN + grants.as_bytes().len(),
            _ => HEADER_LEN,
        }
    }

    /// The feature bits a driver must have negotiated to be sent this response:
    /// [`feature::INFO`] for the extended layouts (a QUERY body with `ext`, 24-byte grant
    /// records) and the extended codes, [`feature::POSTED`] and [`feature::PARKED`] for
    /// posted and parked grants. 0 for a version-1 response.
    ///
    /// A driver decodes with its features: one that negotiated `INFO` expects the extended
    /// layouts, so a device answers it with them.
    pub fn required_features(&self) -> u64 {
        match &self.outcome {
            Outcome::Refused(r) if r.needs_info() => feature::INFO,
            Outcome::Queried { info, .. } if info.ext.is_some() => feature::INFO,
            Outcome::Allocated { grants, .. } => grants.required_features(),
            _ => 0,
        }
    }

    /// The header this response starts with.
    pub fn header(&self) -> ResponseHeader {
        let (status, detail, count, info) = match self.outcome {
            Outcome::Refused(r) => {
                let (status, detail, info) = r.to_wire();
                (status, detail, 0, info)
            }
            Outcome::Queried {
                quota_remaining, ..
            } => (0, 0, 0, quota_remaining),
            Outcome::Allocated {
                grants,
                quota_remaining,
            } => (
                0,
                0,
                u32::try_from(grants.len()).unwrap_or(u32::MAX),
                quota_remaining,
            ),
            Outcome::Freed {
                count,
                quota_remaining,
            }
            | Outcome::Retargeted {
                count,
                quota_remaining,
            }
            | Outcome::Reset {
                count,
                quota_remaining,
            } => (0, 0, count, quota_remaining),
        };
        ResponseHeader {
            opcode: self.opcode,
            status,
            detail,
            reserved: 0,
            device: Le32::new(self.device),
            tag: Le64::new(self.tag),
            count: Le32::new(count),
            info: Le32::new(info),
        }
    }

    /// Encodes into `buf`, in the layout of the value (a QUERY body with or without `ext`,
    /// 16- or 24-byte grant records), and returns the length written.
    ///
    /// Fails if `buf` is too small, if an OK outcome does not belong to `opcode`, or if the
    /// value could not be decoded back by a driver that negotiated
    /// [`Response::required_features`] (an empty grant list, ...).
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let belongs = match self.outcome {
            Outcome::Refused(_) => None,
            Outcome::Queried { .. } => Some(Opcode::Query),
            Outcome::Allocated { .. } => Some(Opcode::Alloc),
            Outcome::Freed { .. } => Some(Opcode::Free),
            Outcome::Retargeted { .. } => Some(Opcode::Retarget),
            Outcome::Reset { .. } => Some(Opcode::Reset),
        };
        if belongs.is_some_and(|op| op.to_wire() != self.opcode) {
            return Err(Error::OutcomeMismatch(self.opcode));
        }
        let len = self.encoded_len();
        let got = buf.len();
        let out = buf
            .get_mut(..len)
            .ok_or(Error::BufferTooSmall { needed: len, got })?;
        let header = self.header();
        let (query, ext) = match &self.outcome {
            Outcome::Queried { info, .. } => (Some(info.to_wire()), info.ext.map(|e| e.to_wire())),
            _ => (None, None),
        };
        let grants: &[u8] = match &self.outcome {
            Outcome::Allocated { grants, .. } => grants.as_bytes(),
            _ => &[],
        };
        let parts: [&[u8]; 4] = [
            bytemuck::bytes_of(&header),
            query.as_ref().map(bytemuck::bytes_of).unwrap_or_default(),
            ext.as_ref().map(bytemuck::bytes_of).unwrap_or_default(),
            grants,
        ];
        let mut rest = &mut *out;
        for part in parts {
            let (into, tail) = rest
                .split_at_mut_checked(part.len())
                .ok_or(Error::BufferTooSmall { needed: len, got })?;
            into.copy_from_slice(part);
            rest = tail;
        }
        // Decoding what was written catches the remaining invalid values (no grants, an
        // msi_max that is not a power of two, ...): what encodes is what a driver with the
        // features the layout needs accepts.
        Response::decode(out, feature::V1 | self.required_features())?;
        Ok(len)
    }
}
