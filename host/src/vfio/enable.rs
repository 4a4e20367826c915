//! Backing a prefix of an [`EnableRequest`] with `VFIO_DEVICE_SET_IRQS`, with bounded work.
//!
//! What the kernel does (Linux 6.12 `vfio_pci_intrs.c`) and what follows from it:
//! - The first call while the kind is off sizes it: `vfio_msi_enable(start + count)`
//!   allocates host IRQs for indices `0..start + count` (those below `start` stay cached,
//!   without handlers, until the kind is disabled). MSI can never grow after that, nor
//!   can MSI-X when `VFIO_IRQ_INFO_NORESIZE` is set; dynamic MSI-X allocates at any index.
//! - A call backs its vectors in order and, if one fails, detaches the ones it attached
//!   (`vfio_msi_set_block`); a failed first call disables the kind again. So a call is all
//!   or nothing, and what earlier calls attached stays.
//!
//! Hence: one call per run of consecutive indices (usually the whole request is one run).
//! If a run fails for a shortage, the largest prefix of it that fits is found by halving
//! (each attempt all or nothing, successes kept): at most ⌈log2 n⌉ more calls. Any other
//! refusal, or a prefix shorter than `min`, detaches everything this request attached.

use super::disable::disable;
use super::errno::{IommuKind, backend_error, is_shortage, shortage_resource};
use super::irq_set::IrqSet;
use super::kernel::IrqHost;
use super::state::KindState;
use super::token::VmmToken;
use crate::backend::{BackendError, EnableRequest, Enabled};
use pvirq_proto::{GrantMode, Kind, Resource};
use std::os::fd::RawFd;

/// One request being backed: the kernel, the kind's state and the request's fds.
struct Run<'a, H> {
    host: &'a mut H,
    state: &'a mut KindState,
    kind: Kind,
    iommu: IommuKind,
    indices: Vec<u32>,
    fds: Vec<RawFd>,
    /// Detach calls the kernel refused while undoing (counted by the backend).
    failures: &'a mut u64,
}

/// A refused call: what it means, and for a first enable that found fewer vectors, how
/// many the kernel could have allocated.
struct Refusal {
    error: BackendError,
    fewer: Option<u32>,
}

/// Backs a prefix of `request` (of `kind`, whose state is `state`) on `host`; pushes one
/// [`Enabled`] per backed vector onto `out`. All or nothing, as the trait requires.
pub fn enable<H: IrqHost>(
    host: &mut H,
    state: &mut KindState,
    kind: Kind,
    iommu: IommuKind,
    request: &EnableRequest<'_>,
    out: &mut Vec<Enabled>,
    failures: &mut u64,
) -> Result<(), BackendError> {
    let mut indices = Vec::with_capacity(request.vectors.len());
    let mut fds = Vec::with_capacity(request.vectors.len());
    for v in request.vectors {
        let fd = v
            .trigger
            .eventfd()
            .ok_or(BackendError::NotAnEventFd { index: v.index })?;
        indices.push(v.index);
        fds.push(fd);
    }
    check_free(state, &indices)?;
    let mut run = Run {
        host,
        state,
        kind,
        iommu,
        indices,
        fds,
        failures,
    };
    let (backed, stop) = if kind == Kind::Msi && !run.state.on {
        run.msi_block(request.min)?
    } else {
        run.prefix()?
    };
    if backed < request.min {
        run.undo(backed);
        return Err(match stop {
            Some(BackendError::Exhausted { resource, .. }) => BackendError::Exhausted {
                resource,
                supplied: u32::try_from(backed).unwrap_or(u32::MAX),
            },
            Some(other) => other,
            None => BackendError::Exhausted {
                resource: Resource::None,
                supplied: u32::try_from(backed).unwrap_or(u32::MAX),
            },
        });
    }
    for (v, &index) in request
        .vectors
        .iter()
        .zip(run.indices.get(..backed).unwrap_or(&[]))
    {
        // A restored grant whose old message is this index's token keeps it: the guest
        // need not reprogram the entry.
        if let Some(old) = v.previous.and_then(VmmToken::decode)
            && old.kind == kind
            && u32::from(old.index) == index
        {
            run.state.set_generation(index, old.generation);
        }
        let token = VmmToken {
            kind,
            // Tables have at most 2048 entries; the kernel refused anything larger.
            index: u16::try_from(index).unwrap_or(u16::MAX),
            generation: run.state.generation(index),
        };
        out.push(Enabled {
            message: token.message(),
            mode: GrantMode::Remapped,
        });
    }
    Ok(())
}

/// Refuses, before any call, an index that is already enabled or named twice: a batch
/// containing it would replace (and on failure detach) a vector another grant owns.
fn check_free(state: &KindState, indices: &[u32]) -> Result<(), BackendError> {
    let busy = BackendError::Errno {
        errno: libc::EBUSY,
        resource: Resource::DeviceSlots,
    };
    if indices.iter().any(|&i| state.is_enabled(i)) {
        return Err(busy);
    }
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w.first() == w.get(1)) {
        return Err(busy);
    }
    Ok(())
}

impl<H: IrqHost> Run<'_, H> {
    /// Backs the vectors from position 0 on, run by run; stops at the first shortage
    /// after backing the largest prefix of that run that fits. Returns how many are
    /// backed and why it stopped early, if it did.
    fn prefix(&mut self) -> Result<(usize, Option<BackendError>), BackendError> {
        let n = self.indices.len();
        let mut pos = 0;
        while pos < n {
            let mut len = self.run_len(pos);
            if let Some(room) = self.room(pos) {
                if room == 0 {
                    return Ok((pos, Some(BackendError::NoResize { kind: self.kind })));
                }
                len = len.min(room);
            }
            match self.call(pos, len) {
                Ok(()) => pos += len,
                Err(refusal) if is_shortage(&refusal.error) => {
                    let extra = self.halve(pos, len).inspect_err(|_| self.undo(pos))?;
                    return Ok((pos + extra, Some(refusal.error)));
                }
                Err(refusal) => {
                    self.undo(pos);
                    return Err(refusal.error);
                }
            }
        }
        Ok((n, None))
    }

    /// How many vectors from `pos` fit in a table that cannot grow, or `None` if it can.
    fn room(&self, pos: usize) -> Option<usize> {
        if !(self.state.on && self.state.fixed_size(self.kind == Kind::Msi)) {
            return None;
        }
        let allocated = self.state.allocated;
        Some(
            self.indices
                .get(pos..)
                .unwrap_or(&[])
                .iter()
                .take_while(|&&i| i < allocated)
                .count(),
        )
    }

    /// After `[pos, pos + failed)` was refused for a shortage: backs the largest prefix of
    /// it that fits, halving the attempt on each refusal. Returns how many it backed.
    fn halve(&mut self, pos: usize, failed: usize) -> Result<usize, BackendError> {
        let mut backed = 0;
        let mut failing = failed;
        while failing > 1 {
            let len = failing / 2;
            match self.call(pos + backed, len) {
                Ok(()) => {
                    backed += len;
                    failing -= len;
                }
                Err(refusal) if is_shortage(&refusal.error) => failing = len,
                Err(refusal) => {
                    self.undo(pos + backed);
                    return Err(refusal.error);
                }
            }
        }
        Ok(backed)
    }

    /// Enables an MSI block while MSI is off: the largest power of two of the request
    /// first, halving on each shortage down to `min` (at most six calls for 32 vectors).
    fn msi_block(&mut self, min: usize) -> Result<(usize, Option<BackendError>), BackendError> {
        let n = self.indices.len();
        if n == 0 {
            return Ok((0, None));
        }
        if self
            .indices
            .iter()
            .enumerate()
            .any(|(pos, &i)| usize::try_from(i).ok() != Some(pos))
        {
            // Not the block 0..n: the kernel's MSI vectors are numbered from 0.
            return Err(BackendError::Errno {
                errno: libc::EINVAL,
                resource: Resource::DeviceSlots,
            });
        }
        let mut size = 1usize << n.ilog2();
        let mut last = None;
        while size >= min.max(1) {
            match self.call(0, size) {
                Ok(()) => return Ok((size, last)),
                Err(refusal) if is_shortage(&refusal.error) => {
                    let hint = refusal
                        .fewer
                        .and_then(|f| usize::try_from(f).ok())
                        .filter(|&f| f > 0);
                    size = match hint {
                        Some(f) if f < size => 1 << f.ilog2(),
                        _ => size / 2,
                    };
                    last = Some(refusal.error);
                }
                Err(refusal) => return Err(refusal.error),
            }
        }
        Ok((0, last))
    }

    /// The length of the run of consecutive indices starting at `pos`.
    fn run_len(&self, pos: usize) -> usize {
        let rest = self.indices.get(pos..).unwrap_or(&[]);
        let mut len = 1;
        while let (Some(&a), Some(&b)) = (rest.get(len - 1), rest.get(len)) {
            if a.checked_add(1) != Some(b) {
                break;
            }
            len += 1;
        }
        len.min(rest.len())
    }

    /// One call attaching the vectors at positions `pos..pos + len` (consecutive indices).
    fn call(&mut self, pos: usize, len: usize) -> Result<(), Refusal> {
        let (Some(indices), Some(fds)) = (
            self.indices.get(pos..pos + len),
            self.fds.get(pos..pos + len),
        ) else {
            return Ok(());
        };
        let Some(&start) = indices.first() else {
            return Ok(());
        };
        let set = IrqSet::Signal {
            index: self.state.vfio_index,
            start,
            fds,
        };
        match self.host.set_irqs(&set) {
            Ok(0) => {
                if !self.state.on {
                    self.state.on = true;
                    self.state.allocated = start.saturating_add(set.count());
                }
                for &i in indices {
                    self.state.mark_enabled(i);
                }
                Ok(())
            }
            // Only a first enable returns a count: fewer vectors than it asked for could
            // be allocated, and the kernel freed them all.
            Ok(fewer) => Err(Refusal {
                error: BackendError::Exhausted {
                    resource: shortage_resource(self.iommu),
                    supplied: 0,
                },
                fewer: Some(fewer.saturating_sub(start)),
            }),
            Err(errno) => Err(Refusal {
                error: backend_error(errno, self.kind, self.iommu),
                fewer: None,
            }),
        }
    }

    /// Detaches the vectors at positions `0..pos`, which this request attached.
    fn undo(&mut self, pos: usize) {
        let held = self.indices.get(..pos).unwrap_or(&[]).to_vec();
        *self.failures += u64::from(disable(self.host, self.state, &held));
    }
}
