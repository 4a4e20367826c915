//! Exit counters: what each vCPU exit to the VMM was for. Exits are the cost that matters
//! on these machines (~35 µs each under PVM), so every benchmark reports them per vector.

use pvirq_guest_image_abi::device::{MSIX_PBA, MSIX_TABLE, REGS_SIZE};
use pvirq_guest_image_abi::layout::{
    DEVICE_BAR_SIZE, DEVICE_BARS, MAX_DEVICES, NULL_MMIO, NULL_MMIO_SIZE, PVIRQ_MMIO,
    PVIRQ_MMIO_SIZE,
};
use std::sync::atomic::{AtomicU64, Ordering};

/// What an MMIO exit hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// The pvirq virtio-mmio registers.
    Pvirq,
    /// The null register.
    Null,
    /// A pass-through device's registers (doorbell, IMS base, sizes).
    DeviceRegs,
    /// A trapped MSI-X table.
    MsixTable,
    /// A PBA.
    Pba,
    /// Nothing the VMM knows.
    Unknown,
}

impl ExitKind {
    /// Classifies an MMIO address.
    pub fn of(addr: u64) -> ExitKind {
        let within = |base: u64, size: u64| addr >= base && addr - base < size;
        if within(PVIRQ_MMIO, PVIRQ_MMIO_SIZE) {
            return ExitKind::Pvirq;
        }
        if within(NULL_MMIO, NULL_MMIO_SIZE) {
            return ExitKind::Null;
        }
        if within(DEVICE_BARS, DEVICE_BAR_SIZE * MAX_DEVICES as u64) {
            let offset = (addr - DEVICE_BARS) % DEVICE_BAR_SIZE;
            return if offset < REGS_SIZE {
                ExitKind::DeviceRegs
            } else if (MSIX_TABLE..MSIX_PBA).contains(&offset) {
                ExitKind::MsixTable
            } else {
                ExitKind::Pba
            };
        }
        ExitKind::Unknown
    }
}

/// Exit counts of one VM, all vCPUs together.
#[derive(Debug, Default)]
pub struct ExitCounters {
    pvirq: AtomicU64,
    null: AtomicU64,
    device_regs: AtomicU64,
    msix_table: AtomicU64,
    pba: AtomicU64,
    unknown: AtomicU64,
    pio: AtomicU64,
    mailbox: AtomicU64,
}

/// A copy of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitSnapshot {
    /// To the pvirq registers.
    pub pvirq: u64,
    /// To the null register.
    pub null: u64,
    /// To pass-through device registers.
    pub device_regs: u64,
    /// To trapped MSI-X tables.
    pub msix_table: u64,
    /// To PBAs.
    pub pba: u64,
    /// To addresses nobody owns.
    pub unknown: u64,
    /// Port I/O (stop, fault: ring 0 only).
    pub pio: u64,
    /// Mailbox doorbells (one per command: the hand-over, not part of any flow).
    pub mailbox: u64,
}

impl ExitSnapshot {
    /// MMIO exits in all.
    pub fn mmio(&self) -> u64 {
        self.pvirq + self.null + self.device_regs + self.msix_table + self.pba + self.unknown
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &ExitSnapshot) -> ExitSnapshot {
        ExitSnapshot {
            pvirq: self.pvirq - earlier.pvirq,
            null: self.null - earlier.null,
            device_regs: self.device_regs - earlier.device_regs,
            msix_table: self.msix_table - earlier.msix_table,
            pba: self.pba - earlier.pba,
            unknown: self.unknown - earlier.unknown,
            pio: self.pio - earlier.pio,
            mailbox: self.mailbox - earlier.mailbox,
        }
    }
}

impl ExitCounters {
    /// Counts one MMIO exit at `addr`.
    pub fn mmio(&self, addr: u64) {
        let counter = match ExitKind::of(addr) {
            ExitKind::Pvirq => &self.pvirq,
            ExitKind::Null => &self.null,
            ExitKind::DeviceRegs => &self.device_regs,
            ExitKind::MsixTable => &self.msix_table,
            ExitKind::Pba => &self.pba,
            ExitKind::Unknown => &self.unknown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one mailbox doorbell.
    pub fn mailbox(&self) {
        self.mailbox.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one port exit.
    pub fn pio(&self) {
        self.pio.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> ExitSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExitSnapshot {
            pvirq: get(&self.pvirq),
            null: get(&self.null),
            device_regs: get(&self.device_regs),
            msix_table: get(&self.msix_table),
            pba: get(&self.pba),
            unknown: get(&self.unknown),
            pio: get(&self.pio),
            mailbox: get(&self.mailbox),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvirq_guest_image_abi::layout::device_bar;

    #[test]
    fn addresses_are_classified_by_window() {
        assert_eq!(ExitKind::of(PVIRQ_MMIO + 0x50), ExitKind::Pvirq);
        assert_eq!(ExitKind::of(NULL_MMIO), ExitKind::Null);
        assert_eq!(ExitKind::of(device_bar(3)), ExitKind::DeviceRegs);
        assert_eq!(
            ExitKind::of(device_bar(3) + MSIX_TABLE + 16),
            ExitKind::MsixTable
        );
        assert_eq!(ExitKind::of(device_bar(0) + MSIX_PBA), ExitKind::Pba);
        assert_eq!(ExitKind::of(0xFEE0_0000), ExitKind::Unknown);
        let c = ExitCounters::default();
        c.mmio(NULL_MMIO);
        c.mmio(device_bar(1) + MSIX_TABLE);
        c.pio();
        let s = c.snapshot();
        assert_eq!((s.null, s.msix_table, s.pio, s.mmio()), (1, 1, 1, 2));
        assert_eq!(s.since(&s), ExitSnapshot::default());
    }
}
