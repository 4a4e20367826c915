//! Responses: typed, validated values decoded from and encoded to wire bytes (spec §4, §5).

use crate::RESPONSE_HEADER_LEN;
use crate::error::Error;
use crate::le::{Le16, Le32, Le64};
use crate::msi::MsiMessage;
use crate::request::MAX_MSI_VECTORS;
use crate::types::{KindSet, Opcode, Refusal, Status};
use crate::wire::{QueryBody, ResponseHeader, WireGrant};
use bytemuck::{Pod, Zeroable};
use core::fmt;
use core::mem::size_of;

const GRANT_LEN: usize = size_of::<WireGrant>();
const QUERY_LEN: usize = size_of::<QueryBody>();

/// One granted vector: the message the driver programs at `index`.
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

/// A device's limits and state, as QUERY reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceInfo {
    /// Kinds the device supports and the driver negotiated.
    pub kinds: KindSet,
    /// Largest MSI block, 0 without MSI.
    pub msi_max: u16,
    /// MSI-X table size, 0 without MSI-X.
    pub msix_table_size: u16,
    /// IMS slots, 0 without IMS.
    pub ims_slots: u32,
    /// Vectors currently granted to the device.
    pub granted: u32,
    /// The VM's total quota.
    pub vm_quota: u32,
    /// Largest count an ALLOC for this device could be granted now (advisory: another
    /// VM may take host resources before the driver asks).
    pub available: u32,
}

impl DeviceInfo {
    fn to_wire(self) -> QueryBody {
        QueryBody {
            kinds: Le32::new(self.kinds.bits()),
            msi_max: Le16::new(self.msi_max),
            msix_table_size: Le16::new(self.msix_table_size),
            ims_slots: Le32::new(self.ims_slots),
            granted: Le32::new(self.granted),
            vm_quota: Le32::new(self.vm_quota),
            available: Le32::new(self.available),
        }
    }

    fn from_wire(body: &QueryBody) -> Result<Self, Error> {
        let kinds =
            KindSet::from_bits(body.kinds.get()).ok_or(Error::UndefinedKinds(body.kinds.get()))?;
        let msi_max = body.msi_max.get();
        if msi_max != 0 && (!msi_max.is_power_of_two() || msi_max > MAX_MSI_VECTORS) {
            return Err(Error::InvalidMsiMax(msi_max));
        }
        Ok(DeviceInfo {
            kinds,
            msi_max,
            msix_table_size: body.msix_table_size.get(),
            ims_slots: body.ims_slots.get(),
            granted: body.granted.get(),
            vm_quota: body.vm_quota.get(),
            available: body.available.get(),
        })
    }
}

/// What the device answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// QUERY succeeded.
    Queried {
        /// The device's limits and state.
        info: DeviceInfo,
        /// The VM's remaining quota.
        quota_remaining: u32,
    },
    /// ALLOC granted `grants.len()` vectors (between the request's min and max).
    Allocated {
        /// The granted vectors, in the order of the request's targets.
        grants: &'a [Grant],
        /// The VM's remaining quota.
        quota_remaining: u32,
    },
    /// FREE released `count` vectors.
    Freed {
        /// Vectors released.
        count: u32,
        /// The VM's remaining quota.
        quota_remaining: u32,
    },
    /// RETARGET moved `count` vectors.
    Retargeted {
        /// Vectors moved.
        count: u32,
        /// The VM's remaining quota.
        quota_remaining: u32,
    },
    /// RESET released `count` vectors (possibly 0).
    Reset {
        /// Vectors released.
        count: u32,
        /// The VM's remaining quota.
        quota_remaining: u32,
    },
    /// The request was refused and nothing changed.
    Refused(Refusal),
}

/// A validated response. Grants borrow from the decoded buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// The request's opcode, echoed as received (a refusal of an unknown opcode echoes it).
    pub opcode: u8,
    /// The request's device handle.
    pub device: u32,
    /// The request's tag.
    pub tag: u64,
    /// The answer.
    pub outcome: Outcome<'a>,
}

fn read<T: Pod>(bytes: &[u8], offset: usize) -> Result<T, Error> {
    let end = offset + size_of::<T>();
    bytes
        .get(offset..end)
        .map(bytemuck::pod_read_unaligned)
        .ok_or(Error::TooShort {
            needed: end,
            got: bytes.len(),
        })
}

fn exact(len: usize, expected: usize) -> Result<(), Error> {
    if len == expected {
        Ok(())
    } else {
        Err(Error::LengthMismatch { expected, got: len })
    }
}

impl<'a> Response<'a> {
    /// Decodes and validates a response occupying exactly `bytes` (the used length).
    pub fn decode(bytes: &'a [u8]) -> Result<Response<'a>, Error> {
        let (header, body) =
            bytes
                .split_first_chunk::<RESPONSE_HEADER_LEN>()
                .ok_or(Error::TooShort {
                    needed: RESPONSE_HEADER_LEN,
                    got: bytes.len(),
                })?;
        Response::decode_parts(header, body)
    }

    /// Decodes and validates a response whose header and body lie in separate buffers: a
    /// driver that copies a reply out of memory the device can write puts the header in its
    /// own memory and the grants straight into its caller's array. The checks are those of
    /// [`Response::decode`] on `header` followed by `body`; lengths in errors count both.
    pub fn decode_parts(
        header: &[u8; RESPONSE_HEADER_LEN],
        body: &'a [u8],
    ) -> Result<Response<'a>, Error> {
        let h: ResponseHeader = bytemuck::pod_read_unaligned(header);
        let total = RESPONSE_HEADER_LEN + body.len();
        let exact = |expected: usize| exact(total, expected);
        if h.reserved != 0 {
            return Err(Error::ReservedNotZero(crate::Field::HeaderReserved));
        }
        let (count, info) = (h.count.get(), h.info.get());
        let invalid = Error::InvalidStatus {
            status: h.status,
            detail: h.detail,
            info,
        };
        let status = Status::from_wire(h.status).ok_or(invalid)?;
        let outcome = if status != Status::Ok {
            let refusal = Refusal::from_wire(h.status, h.detail, info).ok_or(invalid)?;
            if count != 0 {
                return Err(Error::InvalidResponseCount(count));
            }
            exact(RESPONSE_HEADER_LEN)?;
            Outcome::Refused(refusal)
        } else {
            if h.detail != 0 {
                return Err(invalid);
            }
            let opcode = Opcode::from_wire(h.opcode).ok_or(Error::UnknownOpcode(h.opcode))?;
            let quota_remaining = info;
            match opcode {
                Opcode::Query => {
                    if count != 0 {
                        return Err(Error::InvalidResponseCount(count));
                    }
                    exact(RESPONSE_HEADER_LEN + QUERY_LEN)?;
                    let info = DeviceInfo::from_wire(&read(body, 0)?)?;
                    Outcome::Queried {
                        info,
                        quota_remaining,
                    }
                }
                Opcode::Alloc => {
                    let n =
                        usize::try_from(count).map_err(|_| Error::InvalidResponseCount(count))?;
                    if n == 0 {
                        return Err(Error::InvalidResponseCount(count));
                    }
                    let expected = n
                        .checked_mul(GRANT_LEN)
                        .and_then(|b| b.checked_add(RESPONSE_HEADER_LEN))
                        .ok_or(Error::InvalidResponseCount(count))?;
                    exact(expected)?;
                    let grants: &[Grant] =
                        bytemuck::try_cast_slice(body).map_err(|_| Error::LengthMismatch {
                            expected,
                            got: total,
                        })?;
                    Outcome::Allocated {
                        grants,
                        quota_remaining,
                    }
                }
                Opcode::Free | Opcode::Retarget | Opcode::Reset => {
                    exact(RESPONSE_HEADER_LEN)?;
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

    /// Bytes [`Response::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        match &self.outcome {
            Outcome::Queried { .. } => RESPONSE_HEADER_LEN + QUERY_LEN,
            Outcome::Allocated { grants, .. } => RESPONSE_HEADER_LEN + grants.len() * GRANT_LEN,
            _ => RESPONSE_HEADER_LEN,
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
            } => (0, 0, grants.len() as u32, quota_remaining),
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

    /// Encodes into `buf` and returns the length written.
    ///
    /// Fails if `buf` is too small, if an OK outcome does not belong to `opcode`, or if the
    /// value could not be decoded back (an empty grant list, ...).
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
        let (head, body) = out.split_at_mut(RESPONSE_HEADER_LEN);
        head.copy_from_slice(bytemuck::bytes_of(&self.header()));
        match &self.outcome {
            Outcome::Queried { info, .. } => {
                body.copy_from_slice(bytemuck::bytes_of(&info.to_wire()))
            }
            Outcome::Allocated { grants, .. } => body.copy_from_slice(bytemuck::cast_slice(grants)),
            _ => {}
        }
        // Decoding what was written catches the remaining invalid values (no grants, an
        // msi_max that is not a power of two, ...): what encodes is what a driver accepts.
        Response::decode(out)?;
        Ok(len)
    }
}

impl fmt::Display for Response<'_> {
    /// Canonical text (spec §7), e.g.
    /// `alloc device=7 tag=0x2a ok quota_remaining=30 grants=[0:0xfee0001c:0x0]` or
    /// `alloc device=7 tag=0x2a no-space resource=irte available=0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Opcode::from_wire(self.opcode) {
            Some(op) => write!(f, "{op}")?,
            None => write!(f, "op({:#x})", self.opcode)?,
        }
        write!(f, " device={} tag={:#x} ", self.device, self.tag)?;
        match &self.outcome {
            Outcome::Refused(r) => write!(f, "{r}"),
            Outcome::Queried {
                info,
                quota_remaining,
            } => write!(
                f,
                "ok quota_remaining={quota_remaining} kinds={} msi_max={} msix_table_size={} \
                 ims_slots={} granted={} vm_quota={} available={}",
                info.kinds,
                info.msi_max,
                info.msix_table_size,
                info.ims_slots,
                info.granted,
                info.vm_quota,
                info.available
            ),
            Outcome::Allocated {
                grants,
                quota_remaining,
            } => {
                write!(f, "ok quota_remaining={quota_remaining} grants=[")?;
                for (i, g) in grants.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{g}")?;
                }
                f.write_str("]")
            }
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
            } => {
                write!(f, "ok count={count} quota_remaining={quota_remaining}")
            }
        }
    }
}
