//! Detaching vectors: `fd -1` per run of consecutive indices, or one call that disables
//! the whole kind when nothing would stay enabled (which also frees the host IRQs the
//! kernel keeps cached for detached indices, and lets a fixed-size table be sized anew).

use super::irq_set::{DETACH, IrqSet};
use super::kernel::IrqHost;
use super::state::KindState;

/// Detaches the enabled vectors among `indices`; returns how many calls the kernel
/// refused. The state says they are detached either way: the core's view cannot fail,
/// and a refused detach is counted (`VfioBackend::disable_failures`).
pub fn disable<H: IrqHost>(host: &mut H, state: &mut KindState, indices: &[u32]) -> u32 {
    let mut targets: Vec<u32> = indices
        .iter()
        .copied()
        .filter(|&i| state.is_enabled(i))
        .collect();
    targets.sort_unstable();
    targets.dedup();
    if targets.is_empty() {
        return 0;
    }
    let mut failures = 0;
    if u32::try_from(targets.len()).ok() == Some(state.enabled_count()) {
        match host.set_irqs(&IrqSet::DisableAll {
            index: state.vfio_index,
        }) {
            Ok(_) => {
                state.mark_off();
                return 0;
            }
            // Fall back to detaching one run at a time.
            Err(_) => failures += 1,
        }
    }
    let detach = vec![DETACH; targets.len()];
    let mut rest = targets.as_slice();
    while let Some(&first) = rest.first() {
        let len = run_len(rest);
        let set = IrqSet::Signal {
            index: state.vfio_index,
            start: first,
            fds: detach.get(..len).unwrap_or(&[]),
        };
        if host.set_irqs(&set).is_err() {
            failures += 1;
        }
        for &i in rest.get(..len).unwrap_or(&[]) {
            state.mark_disabled(i);
        }
        rest = rest.get(len..).unwrap_or(&[]);
    }
    failures
}

/// Disables the whole kind if the kernel has it on; returns the calls refused.
pub fn disable_all<H: IrqHost>(host: &mut H, state: &mut KindState) -> u32 {
    if !state.on {
        return 0;
    }
    match host.set_irqs(&IrqSet::DisableAll {
        index: state.vfio_index,
    }) {
        Ok(_) => {
            state.mark_off();
            0
        }
        Err(_) => 1,
    }
}

/// The length of the run of consecutive ascending indices at the start of `sorted`.
fn run_len(sorted: &[u32]) -> usize {
    let mut len = 1;
    while let (Some(&a), Some(&b)) = (sorted.get(len - 1), sorted.get(len)) {
        if a.checked_add(1) != Some(b) {
            break;
        }
        len += 1;
    }
    len.min(sorted.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_are_maximal_consecutive_prefixes() {
        assert_eq!(super::run_len(&[3, 4, 5, 9]), 3);
        assert_eq!(super::run_len(&[3, 9]), 1);
        assert_eq!(super::run_len(&[7]), 1);
        assert_eq!(super::run_len(&[u32::MAX - 1, u32::MAX]), 2);
    }
}
