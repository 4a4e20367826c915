//! AMD IOMMU interrupt remapping, as the model does it: each device ID has its own
//! remapping table of 512 or 2,048 entries; a message keeps the compatibility-format
//! address and carries the entry's index in its data.
//!
//! The table belongs to the requester, so the source check is implicit: another device's
//! write with the same data indexes that device's own table. Exhausting one device's table
//! does not touch another's.

use super::RemapFault;
use pvirq_proto::{MSI_ADDRESS_BASE, MsiMessage};

/// Remapping-table sizes an AMD IOMMU offers per device ID.
pub const AMD_TABLE_SIZES: [u32; 2] = [512, 2048];

/// The message that selects entry `index` of the sender's table.
pub fn amd_message(index: u32) -> MsiMessage {
    MsiMessage {
        address: u64::from(MSI_ADDRESS_BASE),
        data: index,
    }
}

/// The entry a message selects, as the IOMMU decodes it: data bits 10:0 (the vector, delivery
/// mode and the other data bits are the entry's, not the message's). The address must be an
/// ordinary interrupt address (the remappable-format bit 4 clear).
pub fn amd_index(message: MsiMessage) -> Result<u32, RemapFault> {
    let lo = message.address as u32;
    let interrupt_window = lo & 0xFFF0_0000 == MSI_ADDRESS_BASE;
    if !interrupt_window || message.address >> 32 != 0 || lo & (1 << 4) != 0 {
        return Err(RemapFault::NotRemappable);
    }
    if message.data >> 11 != 0 {
        return Err(RemapFault::NotRemappable);
    }
    Ok(message.data & 0x7FF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvirq_proto::RemappableMsi;

    #[test]
    fn the_index_travels_in_the_data_and_remappable_messages_are_refused() {
        assert_eq!(amd_index(amd_message(77)), Ok(77));
        assert_eq!(amd_index(amd_message(2047)), Ok(2047));
        assert_eq!(amd_index(amd_message(2048)), Err(RemapFault::NotRemappable));
        let vtd = RemappableMsi {
            handle: 3,
            subhandle: Some(0),
        }
        .message();
        assert_eq!(amd_index(vtd), Err(RemapFault::NotRemappable));
    }
}
