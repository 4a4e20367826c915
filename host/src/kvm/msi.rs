//! The values a route is made of: a GSI and the MSI message KVM delivers for it.
//!
//! Messages are `pvirq_proto::MsiMessage`s; guest routes use the compatibility format
//! (`pvirq_proto::CompatMsi`).

use std::fmt;

use kvm_bindings::{KVM_IRQ_ROUTING_MSI, kvm_irq_routing_entry, kvm_irq_routing_msi, kvm_msi};
use pvirq_proto::MsiMessage;

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

/// The message for `KVM_SIGNAL_MSI`, which injects it once without a route.
pub fn kvm_msi(message: MsiMessage) -> kvm_msi {
    kvm_msi {
        address_lo: message.address as u32,
        address_hi: (message.address >> 32) as u32,
        data: message.data,
        ..Default::default()
    }
}

/// The routing-table entry that makes `gsi` deliver `message`.
pub(crate) fn routing_entry(gsi: Gsi, message: MsiMessage) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi: gsi.raw(),
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    entry.u.msi = kvm_irq_routing_msi {
        address_lo: message.address as u32,
        address_hi: (message.address >> 32) as u32,
        data: message.data,
        ..Default::default()
    };
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvirq_proto::CompatMsi;

    #[test]
    fn routing_entry_is_an_msi_entry_for_the_gsi() {
        let e = routing_entry(Gsi::new(77), CompatMsi::fixed(1, 0x30).message());
        assert_eq!((e.gsi, e.type_, e.flags), (77, KVM_IRQ_ROUTING_MSI, 0));
        // SAFETY: the entry was built with its `msi` member.
        let msi = unsafe { e.u.msi };
        assert_eq!(
            (msi.address_lo, msi.address_hi, msi.data),
            (0xFEE0_1000, 0, 0x30)
        );
    }

    #[test]
    fn high_destination_bits_go_to_address_hi() {
        let m = kvm_msi(CompatMsi::fixed(0x1_02, 0x40).message());
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xFEE0_2000, 0x100, 0x40)
        );
    }
}
