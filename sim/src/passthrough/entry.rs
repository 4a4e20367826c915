//! The two interrupt-storage formats a pass-through device keeps: an MSI-X table entry and
//! an IMS slot (as Intel IDXD lays them out). Both are 16 bytes, little-endian.

use pvirq_proto::MsiMessage;

/// Bytes per MSI-X entry and per IMS slot.
pub const ENTRY_SIZE: u64 = 16;
/// Offset of the message address, low 32 bits.
const ADDR_LO: usize = 0;
/// Offset of the message address, high 32 bits.
const ADDR_HI: usize = 4;
/// Offset of the message data.
const DATA: usize = 8;
/// Offset of the control word: MSI-X vector control, or the IMS slot's control.
const CTRL: usize = 12;

/// Control bit 0 (both formats): the slot is masked and must not send.
pub const CTRL_MASK: u32 = 1 << 0;
/// IMS control bit 3: the slot sends with the PASID in [`IMS_PASID_SHIFT`]'s field.
pub const IMS_PASID_ENABLE: u32 = 1 << 3;
/// IMS control: the PASID sits in bits 31:12.
pub const IMS_PASID_SHIFT: u32 = 12;
/// The largest PASID (20 bits).
pub const MAX_PASID: u32 = (1 << 20) - 1;

/// What one slot holds, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotState {
    /// The message the slot sends.
    pub message: MsiMessage,
    /// Whether the slot is masked.
    pub masked: bool,
    /// The PASID it sends with (IMS only, when enabled).
    pub pasid: Option<u32>,
}

fn word(raw: &[u8; ENTRY_SIZE as usize], offset: usize) -> u32 {
    let mut bytes = [0; 4];
    bytes.copy_from_slice(&raw[offset..offset + 4]);
    u32::from_le_bytes(bytes)
}

/// The words of an entry holding `message` with control word `ctrl`.
pub(crate) fn encode(message: MsiMessage, ctrl: u32) -> [u8; ENTRY_SIZE as usize] {
    let mut raw = [0; ENTRY_SIZE as usize];
    for (offset, value) in [
        (ADDR_LO, message.address as u32),
        (ADDR_HI, (message.address >> 32) as u32),
        (DATA, message.data),
        (CTRL, ctrl),
    ] {
        raw[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
    raw
}

/// The offset of the control word, for writes of it alone.
pub(crate) const CTRL_OFFSET: u64 = CTRL as u64;

/// IMS control word for an unmasked slot with an optional PASID.
pub(crate) fn ims_ctrl(pasid: Option<u32>) -> u32 {
    pasid.map_or(0, |p| IMS_PASID_ENABLE | (p << IMS_PASID_SHIFT))
}

/// Decodes an MSI-X entry.
pub(crate) fn decode_msix(raw: &[u8; ENTRY_SIZE as usize]) -> SlotState {
    SlotState {
        message: message(raw),
        masked: word(raw, CTRL) & CTRL_MASK != 0,
        pasid: None,
    }
}

/// Decodes an IMS slot.
pub(crate) fn decode_ims(raw: &[u8; ENTRY_SIZE as usize]) -> SlotState {
    let ctrl = word(raw, CTRL);
    SlotState {
        message: message(raw),
        masked: ctrl & CTRL_MASK != 0,
        pasid: (ctrl & IMS_PASID_ENABLE != 0).then_some(ctrl >> IMS_PASID_SHIFT),
    }
}

fn message(raw: &[u8; ENTRY_SIZE as usize]) -> MsiMessage {
    MsiMessage {
        address: u64::from(word(raw, ADDR_HI)) << 32 | u64::from(word(raw, ADDR_LO)),
        data: word(raw, DATA),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: MsiMessage = MsiMessage {
        address: 0x0000_0001_FEE0_1018,
        data: 0x0000_00A5,
    };

    #[test]
    fn msix_entries_are_little_endian_words_with_the_mask_in_vector_control() {
        let raw = encode(MSG, CTRL_MASK);
        assert_eq!(
            raw,
            [
                0x18, 0x10, 0xE0, 0xFE, 1, 0, 0, 0, 0xA5, 0, 0, 0, 1, 0, 0, 0
            ]
        );
        assert_eq!(
            decode_msix(&raw),
            SlotState {
                message: MSG,
                masked: true,
                pasid: None
            }
        );
        assert!(!decode_msix(&encode(MSG, 0)).masked);
    }

    #[test]
    fn ims_control_carries_mask_pasid_enable_and_pasid() {
        let ctrl = ims_ctrl(Some(MAX_PASID));
        assert_eq!(ctrl, 0xFFFF_F008);
        let state = decode_ims(&encode(MSG, ctrl));
        assert_eq!((state.masked, state.pasid), (false, Some(MAX_PASID)));
        let state = decode_ims(&encode(MSG, ims_ctrl(Some(0x42)) | CTRL_MASK));
        assert_eq!((state.masked, state.pasid), (true, Some(0x42)));
        // PASID bits without the enable bit mean no PASID.
        let state = decode_ims(&encode(MSG, 0x42 << IMS_PASID_SHIFT));
        assert_eq!((state.masked, state.pasid), (false, None));
    }
}
