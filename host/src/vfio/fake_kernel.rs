//! A model of Linux 6.12 `vfio_pci_intrs.c` for MSI/MSI-X triggers, for the unit tests and
//! the fuzzer (feature `test-utils`): first enable sized `start + count`, batches that roll
//! themselves back, IRQs cached until the kind is disabled, dynamic MSI-X, a pool of CPU
//! vectors (ENOSPC) and of IRTEs (ENOMEM, as VT-d reports it).

use super::irq_set::IrqSet;
use super::kernel::{IrqHost, IrqInfo};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, PoisonError};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_NORESIZE, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
};

/// The modelled device and host.
#[derive(Debug)]
pub struct FakeKernel {
    /// Vectors of the MSI capability.
    pub msi_count: u32,
    /// MSI-X table size.
    pub msix_count: u32,
    /// Whether MSI-X reports `VFIO_IRQ_INFO_NORESIZE` (no dynamic MSI-X).
    pub noresize: bool,
    /// Free CPU vectors (taken at request_irq, given back at free_irq).
    pub cpu_vectors: u32,
    /// Free IRTEs (taken when an IRQ is allocated, given back when the kind is disabled).
    pub irtes: u32,
    /// Which index is on (`irq_type`).
    pub on: Option<u32>,
    /// Indices with an allocated host IRQ (the cache).
    pub allocated: BTreeSet<u32>,
    /// Indices with a handler, and the fd they signal.
    pub triggers: BTreeMap<u32, RawFd>,
    /// Every call: (index, start, count, data-none?).
    pub calls: Vec<(u32, u32, u32, bool)>,
}

impl FakeKernel {
    /// A device with an MSI-X table of `msix_count` (MSI: 32) on a host with `cpu_vectors`
    /// free CPU vectors and 65,536 free IRTEs.
    pub fn new(msix_count: u32, cpu_vectors: u32) -> Self {
        FakeKernel {
            msi_count: 32,
            msix_count,
            noresize: false,
            cpu_vectors,
            irtes: 65_536,
            on: None,
            allocated: BTreeSet::new(),
            triggers: BTreeMap::new(),
            calls: Vec::new(),
        }
    }

    fn disable(&mut self) {
        // Both sets hold u32 indices of tables far smaller than u32::MAX entries.
        self.cpu_vectors += u32::try_from(self.triggers.len()).unwrap_or(u32::MAX);
        self.triggers.clear();
        self.irtes += u32::try_from(self.allocated.len()).unwrap_or(u32::MAX);
        self.allocated.clear();
        self.on = None;
    }

    fn set_vector(&mut self, index: u32, vector: u32, fd: RawFd) -> Result<(), i32> {
        if self.triggers.remove(&vector).is_some() {
            self.cpu_vectors += 1;
        }
        if fd < 0 {
            return Ok(());
        }
        if !self.allocated.contains(&vector) {
            let dynamic = index == VFIO_PCI_MSIX_IRQ_INDEX && !self.noresize;
            if !dynamic {
                return Err(libc::EINVAL);
            }
            if self.irtes == 0 {
                return Err(libc::ENOMEM);
            }
            self.irtes -= 1;
            self.allocated.insert(vector);
        }
        if self.cpu_vectors == 0 {
            return Err(libc::ENOSPC);
        }
        self.cpu_vectors -= 1;
        self.triggers.insert(vector, fd);
        Ok(())
    }

    fn set_block(&mut self, index: u32, start: u32, fds: &[RawFd]) -> Result<(), i32> {
        for (vector, &fd) in (start..).zip(fds) {
            if let Err(e) = self.set_vector(index, vector, fd) {
                for undo in start..=vector {
                    let _ = self.set_vector(index, undo, -1);
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

impl IrqHost for FakeKernel {
    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        let noresize = if self.noresize || index == VFIO_PCI_MSI_IRQ_INDEX {
            VFIO_IRQ_INFO_NORESIZE
        } else {
            0
        };
        let count = match index {
            VFIO_PCI_MSI_IRQ_INDEX => self.msi_count,
            VFIO_PCI_MSIX_IRQ_INDEX => self.msix_count,
            _ => return None,
        };
        Some(IrqInfo {
            count,
            flags: VFIO_IRQ_INFO_EVENTFD | noresize,
        })
    }

    fn set_irqs(&mut self, set: &IrqSet<'_>) -> Result<u32, i32> {
        match *set {
            IrqSet::DisableAll { index } => {
                self.calls.push((index, 0, 0, true));
                if self.on == Some(index) {
                    self.disable();
                }
                Ok(0)
            }
            // The backend never fires; modelled only as far as the kernel's refusal.
            IrqSet::Fire {
                index,
                start,
                count,
            } => {
                self.calls.push((index, start, count, false));
                if self.on == Some(index) {
                    Ok(0)
                } else {
                    Err(libc::EINVAL)
                }
            }
            IrqSet::Signal { index, start, fds } => {
                self.calls.push((index, start, set.count(), false));
                let max = self.irq_info(index).map_or(0, |i| i.count);
                if start.checked_add(set.count()).is_none_or(|end| end > max) {
                    return Err(libc::EINVAL);
                }
                match self.on {
                    Some(on) if on == index => self.set_block(index, start, fds).map(|()| 0),
                    Some(_) => Err(libc::EINVAL),
                    None => {
                        let nvec = start + set.count();
                        if self.irtes < nvec {
                            return if self.irtes == 0 {
                                Err(libc::ENOSPC)
                            } else {
                                Ok(self.irtes)
                            };
                        }
                        self.irtes -= nvec;
                        self.allocated.extend(0..nvec);
                        self.on = Some(index);
                        match self.set_block(index, start, fds) {
                            Ok(()) => Ok(0),
                            Err(e) => {
                                self.disable();
                                Err(e)
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A host (the model, or [`super::FailNth`] over it) that a test keeps a handle on, to
/// look at it, or arm it, while the backend owns it and after the backend is gone.
#[derive(Debug)]
pub struct Shared<H = FakeKernel>(pub Arc<Mutex<H>>);

impl<H> Clone for Shared<H> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<H: IrqHost> IrqHost for Shared<H> {
    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .irq_info(index)
    }

    fn set_irqs(&mut self, set: &IrqSet<'_>) -> Result<u32, i32> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_irqs(set)
    }
}
