//! Version 1's decoders, frozen as they were before the protocol grew feature bits (issue
//! 13), reduced to what they accept or reject and the canonical text of what they accept.
//!
//! The properties compare the current decoders, given a version-1 feature set, with these:
//! a version-1 driver must get exactly version 1's bytes and answers (spec §2.2 [DEV-24]).
//! Do not update this file when the protocol grows; it is the old behaviour.

use pvirq_proto::{Error, Field, KindSet, Opcode, Refusal, Status};

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}

fn need(bytes: &[u8], end: usize) -> Result<(), Error> {
    if bytes.len() < end {
        return Err(Error::TooShort {
            needed: end,
            got: bytes.len(),
        });
    }
    Ok(())
}

fn exact(bytes: &[u8], expected: usize) -> Result<(), Error> {
    if bytes.len() != expected {
        return Err(Error::LengthMismatch {
            expected,
            got: bytes.len(),
        });
    }
    Ok(())
}

fn kind_name(byte: u8) -> Result<&'static str, Error> {
    match byte {
        1 => Ok("msi"),
        2 => Ok("msix"),
        3 => Ok("ims"),
        _ => Err(Error::UnknownKind(byte)),
    }
}

/// `count` targets after byte 32, checked (reserved, then vector) in order.
fn targets(bytes: &[u8], count: u16) -> Result<String, Error> {
    exact(bytes, 32 + 8 * usize::from(count))?;
    let mut text = Vec::new();
    for entry in 0..usize::from(count) {
        let at = 32 + 8 * entry;
        let (vcpu, vector) = (le32(bytes, at), bytes[at + 4]);
        if bytes[at + 5..at + 8] != [0, 0, 0] {
            return Err(Error::TargetReserved {
                entry: entry as u32,
            });
        }
        if vector < 0x20 {
            return Err(Error::VectorOutOfRange {
                entry: entry as u32,
                vector,
            });
        }
        text.push(format!("{vcpu}:{vector:#x}"));
    }
    Ok(format!("[{}]", text.join(",")))
}

/// Version 1's request decoder: the canonical text of a valid request, or the error.
pub fn decode_request(bytes: &[u8], max_batch: u16) -> Result<String, Error> {
    let max_batch = max_batch.min(4096);
    need(bytes, 16)?;
    let opcode = Opcode::from_wire(bytes[0]).ok_or(Error::UnknownOpcode(bytes[0]))?;
    if bytes[1] != 0 || le16(bytes, 2) != 0 {
        return Err(Error::ReservedNotZero(Field::HeaderReserved));
    }
    let head = format!(
        "{opcode} device={} tag={:#x}",
        le32(bytes, 4),
        le64(bytes, 8)
    );
    let batch = |count: u16| {
        if count > max_batch {
            Err(Error::BatchTooLarge { count, max_batch })
        } else {
            Ok(())
        }
    };
    match opcode {
        Opcode::Query | Opcode::Reset => exact(bytes, 16).map(|()| head),
        Opcode::Alloc => {
            need(bytes, 32)?;
            let kind = kind_name(bytes[16])?;
            let flags = bytes[17];
            if flags & !0b11 != 0 {
                return Err(Error::UndefinedFlags(flags));
            }
            if le16(bytes, 18) != 0 {
                return Err(Error::ReservedNotZero(Field::BodyReserved));
            }
            let (first, min, max, pasid) = (
                le32(bytes, 20),
                le16(bytes, 24),
                le16(bytes, 26),
                le32(bytes, 28),
            );
            if min == 0 || min > max {
                return Err(Error::InvalidCount { min, max });
            }
            batch(max)?;
            let any = flags & 1 != 0;
            if any {
                if first != 0 {
                    return Err(Error::IndexNotZero(first));
                }
            } else if first.checked_add(u32::from(max) - 1).is_none() {
                return Err(Error::IndexOverflow { first, count: max });
            }
            if kind == "msi" {
                if !min.is_power_of_two() || !max.is_power_of_two() || max > 32 {
                    return Err(Error::MsiCount { min, max });
                }
                if !any && first != 0 {
                    return Err(Error::IndexNotZero(first));
                }
            }
            let pasid_text = if flags & 2 != 0 {
                if kind != "ims" || pasid > 0xF_FFFF {
                    return Err(Error::InvalidPasid(pasid));
                }
                format!("{pasid:#x}")
            } else {
                if pasid != 0 {
                    return Err(Error::ReservedNotZero(Field::Pasid));
                }
                "none".to_owned()
            };
            let targets = targets(bytes, max)?;
            let index = if any {
                "any".to_owned()
            } else {
                first.to_string()
            };
            Ok(format!(
                "{head} kind={kind} index={index} count={min}..{max} pasid={pasid_text} targets={targets}"
            ))
        }
        Opcode::Free | Opcode::Retarget => {
            need(bytes, 32)?;
            let kind = kind_name(bytes[16])?;
            if bytes[17] != 0
                || le16(bytes, 18) != 0
                || le16(bytes, 26) != 0
                || le32(bytes, 28) != 0
            {
                return Err(Error::ReservedNotZero(Field::BodyReserved));
            }
            let (first, count) = (le32(bytes, 20), le16(bytes, 24));
            if count == 0 {
                return Err(Error::InvalidCount { min: 0, max: 0 });
            }
            batch(count)?;
            if first.checked_add(u32::from(count) - 1).is_none() {
                return Err(Error::IndexOverflow { first, count });
            }
            let run = format!("{head} kind={kind} index={first} count={count}");
            if opcode == Opcode::Free {
                exact(bytes, 32).map(|()| run)
            } else {
                Ok(format!("{run} targets={}", targets(bytes, count)?))
            }
        }
    }
}

/// Version 1's response decoder: the canonical text of a valid response, or the error.
pub fn decode_response(bytes: &[u8]) -> Result<String, Error> {
    need(bytes, 24)?;
    let (opcode, status, detail) = (bytes[0], bytes[1], bytes[2]);
    if bytes[3] != 0 {
        return Err(Error::ReservedNotZero(Field::HeaderReserved));
    }
    let (count, info) = (le32(bytes, 16), le32(bytes, 20));
    let op = match Opcode::from_wire(opcode) {
        Some(op) => op.to_string(),
        None => format!("op({opcode:#x})"),
    };
    let head = format!("{op} device={} tag={:#x} ", le32(bytes, 4), le64(bytes, 8));
    let invalid = Error::InvalidStatus {
        status,
        detail,
        info,
    };
    let status_code = Status::from_wire(status).ok_or(invalid)?;
    if status_code != Status::Ok {
        // Version 1 defined resources 0–5 and fields 0–12 only.
        let v1_detail = match status_code {
            Status::NoSpace | Status::DeviceError => detail <= 5,
            Status::BadRequest | Status::Unsupported | Status::InvalidTarget => detail <= 12,
            _ => true,
        };
        let refusal = Refusal::from_wire(status, detail, info)
            .filter(|_| v1_detail)
            .ok_or(invalid)?;
        if count != 0 {
            return Err(Error::InvalidResponseCount(count));
        }
        exact(bytes, 24)?;
        return Ok(format!("{head}{refusal}"));
    }
    if detail != 0 {
        return Err(invalid);
    }
    let op = Opcode::from_wire(opcode).ok_or(Error::UnknownOpcode(opcode))?;
    match op {
        Opcode::Query => {
            if count != 0 {
                return Err(Error::InvalidResponseCount(count));
            }
            exact(bytes, 48)?;
            let kinds = le32(bytes, 24);
            let kinds = KindSet::from_bits(kinds).ok_or(Error::UndefinedKinds(kinds))?;
            let msi_max = le16(bytes, 28);
            if msi_max != 0 && (!msi_max.is_power_of_two() || msi_max > 32) {
                return Err(Error::InvalidMsiMax(msi_max));
            }
            Ok(format!(
                "{head}ok quota_remaining={info} kinds={kinds} msi_max={msi_max} \
                 msix_table_size={} ims_slots={} granted={} vm_quota={} available={}",
                le16(bytes, 30),
                le32(bytes, 32),
                le32(bytes, 36),
                le32(bytes, 40),
                le32(bytes, 44)
            ))
        }
        Opcode::Alloc => {
            let n = count as usize;
            if n == 0 {
                return Err(Error::InvalidResponseCount(count));
            }
            let expected = n
                .checked_mul(16)
                .and_then(|b| b.checked_add(24))
                .ok_or(Error::InvalidResponseCount(count))?;
            exact(bytes, expected)?;
            let grants: Vec<String> = (0..n)
                .map(|i| {
                    let at = 24 + 16 * i;
                    let address =
                        u64::from(le32(bytes, at + 4)) | u64::from(le32(bytes, at + 8)) << 32;
                    format!(
                        "{}:{address:#x}:{:#x}",
                        le32(bytes, at),
                        le32(bytes, at + 12)
                    )
                })
                .collect();
            Ok(format!(
                "{head}ok quota_remaining={info} grants=[{}]",
                grants.join(",")
            ))
        }
        Opcode::Free | Opcode::Retarget | Opcode::Reset => {
            exact(bytes, 24)?;
            Ok(format!("{head}ok count={count} quota_remaining={info}"))
        }
    }
}
