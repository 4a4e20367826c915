//! `PassthroughDevice`: a device assigned to a guest that fires interrupts from the slots
//! the guest programmed, through the host's interrupt remapping.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use pvirq_host::DeviceSpec;
use pvirq_host::model::{Delivery, ModelHost};

use super::error::PassthroughError;
use super::slot::Slot;
use super::tables::DeviceTables;

/// A pass-through device: a requester ID and interrupt storage in guest memory.
///
/// [`fire`](Self::fire) does what the hardware does when the device raises a slot: reads
/// the slot from memory; if it is masked, sets the slot's pending bit and sends nothing;
/// otherwise sends the slot's message as a write tagged with its requester ID — which the
/// host's remapping unit checks ([`Host::fire`]) before anything reaches a guest.
/// [`unmask`](Self::unmask) clears the mask and sends a pending interrupt, once.
///
/// The guest may also clear a mask bit with a plain write to the table
/// ([`DeviceTables::unmask`], [`DeviceTables::program`], or any write to that memory), which
/// the device does not see happen. It finds out the way a device reading its own slot
/// storage does: it re-reads its pending slots before every message it sends
/// ([`fire`](Self::fire)) and when polled ([`poll_pending`](Self::poll_pending)), and sends
/// each pending interrupt whose slot is now unmasked, once.
#[derive(Debug)]
pub struct PassthroughDevice {
    requester_id: u16,
    tables: DeviceTables,
    sent: AtomicU64,
    suppressed: AtomicU64,
    pending: Mutex<BTreeSet<Slot>>,
}

impl PassthroughDevice {
    /// A device with requester ID `requester_id` and the given tables.
    pub fn new(requester_id: u16, tables: DeviceTables) -> Self {
        Self {
            requester_id,
            tables,
            sent: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            pending: Mutex::new(BTreeSet::new()),
        }
    }

    /// The PCI requester ID the device's writes carry.
    pub fn requester_id(&self) -> u16 {
        self.requester_id
    }

    /// The device's tables; the guest driver programs and masks slots through them.
    pub fn tables(&self) -> &DeviceTables {
        &self.tables
    }

    /// How the VMM describes this device to the host (no multi-MSI).
    pub fn spec(&self) -> DeviceSpec {
        DeviceSpec {
            requester_id: self.requester_id,
            msi_max: 0,
            msix_table_size: u16::try_from(self.tables.msix_entries()).unwrap_or(u16::MAX),
            ims_slots: self.tables.ims_slots(),
            ..DeviceSpec::default()
        }
    }

    fn pending_set(&self) -> std::sync::MutexGuard<'_, BTreeSet<Slot>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Raises `slot`: if it is unmasked, sends its message to `host` as a write from this
    /// device, and returns where it was delivered. A masked slot sends nothing now and holds
    /// the interrupt pending ([`PassthroughError::Masked`]); a message the host refuses is
    /// [`PassthroughError::Fault`] (the host records it too).
    ///
    /// Before it sends, the device sends what it held for slots the guest has unmasked since
    /// ([`poll_pending`](Self::poll_pending)); their outcomes are counted in
    /// [`sent`](Self::sent), and a refused message is recorded by the host.
    pub fn fire(&self, host: &ModelHost, slot: Slot) -> Result<Delivery, PassthroughError> {
        let _flushed = self.poll_pending(host);
        // Read and hold under the lock: a poll running meanwhile either sees the bit set or
        // reads the slot after this fire did, so no pending interrupt is stranded.
        let mut pending = self.pending_set();
        let state = self.tables.read(slot)?;
        if state.masked {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            pending.insert(slot);
            return Err(PassthroughError::Masked(slot));
        }
        drop(pending);
        self.send(host, slot, state.message)
    }

    /// Takes the pending bit of each pending slot (of `only`, if given) that is unmasked
    /// now, with the message it holds. Bits are cleared under the lock, so each held
    /// interrupt is handed to one caller only, however many poll at once.
    fn take_unmasked(&self, only: Option<Slot>) -> Vec<(Slot, pvirq_proto::MsiMessage)> {
        let mut pending = self.pending_set();
        let ready: Vec<_> = pending
            .iter()
            .filter(|slot| only.is_none_or(|o| o == **slot))
            .filter_map(|&slot| {
                let state = self.tables.read(slot).ok()?;
                (!state.masked).then_some((slot, state.message))
            })
            .collect();
        for (slot, _) in &ready {
            pending.remove(slot);
        }
        ready
    }

    /// Re-reads every slot holding a pending interrupt and sends each one the guest has
    /// unmasked since — once: its pending bit clears. Returns what was sent, slot by slot
    /// (empty when nothing was). The VMM's device poller calls this for table memory it does
    /// not trap; [`fire`](Self::fire) does it before sending.
    pub fn poll_pending(
        &self,
        host: &ModelHost,
    ) -> Vec<(Slot, Result<Delivery, PassthroughError>)> {
        self.take_unmasked(None)
            .into_iter()
            .map(|(slot, message)| (slot, self.send(host, slot, message)))
            .collect()
    }

    fn send(
        &self,
        host: &ModelHost,
        slot: Slot,
        message: pvirq_proto::MsiMessage,
    ) -> Result<Delivery, PassthroughError> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        host.fire(self.requester_id, message)
            .map_err(|fault| PassthroughError::Fault { slot, fault })
    }

    /// The guest unmasks `slot`: the mask bit clears and, if the device held an interrupt
    /// pending for it, that interrupt is sent now — once, however many fires it held.
    /// Returns where it was delivered (`None`: nothing was pending).
    pub fn unmask(
        &self,
        host: &ModelHost,
        slot: Slot,
    ) -> Result<Option<Delivery>, PassthroughError> {
        self.tables.unmask(slot)?;
        match self.take_unmasked(Some(slot)).first() {
            Some(&(slot, message)) => self.send(host, slot, message).map(Some),
            None => Ok(None),
        }
    }

    /// Whether `slot` holds a pending interrupt (the PBA bit, for MSI-X).
    pub fn is_pending(&self, slot: Slot) -> bool {
        self.pending_set().contains(&slot)
    }

    /// Messages the device has sent (delivered or not).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Fires suppressed because the slot was masked.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}
