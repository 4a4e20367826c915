//! MSI messages: the remappable format the host hands out, and the compatibility format
//! guest routes use (spec §3.2).
//!
//! Address layout, bits of the low 32-bit address word (the high word is 0 unless noted):
//!
//! | bits  | compatibility                 | remappable (VT-d)        |
//! |-------|-------------------------------|--------------------------|
//! | 31:20 | 0xFEE                         | 0xFEE                    |
//! | 19:12 | destination ID [7:0]          | handle [14:0] in 19:5    |
//! | 11:5  | 0 (extended ID not used)      | (handle continues)       |
//! | 4     | 0: compatibility format       | 1: remappable format     |
//! | 3     | redirection hint              | SHV (sub-handle valid)   |
//! | 2     | destination mode (1 logical)  | handle [15]              |
//! | 1:0   | 0                             | 0                        |

use crate::error::Error;
use core::fmt;

/// Base of the MSI address window.
pub const MSI_ADDRESS_BASE: u32 = 0xFEE0_0000;
const WINDOW_MASK: u32 = 0xFFF0_0000;
const FORMAT_REMAPPABLE: u32 = 1 << 4;
const SHV: u32 = 1 << 3;

/// An MSI message: what a device writes, and where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MsiMessage {
    /// The address the device writes to (64 bits).
    pub address: u64,
    /// The 32-bit value it writes.
    pub data: u32,
}

impl fmt::Display for MsiMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}:{:#x}", self.address, self.data)
    }
}

fn low_word(address: u64) -> Result<u32, Error> {
    let lo = address as u32;
    if lo & WINDOW_MASK != MSI_ADDRESS_BASE {
        return Err(Error::NotMsiAddress(address));
    }
    Ok(lo)
}

/// A remappable-format message: an index into the interrupt-remapping table.
///
/// The remapping unit computes the IRTE index as `handle + subhandle` when the sub-handle
/// is valid (SHV), else `handle`. A multi-message MSI block of `n` vectors uses SHV: the
/// device puts the vector number in the low bits of the data, which is the sub-handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RemappableMsi {
    /// The interrupt handle (IRTE index or block base), 16 bits.
    pub handle: u16,
    /// The sub-handle, when SHV is set: data bits 15:0.
    pub subhandle: Option<u16>,
}

impl RemappableMsi {
    /// The message a device must send.
    pub const fn message(self) -> MsiMessage {
        let h = self.handle as u32;
        let mut lo = MSI_ADDRESS_BASE | FORMAT_REMAPPABLE | (h & 0x7FFF) << 5 | (h >> 15) << 2;
        let data = match self.subhandle {
            Some(sub) => {
                lo |= SHV;
                sub as u32
            }
            None => 0,
        };
        MsiMessage {
            address: lo as u64,
            data,
        }
    }

    /// Parses a message as the remapping unit does.
    ///
    /// Errors: address outside the window or a non-zero high word; compatibility format;
    /// reserved bits (address 1:0, data 31:16) set; data not 0 without SHV.
    pub fn decode(message: MsiMessage) -> Result<Self, Error> {
        let lo = low_word(message.address)?;
        if message.address >> 32 != 0 || lo & 0b11 != 0 || message.data >> 16 != 0 {
            return Err(Error::MsiReservedBits);
        }
        if lo & FORMAT_REMAPPABLE == 0 {
            return Err(Error::WrongMsiFormat { remappable: false });
        }
        let handle = ((lo >> 5) & 0x7FFF | ((lo >> 2) & 1) << 15) as u16;
        let subhandle = if lo & SHV != 0 {
            Some(message.data as u16)
        } else if message.data != 0 {
            return Err(Error::MsiReservedBits);
        } else {
            None
        };
        Ok(RemappableMsi { handle, subhandle })
    }

    /// The IRTE index this message selects (may exceed the table: the unit then faults).
    pub const fn irte_index(self) -> u32 {
        match self.subhandle {
            Some(sub) => self.handle as u32 + sub as u32,
            None => self.handle as u32,
        }
    }
}

/// How a compatibility-format message is delivered (data bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DeliveryMode {
    /// To the vector on the destination.
    Fixed = 0,
    /// To the lowest-priority CPU of the destination set.
    LowestPriority = 1,
    /// System management interrupt.
    Smi = 2,
    /// Non-maskable interrupt.
    Nmi = 4,
    /// INIT.
    Init = 5,
    /// External interrupt.
    ExtInt = 7,
}

impl DeliveryMode {
    fn from_bits(bits: u8) -> Result<Self, Error> {
        Ok(match bits {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            7 => DeliveryMode::ExtInt,
            other => return Err(Error::ReservedDeliveryMode(other)),
        })
    }
}

/// A compatibility-format message: destination and vector in the message itself.
///
/// Destination IDs above 255 use the high address word (bits 31:8), as KVM's x2APIC
/// API does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CompatMsi {
    /// Destination APIC ID (physical mode) or logical destination.
    pub dest_id: u32,
    /// The vector.
    pub vector: u8,
    /// Delivery mode.
    pub delivery: DeliveryMode,
    /// Logical (true) or physical destination mode.
    pub logical: bool,
    /// Redirection hint.
    pub redirection_hint: bool,
    /// Level-triggered (true) or edge.
    pub level_triggered: bool,
}

impl CompatMsi {
    /// A fixed, edge-triggered, physical-mode message to `dest_id` at `vector`.
    pub const fn fixed(dest_id: u32, vector: u8) -> Self {
        CompatMsi {
            dest_id,
            vector,
            delivery: DeliveryMode::Fixed,
            logical: false,
            redirection_hint: false,
            level_triggered: false,
        }
    }

    /// The message.
    pub const fn message(self) -> MsiMessage {
        let lo = MSI_ADDRESS_BASE
            | (self.dest_id & 0xFF) << 12
            | (self.redirection_hint as u32) << 3
            | (self.logical as u32) << 2;
        let hi = self.dest_id & 0xFFFF_FF00;
        // Level-triggered messages assert (bit 14); edge ones leave it 0.
        let level = if self.level_triggered { 3 << 14 } else { 0 };
        let data = self.vector as u32 | (self.delivery as u32) << 8 | level;
        MsiMessage {
            address: (hi as u64) << 32 | lo as u64,
            data,
        }
    }

    /// Parses a compatibility-format message.
    pub fn decode(message: MsiMessage) -> Result<Self, Error> {
        let lo = low_word(message.address)?;
        if lo & FORMAT_REMAPPABLE != 0 {
            return Err(Error::WrongMsiFormat { remappable: true });
        }
        let hi = (message.address >> 32) as u32;
        let reserved_lo = 0xFE3; // bits 11:5 and 1:0
        let reserved_data = !(0xFF | 0x700 | 0xC000);
        if lo & reserved_lo != 0 || hi & 0xFF != 0 || message.data & reserved_data != 0 {
            return Err(Error::MsiReservedBits);
        }
        Ok(CompatMsi {
            dest_id: hi | (lo >> 12) & 0xFF,
            vector: message.data as u8,
            delivery: DeliveryMode::from_bits((message.data >> 8) as u8 & 0x7)?,
            logical: lo & (1 << 2) != 0,
            redirection_hint: lo & (1 << 3) != 0,
            level_triggered: message.data & (1 << 15) != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remappable_handle_bit_15_lives_in_address_bit_2() {
        let m = RemappableMsi {
            handle: 0x8001,
            subhandle: None,
        }
        .message();
        assert_eq!(m.address, 0xFEE0_0000 | 1 << 5 | 1 << 4 | 1 << 2);
        assert_eq!(RemappableMsi::decode(m).map(|r| r.handle), Ok(0x8001));
    }

    #[test]
    fn shv_adds_the_subhandle_to_the_index() {
        let base = RemappableMsi {
            handle: 64,
            subhandle: Some(0),
        };
        let mut fired = base.message();
        fired.data |= 3; // the device ORs the vector number into the data
        let seen = RemappableMsi::decode(fired);
        assert_eq!(seen.map(RemappableMsi::irte_index), Ok(67));
    }

    #[test]
    fn formats_are_not_confused() {
        let compat = CompatMsi::fixed(1, 0x40).message();
        assert_eq!(compat.address, 0xFEE0_1000);
        assert_eq!(compat.data, 0x40);
        assert_eq!(
            RemappableMsi::decode(compat),
            Err(Error::WrongMsiFormat { remappable: false })
        );
        let remap = RemappableMsi {
            handle: 5,
            subhandle: None,
        }
        .message();
        assert_eq!(
            CompatMsi::decode(remap),
            Err(Error::WrongMsiFormat { remappable: true })
        );
        assert_eq!(
            CompatMsi::decode(MsiMessage {
                address: 0xFED0_0000,
                data: 0
            }),
            Err(Error::NotMsiAddress(0xFED0_0000))
        );
    }

    #[test]
    fn compat_round_trips_x2apic_destinations_and_modes() {
        let msg = CompatMsi {
            dest_id: 0x1234,
            vector: 0xEE,
            delivery: DeliveryMode::LowestPriority,
            logical: true,
            redirection_hint: true,
            level_triggered: true,
        };
        assert_eq!(CompatMsi::decode(msg.message()), Ok(msg));
        let reserved_mode = MsiMessage {
            address: 0xFEE0_0000,
            data: 3 << 8 | 0x30,
        };
        assert_eq!(
            CompatMsi::decode(reserved_mode),
            Err(Error::ReservedDeliveryMode(3))
        );
    }
}
