//! What the backend knows the kernel holds for one kind of one device: whether the kind
//! is enabled, how large its first enable made it, and which vectors have triggers.

use super::kernel::IrqInfo;

/// One kind's (MSI or MSI-X) state, mirrored from the calls that succeeded.
#[derive(Clone, Debug)]
pub struct KindState {
    /// The VFIO IRQ index.
    pub vfio_index: u32,
    /// What `VFIO_DEVICE_GET_IRQ_INFO` reported.
    pub info: IrqInfo,
    /// Whether the kernel has this kind enabled (`irq_type` in `vfio_pci_intrs.c`).
    pub on: bool,
    /// The vectors the first enable allocated (`start + count` of that call): the most
    /// that can be enabled without dynamic MSI-X, and for MSI.
    pub allocated: u32,
    /// Per vector: whether it has a trigger in the kernel.
    enabled: Vec<bool>,
    /// How many entries of `enabled` are set.
    enabled_count: u32,
    /// Per vector: bumped on every enable, so a message of an earlier grant of the same
    /// index is told apart from the current one.
    generation: Vec<u8>,
}

impl KindState {
    /// The state of a kind nothing is enabled for.
    pub fn new(vfio_index: u32, info: IrqInfo) -> Self {
        let n = usize::try_from(info.count).unwrap_or(0);
        KindState {
            vfio_index,
            info,
            on: false,
            allocated: 0,
            enabled: vec![false; n],
            enabled_count: 0,
            generation: vec![0; n],
        }
    }

    /// Whether `index` has a trigger.
    pub fn is_enabled(&self, index: u32) -> bool {
        self.enabled
            .get(usize::try_from(index).unwrap_or(usize::MAX))
            .copied()
            .unwrap_or(false)
    }

    /// How many vectors have triggers.
    pub fn enabled_count(&self) -> u32 {
        self.enabled_count
    }

    /// The enabled indices, ascending.
    pub fn enabled_indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.enabled
            .iter()
            .enumerate()
            .filter(|(_, on)| **on)
            .filter_map(|(i, _)| u32::try_from(i).ok())
    }

    /// Whether growing past what the first enable allocated is impossible while on.
    pub fn fixed_size(&self, msi: bool) -> bool {
        msi || self.info.noresize()
    }

    /// Records that `index` now has a trigger; returns its new generation.
    pub fn mark_enabled(&mut self, index: u32) -> u8 {
        let i = usize::try_from(index).unwrap_or(usize::MAX);
        if let Some(slot) = self.enabled.get_mut(i)
            && !*slot
        {
            *slot = true;
            self.enabled_count += 1;
        }
        match self.generation.get_mut(i) {
            Some(generation) => {
                *generation = generation.wrapping_add(1);
                *generation
            }
            None => 0,
        }
    }

    /// Sets the generation of `index` (a restored grant keeps its message).
    pub fn set_generation(&mut self, index: u32, generation: u8) {
        if let Some(g) = self
            .generation
            .get_mut(usize::try_from(index).unwrap_or(usize::MAX))
        {
            *g = generation;
        }
    }

    /// Records that `index` has no trigger any more.
    pub fn mark_disabled(&mut self, index: u32) {
        let i = usize::try_from(index).unwrap_or(usize::MAX);
        if let Some(slot) = self.enabled.get_mut(i)
            && *slot
        {
            *slot = false;
            self.enabled_count -= 1;
        }
    }

    /// The current generation of `index`.
    pub fn generation(&self, index: u32) -> u8 {
        self.generation
            .get(usize::try_from(index).unwrap_or(usize::MAX))
            .copied()
            .unwrap_or(0)
    }

    /// Records that the kernel disabled the whole kind (and freed its host IRQs).
    pub fn mark_off(&mut self) {
        self.on = false;
        self.allocated = 0;
        self.enabled.iter_mut().for_each(|e| *e = false);
        self.enabled_count = 0;
    }
}
