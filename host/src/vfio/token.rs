//! The message a VFIO grant carries (`MessageFormat::VmmTrapped`): a token the VMM's
//! emulation of the device's MSI-X table (or MSI capability) recognises when the guest
//! writes it, not a message any interrupt hardware accepts.
//!
//! Under VFIO the host kernel programs the physical table itself and no call reveals the
//! IRTE, so what the guest writes only has to tell the VMM "this entry is pvirq's grant of
//! index i, generation g". Layout (proposed for the spec):
//!
//! | field | bits | value |
//! |---|---|---|
//! | address 63:32 | 32 | `0x7076_6971` (`"pviq"`): non-zero high bits make it an invalid x86 MSI, so an untrapped write can never interrupt anything |
//! | address 31:0 | 32 | `0xFEE0_0000`: inside the MSI window, so a guest's sanity checks accept it |
//! | data 15:0 | 16 | the vector's index (MSI: 0 for the block; the device adds the vector number, giving each vector's own index) |
//! | data 23:16 | 8 | the generation, bumped on every grant of the index |
//! | data 31:24 | 8 | the kind (1 MSI, 2 MSI-X) |

use pvirq_proto::{Kind, MsiMessage};

/// The high address dword of every token.
pub const TOKEN_ADDRESS_HIGH: u32 = 0x7076_6971;
/// The low address dword of every token.
pub const TOKEN_ADDRESS_LOW: u32 = 0xFEE0_0000;

/// A decoded token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmmToken {
    /// The kind of the grant.
    pub kind: Kind,
    /// The vector's index in the device's table.
    pub index: u16,
    /// The generation of the index when it was granted.
    pub generation: u8,
}

impl VmmToken {
    /// The message for this token.
    pub fn message(&self) -> MsiMessage {
        MsiMessage {
            address: (u64::from(TOKEN_ADDRESS_HIGH) << 32) | u64::from(TOKEN_ADDRESS_LOW),
            data: (u32::from(self.kind.to_wire()) << 24)
                | (u32::from(self.generation) << 16)
                | u32::from(self.index),
        }
    }

    /// The token a message carries, or `None` if it is not one.
    pub fn decode(message: MsiMessage) -> Option<Self> {
        let expected = (u64::from(TOKEN_ADDRESS_HIGH) << 32) | u64::from(TOKEN_ADDRESS_LOW);
        if message.address != expected {
            return None;
        }
        let [index_lo, index_hi, generation, kind] = message.data.to_le_bytes();
        let kind = Kind::from_wire(kind).filter(|k| *k != Kind::Ims)?;
        Some(VmmToken {
            kind,
            index: u16::from_le_bytes([index_lo, index_hi]),
            generation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_the_documented_one() {
        let t = VmmToken {
            kind: Kind::MsiX,
            index: 0x1ff,
            generation: 3,
        };
        let m = t.message();
        assert_eq!(m.address, 0x7076_6971_FEE0_0000);
        assert_eq!(m.data, 0x0203_01ff);
        assert_eq!(VmmToken::decode(m), Some(t));
    }

    #[test]
    fn an_msi_device_adding_its_vector_number_names_each_vector() {
        let base = VmmToken {
            kind: Kind::Msi,
            index: 0,
            generation: 9,
        }
        .message();
        let fifth = MsiMessage {
            data: base.data | 5,
            ..base
        };
        let t = VmmToken::decode(fifth).unwrap();
        assert_eq!((t.kind, t.index, t.generation), (Kind::Msi, 5, 9));
    }

    #[test]
    fn other_messages_are_not_tokens() {
        let good = VmmToken {
            kind: Kind::MsiX,
            index: 1,
            generation: 1,
        }
        .message();
        for bad in [
            MsiMessage {
                address: 0xFEE0_0000,
                data: good.data,
            },
            MsiMessage {
                address: good.address | 0x1000,
                data: good.data,
            },
            MsiMessage {
                data: (good.data & 0x00ff_ffff) | (3 << 24),
                ..good
            },
            MsiMessage {
                data: good.data & 0x00ff_ffff,
                ..good
            },
        ] {
            assert_eq!(VmmToken::decode(bad), None, "{bad}");
        }
    }
}
