//! The pass-through device model's BAR: doorbell, MSI-X table (trapped, or memory the guest
//! writes without exits), PBA, and IMS slots in guest RAM as IDXD keeps them.
//!
//! Firing a slot reads it from its storage, as the hardware does. A masked slot sends
//! nothing and sets its pending bit (the PBA for MSI-X); once unmasked, the pending message
//! is sent exactly once. A trapped table sees the unmask in the write that does it. Memory
//! the VMM does not trap (an untrapped table, IMS slots in RAM) is re-read, the way a device
//! reads its own slot storage: on every doorbell, and by the VM's device poller while any
//! bit is pending ([`PassthroughBar::poll_pending`]).

use crate::passthrough::{DeviceTables, PassthroughError, Slot, SlotState, TableRegion};
use pvirq_guest_image_abi::device::{
    DOORBELL, DOORBELL_IMS, ENTRY_SIZE, IMS_BASE_HI, IMS_BASE_LO, IMS_SLOTS, MSIX_DISABLE,
    MSIX_ENTRIES, MSIX_MAX, MSIX_PBA, MSIX_PBA_SIZE, MSIX_TABLE, MSIX_TABLE_SIZE, PLAIN,
    TABLE_TRAPPED,
};
use pvirq_proto::MsiMessage;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use vm_device::DeviceMmio;
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the MSI-X table lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableMode {
    /// Every access exits to the VMM (what every VMM does today).
    Trapped,
    /// Guest memory: programming it costs no exit (possible with pvirq, whose grants carry
    /// everything delivery needs).
    Memory,
}

/// How the device's messages become interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Messages are pvirq grants: sent through the host's remapping check.
    Pvirq,
    /// The guest composes its own messages; the VMM builds a KVM route for each entry when
    /// it is unmasked and commits the routing table, as QEMU does.
    Trapped,
}

/// A BAR's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarConfig {
    /// The device's PCI requester ID.
    pub requester_id: u16,
    /// MSI-X table size (0..=2048).
    pub msix_entries: u32,
    /// IMS slots.
    pub ims_slots: u32,
    /// Where the MSI-X table lives.
    pub table: TableMode,
    /// How messages are delivered.
    pub flow: Flow,
}

/// Where a device's interrupts go: the wiring to the host (in `wiring`).
pub trait InterruptSink: Send + Sync {
    /// A pvirq-flow message from `requester_id` (tagged with `pasid`, an IMS slot's when it
    /// enables one): through the host's remapping check to the grant's route. False when
    /// the host refused it (and recorded a fault).
    fn fire(&self, requester_id: u16, pasid: Option<u32>, message: MsiMessage) -> bool;
    /// The trapped flow: a route for `message` (replacing `old`), committed now.
    fn route(&self, old: Option<u32>, message: MsiMessage) -> Option<u32>;
    /// The trapped flow: raises route `id`.
    fn fire_route(&self, id: u32) -> bool;
    /// The trapped flow: removes these routes (one commit).
    fn release(&self, ids: &[u32]);
    /// Writes the VMM's plain irqfd (no pvirq in the path).
    fn plain(&self);
}

/// What a BAR did, counted.
#[derive(Debug, Default)]
pub struct BarCounters {
    /// Doorbells rung.
    pub rung: AtomicU64,
    /// Messages sent and delivered.
    pub delivered: AtomicU64,
    /// Messages sent and refused (fault recorded by the host) or with no route.
    pub blocked: AtomicU64,
    /// Fires held back by a mask (pending bit set).
    pub held_pending: AtomicU64,
    /// Pending messages sent on unmask.
    pub sent_pending: AtomicU64,
    /// Routing commits of the trapped flow.
    pub commits: AtomicU64,
}

/// A copy of [`BarCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BarSnapshot {
    /// Doorbells rung.
    pub rung: u64,
    /// Delivered.
    pub delivered: u64,
    /// Refused or unroutable.
    pub blocked: u64,
    /// Held by a mask.
    pub held_pending: u64,
    /// Sent on unmask.
    pub sent_pending: u64,
    /// Routing commits (trapped flow).
    pub commits: u64,
}

impl BarSnapshot {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &BarSnapshot) -> BarSnapshot {
        BarSnapshot {
            rung: self.rung - earlier.rung,
            delivered: self.delivered - earlier.delivered,
            blocked: self.blocked - earlier.blocked,
            held_pending: self.held_pending - earlier.held_pending,
            sent_pending: self.sent_pending - earlier.sent_pending,
            commits: self.commits - earlier.commits,
        }
    }
}

struct State {
    msix: Option<DeviceTables>,
    ims: Option<DeviceTables>,
    ims_base: (u32, u32),
    msix_pending: Vec<bool>,
    ims_pending: Vec<bool>,
    /// Trapped flow: the route behind each unmasked entry.
    routes: Vec<Option<u32>>,
}

/// One pass-through device's BAR on the MMIO bus.
pub struct PassthroughBar {
    config: BarConfig,
    bar: u64,
    ram: GuestMemoryMmap,
    sink: Arc<dyn InterruptSink>,
    state: Mutex<State>,
    counters: BarCounters,
}

impl std::fmt::Debug for PassthroughBar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughBar")
            .field("bar", &format_args!("{:#x}", self.bar))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The table's guest-physical region for a BAR at `bar`.
pub fn table_region(bar: u64) -> (GuestAddress, usize) {
    (GuestAddress(bar + MSIX_TABLE), MSIX_TABLE_SIZE as usize)
}

impl PassthroughBar {
    /// A BAR at `bar`. `ram` is the VM's memory: it holds the IMS slots and, in
    /// [`TableMode::Memory`], the table (the VMM mapped [`table_region`] into it).
    pub fn new(
        config: BarConfig,
        bar: u64,
        ram: GuestMemoryMmap,
        sink: Arc<dyn InterruptSink>,
    ) -> Result<Self, PassthroughError> {
        let entries = config.msix_entries.min(MSIX_MAX);
        let msix = if entries == 0 {
            None
        } else {
            let (base, len) = table_region(bar);
            let mem =
                match config.table {
                    TableMode::Memory => ram.clone(),
                    TableMode::Trapped => GuestMemoryMmap::<()>::from_ranges(&[(base, len)])
                        .map_err(|_| PassthroughError::TableOutsideMemory {
                            base: base.0,
                            entries,
                        })?,
                };
            let region = TableRegion { base, entries };
            Some(DeviceTables::new(mem, Some(region), None)?)
        };
        Ok(PassthroughBar {
            config: BarConfig {
                msix_entries: entries,
                ..config
            },
            bar,
            ram,
            sink,
            state: Mutex::new(State {
                msix,
                ims: None,
                ims_base: (0, 0),
                msix_pending: vec![false; entries as usize],
                ims_pending: vec![false; config.ims_slots as usize],
                routes: vec![None; entries as usize],
            }),
            counters: BarCounters::default(),
        })
    }

    /// The BAR's configuration.
    pub fn config(&self) -> BarConfig {
        self.config
    }

    /// The counters now.
    pub fn counters(&self) -> BarSnapshot {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BarSnapshot {
            rung: get(&c.rung),
            delivered: get(&c.delivered),
            blocked: get(&c.blocked),
            held_pending: get(&c.held_pending),
            sent_pending: get(&c.sent_pending),
            commits: get(&c.commits),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn tables(state: &State, slot: Slot) -> Option<&DeviceTables> {
        match slot {
            Slot::MsiX(_) => state.msix.as_ref(),
            Slot::Ims(_) => state.ims.as_ref(),
        }
    }

    fn pending_bit(state: &mut State, slot: Slot) -> Option<&mut bool> {
        match slot {
            Slot::MsiX(i) => state.msix_pending.get_mut(i as usize),
            Slot::Ims(i) => state.ims_pending.get_mut(i as usize),
        }
    }

    /// Sends what `slot` holds (it is unmasked).
    fn send(&self, state: &State, slot: Slot, read: SlotState) {
        let delivered = match (self.config.flow, slot) {
            (Flow::Pvirq, _) => self
                .sink
                .fire(self.config.requester_id, read.pasid, read.message),
            (Flow::Trapped, Slot::MsiX(i)) => state
                .routes
                .get(i as usize)
                .copied()
                .flatten()
                .is_some_and(|id| self.sink.fire_route(id)),
            (Flow::Trapped, Slot::Ims(_)) => false,
        };
        self.count(if delivered {
            &self.counters.delivered
        } else {
            &self.counters.blocked
        });
    }

    /// The device raises `slot`: sends it, or holds it pending while masked.
    pub fn raise(&self, slot: Slot) {
        self.count(&self.counters.rung);
        let mut state = self.state();
        self.flush_pending(&mut state);
        let Some(read) = Self::tables(&state, slot).and_then(|t| t.read(slot).ok()) else {
            self.count(&self.counters.blocked);
            return;
        };
        if read.masked {
            if let Some(bit) = Self::pending_bit(&mut state, slot) {
                *bit = true;
                self.count(&self.counters.held_pending);
            }
            return;
        }
        self.send(&state, slot, read);
    }

    fn flush_pending(&self, state: &mut State) {
        let pending: Vec<Slot> = state
            .msix_pending
            .iter()
            .enumerate()
            .filter(|(_, p)| **p)
            .map(|(i, _)| Slot::MsiX(i as u32))
            .chain(
                state
                    .ims_pending
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| **p)
                    .map(|(i, _)| Slot::Ims(i as u32)),
            )
            .collect();
        for slot in pending {
            let Some(read) = Self::tables(state, slot).and_then(|t| t.read(slot).ok()) else {
                continue;
            };
            if !read.masked {
                if let Some(bit) = Self::pending_bit(state, slot) {
                    *bit = false;
                }
                self.count(&self.counters.sent_pending);
                self.send(state, slot, read);
            }
        }
    }

    /// Whether any slot holds a pending interrupt.
    pub fn has_pending(&self) -> bool {
        let state = self.state();
        state
            .msix_pending
            .iter()
            .chain(&state.ims_pending)
            .any(|p| *p)
    }

    /// Re-reads every pending slot and sends those now unmasked (the device poller's job
    /// for storage the VMM does not trap).
    pub fn poll_pending(&self) {
        let mut state = self.state();
        self.flush_pending(&mut state);
    }

    fn set_ims_base(&self, state: &mut State) {
        let base = u64::from(state.ims_base.0) | u64::from(state.ims_base.1) << 32;
        state.ims = None;
        if self.config.ims_slots == 0 || base == 0 {
            return;
        }
        let region = TableRegion {
            base: GuestAddress(base),
            entries: self.config.ims_slots,
        };
        // Slots outside RAM leave the device without IMS (its fires are blocked).
        state.ims = DeviceTables::new(self.ram.clone(), None, Some(region)).ok();
        state.ims_pending.iter_mut().for_each(|p| *p = false);
    }

    fn disable_msix(&self, state: &mut State) {
        if let Some(t) = &state.msix {
            for i in 0..self.config.msix_entries {
                let _ = t.mask(Slot::MsiX(i));
            }
        }
        let ids: Vec<u32> = state.routes.iter_mut().filter_map(Option::take).collect();
        if !ids.is_empty() {
            self.sink.release(&ids);
            self.count(&self.counters.commits);
        }
    }

    /// A trapped table write: store it, then act on an unmask.
    fn table_write(&self, state: &mut State, offset: u64, data: &[u8]) {
        let Some(tables) = state.msix.clone() else {
            return;
        };
        let index = (offset / ENTRY_SIZE) as u32;
        let slot = Slot::MsiX(index);
        let Ok(before) = tables.read(slot) else {
            return;
        };
        let Ok(entry) = tables.address(slot) else {
            return;
        };
        let at = GuestAddress(entry.0 + offset % ENTRY_SIZE);
        if tables.memory().write_slice(data, at).is_err() {
            return;
        }
        let Ok(after) = tables.read(slot) else {
            return;
        };
        if !before.masked || after.masked {
            return;
        }
        if self.config.flow == Flow::Trapped {
            // QEMU: the unmask backs the vector and commits the routing table.
            let old = state.routes.get(index as usize).copied().flatten();
            let id = self.sink.route(old, after.message);
            self.count(&self.counters.commits);
            if let Some(r) = state.routes.get_mut(index as usize) {
                *r = id;
            }
        }
        if let Some(bit) = state.msix_pending.get_mut(index as usize)
            && *bit
        {
            *bit = false;
            self.count(&self.counters.sent_pending);
            self.send(state, slot, after);
        }
    }

    fn read_reg(&self, offset: u64, data: &mut [u8]) {
        let state = self.state();
        let word = match offset {
            IMS_BASE_LO => state.ims_base.0,
            IMS_BASE_HI => state.ims_base.1,
            IMS_SLOTS => self.config.ims_slots,
            MSIX_ENTRIES => self.config.msix_entries,
            TABLE_TRAPPED => u32::from(self.config.table == TableMode::Trapped),
            o if (MSIX_PBA..MSIX_PBA + MSIX_PBA_SIZE).contains(&o) => {
                let first = ((o - MSIX_PBA) / 4 * 32) as usize;
                (0..32).fold(0u32, |w, bit| {
                    let set = state
                        .msix_pending
                        .get(first + bit)
                        .copied()
                        .unwrap_or(false);
                    w | (u32::from(set) << bit)
                })
            }
            o if (MSIX_TABLE..MSIX_TABLE + MSIX_TABLE_SIZE).contains(&o) => {
                let rel = o - MSIX_TABLE;
                let raw = state
                    .msix
                    .as_ref()
                    .and_then(|t| t.raw(Slot::MsiX((rel / ENTRY_SIZE) as u32)).ok());
                raw.map_or(u32::MAX, |raw| {
                    let at = (rel % ENTRY_SIZE) as usize & !3;
                    let mut w = [0u8; 4];
                    w.copy_from_slice(raw.get(at..at + 4).unwrap_or(&[0xFF; 4]));
                    u32::from_le_bytes(w)
                })
            }
            _ => u32::MAX,
        };
        let bytes = word.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0xFF);
        }
    }

    fn write_reg(&self, offset: u64, data: &[u8]) {
        let mut w = [0u8; 4];
        for (i, b) in data.iter().take(4).enumerate() {
            w[i] = *b;
        }
        let word = u32::from_le_bytes(w);
        match offset {
            DOORBELL => {
                let index = word & !DOORBELL_IMS;
                self.raise(if word & DOORBELL_IMS != 0 {
                    Slot::Ims(index)
                } else {
                    Slot::MsiX(index)
                });
            }
            PLAIN => self.sink.plain(),
            IMS_BASE_LO => self.state().ims_base.0 = word,
            IMS_BASE_HI => {
                let mut state = self.state();
                state.ims_base.1 = word;
                self.set_ims_base(&mut state);
            }
            MSIX_DISABLE => self.disable_msix(&mut self.state()),
            o if self.config.table == TableMode::Trapped
                && (MSIX_TABLE..MSIX_TABLE + MSIX_TABLE_SIZE).contains(&o) =>
            {
                self.table_write(&mut self.state(), o - MSIX_TABLE, data);
            }
            _ => {}
        }
    }
}

impl DeviceMmio for PassthroughBar {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.read_reg(offset, data);
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.write_reg(offset, data);
    }
}
