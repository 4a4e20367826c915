//! The values a route is made of: a GSI and the MSI message KVM delivers for it.

use std::fmt;

use kvm_bindings::{KVM_IRQ_ROUTING_MSI, kvm_irq_routing_entry, kvm_irq_routing_msi, kvm_msi};

/// A global system interrupt number: the index of one entry in a VM's KVM routing table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gsi(u32);

impl Gsi {
    /// Wraps a raw GSI number. Tables check that the GSI is theirs before using it.
    pub const fn new(raw: u32) -> Self {
        Self(raw)
    }

    /// The raw GSI number, as KVM sees it.
    pub const fn raw(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Gsi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GSI {}", self.0)
    }
}

/// Base of the x86 MSI address window (the local APICs).
const MSI_ADDRESS_BASE: u32 = 0xFEE0_0000;
/// Bit position of the destination APIC ID in a compatibility-format MSI address.
const MSI_DEST_SHIFT: u32 = 12;

/// An MSI message as the device would write it: address and data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsiMessage {
    /// Low 32 bits of the message address.
    pub address_lo: u32,
    /// High 32 bits of the message address (0 in compatibility format).
    pub address_hi: u32,
    /// Message data.
    pub data: u32,
}

impl MsiMessage {
    /// A compatibility-format message: physical destination `dest_apic_id`, fixed delivery,
    /// edge trigger, `vector`.
    pub const fn compat(dest_apic_id: u8, vector: u8) -> Self {
        Self {
            address_lo: MSI_ADDRESS_BASE | (dest_apic_id as u32) << MSI_DEST_SHIFT,
            address_hi: 0,
            data: vector as u32,
        }
    }

    /// The destination APIC ID, read back from a compatibility-format address.
    pub const fn dest_apic_id(&self) -> u8 {
        (self.address_lo >> MSI_DEST_SHIFT) as u8
    }

    /// The vector, read back from the data (bits 7:0).
    pub const fn vector(&self) -> u8 {
        self.data as u8
    }

    /// The message for `KVM_SIGNAL_MSI`, which injects it once without a route.
    pub fn to_kvm_msi(self) -> kvm_msi {
        kvm_msi {
            address_lo: self.address_lo,
            address_hi: self.address_hi,
            data: self.data,
            ..Default::default()
        }
    }

    /// The routing-table entry that makes `gsi` deliver this message.
    pub(crate) fn routing_entry(self, gsi: Gsi) -> kvm_irq_routing_entry {
        let mut entry = kvm_irq_routing_entry {
            gsi: gsi.raw(),
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        entry.u.msi = kvm_irq_routing_msi {
            address_lo: self.address_lo,
            address_hi: self.address_hi,
            data: self.data,
            ..Default::default()
        };
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compat_format_places_destination_and_vector() {
        let m = MsiMessage::compat(3, 0x41);
        assert_eq!(m.address_lo, 0xFEE0_3000);
        assert_eq!(m.address_hi, 0);
        assert_eq!(m.data, 0x41);
        assert_eq!((m.dest_apic_id(), m.vector()), (3, 0x41));
        assert_eq!(MsiMessage::compat(0xFF, 0xFF).address_lo, 0xFEEF_F000);
    }

    #[test]
    fn routing_entry_is_an_msi_entry_for_the_gsi() {
        let e = MsiMessage::compat(1, 0x30).routing_entry(Gsi::new(77));
        assert_eq!((e.gsi, e.type_, e.flags), (77, KVM_IRQ_ROUTING_MSI, 0));
        // SAFETY: the entry was built with its `msi` member.
        let msi = unsafe { e.u.msi };
        assert_eq!(
            (msi.address_lo, msi.address_hi, msi.data),
            (0xFEE0_1000, 0, 0x30)
        );
    }
}
