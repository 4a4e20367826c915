//! The routes `KVM_CREATE_IRQCHIP` installs for GSIs 0–23, so a commit can keep them.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so a table that wants the in-kernel
//! IOAPIC and PIC to keep working must send their routes along with its own. KVM offers no
//! way to read the table back; the list below mirrors the kernel's `default_routing[]`
//! (`arch/x86/kvm/irq_comm.c`): IOAPIC pin n for GSI n (0–23), and the PIC pin as well for
//! GSIs 0–15.

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    kvm_irq_routing_entry, kvm_irq_routing_irqchip,
};

/// Number of GSIs wired to the in-kernel IOAPIC (and the first GSI free for MSI routes).
pub const IRQCHIP_GSIS: u32 = 24;
/// Number of GSIs also wired to the in-kernel PIC pair.
const PIC_GSIS: u32 = 16;
/// Pins per PIC.
const PIC_PINS: u32 = 8;

/// What a commit does with the irqchip's default routes for GSIs 0–23.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IrqchipRoutes {
    /// Send them with every commit, so the in-kernel IOAPIC and PIC keep delivering. They take
    /// 40 of KVM's 4096 routing entries.
    #[default]
    Keep,
    /// Leave them out: the first commit removes them. For VMs that use no legacy interrupts.
    Omit,
}

impl IrqchipRoutes {
    /// The entries to send with each commit.
    pub(crate) fn entries(self) -> Vec<kvm_irq_routing_entry> {
        match self {
            Self::Keep => default_entries(),
            Self::Omit => Vec::new(),
        }
    }

    /// How many of KVM's routing entries these routes take.
    pub(crate) fn len(self) -> usize {
        match self {
            Self::Keep => (IRQCHIP_GSIS + PIC_GSIS) as usize,
            Self::Omit => 0,
        }
    }
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip = kvm_irq_routing_irqchip { irqchip, pin };
    entry
}

fn default_entries() -> Vec<kvm_irq_routing_entry> {
    let mut entries = Vec::with_capacity(IrqchipRoutes::Keep.len());
    for gsi in 0..IRQCHIP_GSIS {
        entries.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < PIC_GSIS {
            let pic = if gsi < PIC_PINS {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            entries.push(irqchip_entry(gsi, pic, gsi % PIC_PINS));
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_lists_ioapic_and_pic_routes_for_the_legacy_gsis() {
        let entries = IrqchipRoutes::Keep.entries();
        assert_eq!(entries.len(), IrqchipRoutes::Keep.len());
        assert!(entries.iter().all(|e| e.gsi < IRQCHIP_GSIS));
        // SAFETY: every entry was built with its `irqchip` member.
        let chips: Vec<_> = entries
            .iter()
            .map(|e| unsafe { (e.gsi, e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        assert!(chips.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
        assert!(chips.contains(&(9, KVM_IRQCHIP_PIC_SLAVE, 1)));
        assert!(chips.contains(&(3, KVM_IRQCHIP_PIC_MASTER, 3)));
        assert!(
            !chips
                .iter()
                .any(|&(gsi, chip, _)| gsi >= 16 && chip != KVM_IRQCHIP_IOAPIC)
        );
        assert!(IrqchipRoutes::Omit.entries().is_empty());
    }
}
