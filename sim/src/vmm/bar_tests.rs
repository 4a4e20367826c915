//! The BAR model without KVM: pending bits across mask/unmask (issue 11 item 7), trapped
//! writes and the trapped flow's routes, against a sink that records what it was asked.

use super::bar::{BarConfig, Flow, InterruptSink, PassthroughBar, TableMode, table_region};
use pvirq_guest_image_abi::device::{
    CTRL_MASK, DOORBELL, DOORBELL_IMS, IMS_BASE_HI, IMS_BASE_LO, MSIX_DISABLE, MSIX_PBA, MSIX_TABLE,
};
use pvirq_proto::MsiMessage;
use std::sync::{Arc, Mutex};
use vm_device::DeviceMmio;
use vm_device::bus::MmioAddress;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const BAR: u64 = 0xD010_0000;
const IMS_BASE: u64 = 0x6000;

#[derive(Default)]
struct Recorder {
    fired: Mutex<Vec<MsiMessage>>,
    routes: Mutex<Vec<(Option<u32>, MsiMessage)>>,
    route_fires: Mutex<Vec<u32>>,
    released: Mutex<Vec<u32>>,
}

impl InterruptSink for Recorder {
    fn fire(&self, _requester_id: u16, _pasid: Option<u32>, message: MsiMessage) -> bool {
        self.fired.lock().unwrap().push(message);
        true
    }
    fn route(&self, old: Option<u32>, message: MsiMessage) -> Option<u32> {
        let mut routes = self.routes.lock().unwrap();
        routes.push((old, message));
        Some(old.unwrap_or(100 + routes.len() as u32))
    }
    fn fire_route(&self, id: u32) -> bool {
        self.route_fires.lock().unwrap().push(id);
        true
    }
    fn release(&self, ids: &[u32]) {
        self.released.lock().unwrap().extend_from_slice(ids);
    }
    fn plain(&self) {}
}

fn message(n: u32) -> MsiMessage {
    MsiMessage {
        address: 0xFEE0_0000,
        data: 0x40 + n,
    }
}

fn setup(table: TableMode, flow: Flow) -> (PassthroughBar, Arc<Recorder>, GuestMemoryMmap) {
    let (base, len) = table_region(BAR);
    let mut ranges = vec![(GuestAddress(0), 0x1_0000)];
    if table == TableMode::Memory {
        ranges.push((base, len));
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
    let sink = Arc::new(Recorder::default());
    let config = BarConfig {
        requester_id: 0x0100,
        msix_entries: 8,
        ims_slots: 4,
        table,
        flow,
    };
    let bar = PassthroughBar::new(config, BAR, mem.clone(), sink.clone()).unwrap();
    (bar, sink, mem)
}

fn write(bar: &PassthroughBar, offset: u64, value: u32) {
    bar.mmio_write(MmioAddress(BAR), offset, &value.to_le_bytes());
}

fn read(bar: &PassthroughBar, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    bar.mmio_read(MmioAddress(BAR), offset, &mut data);
    u32::from_le_bytes(data)
}

/// Programs MSI-X entry `i` through the bus, as the guest does on a trapped table: masked
/// first, message, then the control word `ctrl`.
fn program_trapped(bar: &PassthroughBar, i: u64, m: MsiMessage, ctrl: u32) {
    let at = MSIX_TABLE + i * 16;
    write(bar, at + 12, CTRL_MASK);
    write(bar, at, m.address as u32);
    write(bar, at + 4, (m.address >> 32) as u32);
    write(bar, at + 8, m.data);
    write(bar, at + 12, ctrl);
}

/// The same in memory (an untrapped table or IMS slots): plain stores the device never sees.
fn program_memory(mem: &GuestMemoryMmap, at: u64, m: MsiMessage, ctrl: u32) {
    for (o, w) in [
        (0, m.address as u32),
        (4, (m.address >> 32) as u32),
        (8, m.data),
        (12, ctrl),
    ] {
        mem.write_obj(w, GuestAddress(at + o)).unwrap();
    }
}

#[test]
fn a_masked_trapped_entry_holds_one_pending_interrupt_and_sends_it_once_at_unmask() {
    let (bar, sink, _) = setup(TableMode::Trapped, Flow::Pvirq);
    program_trapped(&bar, 3, message(3), CTRL_MASK);
    for _ in 0..3 {
        write(&bar, DOORBELL, 3);
    }
    assert!(
        sink.fired.lock().unwrap().is_empty(),
        "masked: nothing sent"
    );
    assert_eq!(read(&bar, MSIX_PBA), 1 << 3, "PBA bit 3 set");
    // Unmask: exactly one interrupt, the pending bit clears.
    write(&bar, MSIX_TABLE + 3 * 16 + 12, 0);
    assert_eq!(*sink.fired.lock().unwrap(), vec![message(3)]);
    assert_eq!(read(&bar, MSIX_PBA), 0);
    // Unmasking again (already unmasked) sends nothing more; a new fire sends one.
    write(&bar, MSIX_TABLE + 3 * 16 + 12, 0);
    assert_eq!(sink.fired.lock().unwrap().len(), 1);
    write(&bar, DOORBELL, 3);
    assert_eq!(sink.fired.lock().unwrap().len(), 2);
    let c = bar.counters();
    assert_eq!(
        (c.rung, c.held_pending, c.sent_pending, c.delivered),
        (4, 3, 1, 2)
    );
}

#[test]
fn untrapped_and_ims_slots_send_their_pending_interrupt_once_when_the_device_rereads_them() {
    let (bar, sink, mem) = setup(TableMode::Memory, Flow::Pvirq);
    let entry = BAR + MSIX_TABLE + 16;
    program_memory(&mem, entry, message(1), CTRL_MASK);
    write(&bar, IMS_BASE_LO, IMS_BASE as u32);
    write(&bar, IMS_BASE_HI, 0);
    program_memory(&mem, IMS_BASE + 2 * 16, message(9), CTRL_MASK);
    write(&bar, DOORBELL, 1);
    write(&bar, DOORBELL, 1);
    write(&bar, DOORBELL, DOORBELL_IMS | 2);
    assert!(bar.has_pending());
    bar.poll_pending();
    assert!(
        sink.fired.lock().unwrap().is_empty(),
        "still masked: still pending"
    );
    // The guest unmasks with plain stores; the next re-read sends each exactly once.
    mem.write_obj(0u32, GuestAddress(entry + 12)).unwrap();
    mem.write_obj(0u32, GuestAddress(IMS_BASE + 2 * 16 + 12))
        .unwrap();
    bar.poll_pending();
    bar.poll_pending();
    assert!(!bar.has_pending());
    let mut fired = sink.fired.lock().unwrap().clone();
    fired.sort_by_key(|m| m.data);
    assert_eq!(fired, vec![message(1), message(9)]);
}

#[test]
fn the_trapped_flow_routes_on_unmask_fires_the_route_and_releases_on_disable() {
    let (bar, sink, _) = setup(TableMode::Trapped, Flow::Trapped);
    program_trapped(&bar, 0, message(0), 0);
    program_trapped(&bar, 1, message(1), 0);
    // One route + commit per unmask, for the guest's own message.
    assert_eq!(
        *sink.routes.lock().unwrap(),
        vec![(None, message(0)), (None, message(1))]
    );
    assert_eq!(bar.counters().commits, 2);
    write(&bar, DOORBELL, 1);
    assert_eq!(*sink.route_fires.lock().unwrap(), vec![102]);
    // Re-programming an entry updates its route (QEMU commits again).
    program_trapped(&bar, 1, message(7), 0);
    assert_eq!(
        sink.routes.lock().unwrap().last(),
        Some(&(Some(102), message(7)))
    );
    write(&bar, MSIX_DISABLE, 1);
    let mut released = sink.released.lock().unwrap().clone();
    released.sort_unstable();
    assert_eq!(released, vec![101, 102]);
    // Disabled: masked, no route; a fire is held pending, not sent.
    write(&bar, DOORBELL, 0);
    assert_eq!(sink.route_fires.lock().unwrap().len(), 1);
    assert_eq!(read(&bar, MSIX_PBA), 1);
    assert!(
        sink.fired.lock().unwrap().is_empty(),
        "the trapped flow never uses pvirq"
    );
}

#[test]
fn registers_report_the_shape_and_out_of_range_slots_are_blocked() {
    let (bar, sink, _) = setup(TableMode::Trapped, Flow::Pvirq);
    use pvirq_guest_image_abi::device::{IMS_SLOTS, MSIX_ENTRIES, TABLE_TRAPPED};
    assert_eq!((read(&bar, MSIX_ENTRIES), read(&bar, IMS_SLOTS)), (8, 4));
    assert_eq!(read(&bar, TABLE_TRAPPED), 1);
    write(&bar, DOORBELL, 8);
    write(&bar, DOORBELL, DOORBELL_IMS); // no IMS base yet
    assert_eq!(bar.counters().blocked, 2);
    assert!(sink.fired.lock().unwrap().is_empty());
    assert!(!bar.has_pending());
}
