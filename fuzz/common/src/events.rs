//! Target `guest_events`: the guest library's event queue (spec §12) against a device that
//! writes fuzzer-chosen records (well-formed events with chosen fields and sequence
//! numbers, or raw bytes) under fuzzer-chosen used ids and lengths, moves its configuration,
//! and answers requests in between. The driver must never panic; every event it hands over
//! must keep its promises: sequence numbers one above the last (from 1), a device below
//! `num_devices`, a kind (and a posted mode) the driver negotiated; and applying it to a
//! table (`apply_event`) takes the steps in order.

use crate::driver::{
    Fake, FakeTransport, FuzzDriver, OpIn, ReplyIn, TrackedHal, call, config_bytes,
    extension_features, kind, options, with_memory,
};
use crate::memory::DirtyMemory;
use crate::wire::Blob;
use crate::wire_struct;
use pvirq_guest::{Applied, ProgramMessages, VectorId, apply_event};
use pvirq_proto::{
    EVENT_LEN, Event, EventBody, EventType, GrantMode, Kind, MsiMessage, Resource, feature,
};

wire_struct! {
    /// One thing the device does, or the driver.
    pub struct StepIn {
        /// 0: write an event; 1: `poll_events`; 2: `next_event`; 3: change the
        /// configuration; 4: `handle_interrupt`; 5: a driver call (modulo 6).
        pub action: u8,
        /// The event (action 0).
        pub event: EventIn,
        /// The call (action 5).
        pub op: OpIn,
    }
}

wire_struct! {
    /// An event record the device writes.
    pub struct EventIn {
        /// Bits 0–1: 0 raw bytes, 1 a well-formed event with `sequence`, 2 or 3 a
        /// well-formed event with the device's next sequence number. Bit 2: used length
        /// `used_len`; bit 3: used id `id`.
        pub mode: u8,
        /// Event type (modulo 6, plus 1).
        pub event_type: u8,
        /// Kind (REPROGRAM, REVOKE); with bit 7 a posted REPROGRAM.
        pub kind: u8,
        /// Device handle; 0xFF names the VM (a LIMITS).
        pub device: u8,
        /// Sequence number (mode 1).
        pub sequence: u32,
        /// Index, or the configuration's new `num_devices` (action 3).
        pub index: u32,
        /// Value, or the new `vm_quota` (action 3).
        pub value: u32,
        /// Used length (bit 2).
        pub used_len: u32,
        /// Used id (bit 3).
        pub id: u32,
        /// Raw record (mode 0).
        pub raw: Blob,
    }
}

wire_struct! {
    /// A whole `guest_events` input.
    pub struct EventsInput {
        /// Extension bits besides EVENTS and INFO, as `guest_driver`'s `extensions`.
        pub extensions: u16,
        /// Largest event queue the device offers.
        pub event_queue_max: u16,
        /// Answers to the requests of driver calls.
        pub replies: Vec<ReplyIn>,
        /// What happens, in order.
        pub steps: Vec<StepIn>,
    }
}

/// The record `event` describes, with the device's next sequence number `next`.
fn record(event: &EventIn, next: u32) -> Vec<u8> {
    let sequence = if event.mode & 3 == 1 {
        event.sequence
    } else {
        next
    };
    let device = u32::from(event.device);
    let kind = kind(event.kind);
    let message = MsiMessage {
        address: 0xFEE0_0000 | u64::from(event.value & 0xFFFF) << 4,
        data: event.value >> 16,
    };
    let body = match EventType::ALL[usize::from(event.event_type) % EventType::ALL.len()] {
        EventType::Reprogram => EventBody::Reprogram {
            device,
            kind,
            index: event.index,
            message,
            mode: if event.kind & 0x80 != 0 {
                GrantMode::Posted
            } else {
                GrantMode::Remapped
            },
        },
        EventType::Revoke => EventBody::Revoke {
            device,
            kind,
            index: event.index,
            reason: Resource::ALL[event.value as usize % Resource::ALL.len()],
        },
        EventType::Limits => EventBody::Limits {
            device: (event.device != 0xFF).then_some(device),
            limit: event.value,
        },
        EventType::Available => EventBody::Available {
            device,
            count: event.value,
        },
        EventType::DeviceAdded => EventBody::DeviceAdded { device },
        EventType::DeviceRemoved => EventBody::DeviceRemoved { device },
    };
    let mut bytes = vec![0u8; EVENT_LEN];
    match (Event { sequence, body }).encode(&mut bytes) {
        Ok(_) => bytes,
        Err(_) => event.raw.0.clone(),
    }
}

/// A table that checks the order of the steps `apply_event` takes on one vector.
#[derive(Default)]
struct Table {
    last: Option<(&'static str, VectorId)>,
}

impl Table {
    fn step(&mut self, step: &'static str, v: VectorId, after: &[&str]) {
        let previous = self.last.filter(|(_, p)| *p == v).map(|(s, _)| s);
        assert!(
            previous.is_some_and(|p| after.contains(&p)),
            "{step} after {previous:?}"
        );
        self.last = Some((step, v));
    }
}

impl ProgramMessages for Table {
    fn mask(&mut self, v: VectorId) -> bool {
        self.last = Some(("mask", v));
        v.index % 2 == 1
    }
    fn program(&mut self, v: VectorId, _message: MsiMessage) {
        self.step("program", v, &["mask"]);
    }
    fn unmask(&mut self, v: VectorId) {
        self.step("unmask", v, &["program"]);
    }
    fn replay(&mut self, v: VectorId) {
        self.step("replay", v, &["unmask"]);
    }
    fn forget(&mut self, v: VectorId, _reason: Resource) {
        self.step("forget", v, &["mask"]);
    }
}

/// What the harness knows of the events handed over so far.
struct Seen {
    last_sequence: u32,
    handed: usize,
    table: Table,
}

impl Seen {
    /// Checks one event the driver handed over, and applies it.
    fn event(&mut self, driver_features: u64, num_devices: u32, event: &Event) {
        assert_eq!(event.sequence, self.last_sequence.wrapping_add(1));
        self.last_sequence = event.sequence;
        self.handed += 1;
        if let Some(device) = event.body.device() {
            assert!(device < num_devices, "device {device} of {num_devices}");
        }
        let grant = match event.body {
            EventBody::Reprogram { kind, mode, .. } => Some((kind, mode)),
            EventBody::Revoke { kind, .. } => Some((kind, GrantMode::Remapped)),
            _ => None,
        };
        if let Some((kind, mode)) = grant {
            let bit = match kind {
                Kind::Msi => feature::MSI,
                Kind::MsiX => feature::MSIX,
                Kind::Ims => feature::IMS,
            };
            assert_ne!(driver_features & bit, 0);
            assert!(mode == GrantMode::Remapped || driver_features & feature::POSTED != 0);
        }
        let applied = apply_event(&mut self.table, event);
        let grant_event = matches!(
            event.body,
            EventBody::Reprogram { .. } | EventBody::Revoke { .. }
        );
        assert_eq!(applied != Applied::Other, grant_event);
    }
}

/// Runs one input; how many events the driver handed over.
pub fn run(input: &EventsInput) -> usize {
    with_memory(|mem, hal| run_in(mem, hal, input))
}

fn run_in(mem: DirtyMemory, hal: TrackedHal, input: &EventsInput) -> usize {
    let features =
        feature::V1 | feature::INFO | feature::EVENTS | extension_features(input.extensions);
    let mut fake = Fake::new(
        mem,
        features,
        config_bytes(64, 0),
        input.replies.iter().cloned().collect(),
    );
    fake.event_queue_max = input.event_queue_max;
    let transport = FakeTransport::new(fake);
    let device = transport.clone();
    let Ok(mut driver) = FuzzDriver::new(hal, transport, options(features, 0)) else {
        return 0;
    };
    let mut seen = Seen {
        last_sequence: 0,
        handed: 0,
        table: Table::default(),
    };
    let mut next = 1u32;
    for step in input.steps.iter().take(256) {
        match step.action % 6 {
            0 => {
                let e = &step.event;
                let bytes = if e.mode & 3 == 0 {
                    e.raw.0.clone()
                } else {
                    record(e, next)
                };
                let id = (e.mode & 8 != 0).then_some(e.id);
                let len = (e.mode & 4 != 0).then_some(e.used_len);
                if device.0.borrow_mut().push_event(&bytes, id, len) {
                    next = next.wrapping_add(1);
                }
            }
            1 => {
                let features = driver.features();
                let mut handed = Vec::new();
                let _ = driver.poll_events(|e| handed.push(e));
                let num_devices = driver.config().num_devices;
                for e in &handed {
                    seen.event(features, num_devices, e);
                }
            }
            2 => {
                if let Ok(Some(e)) = driver.next_event() {
                    let (features, num_devices) = (driver.features(), driver.config().num_devices);
                    seen.event(features, num_devices, &e);
                }
            }
            3 => device
                .0
                .borrow_mut()
                .change_config(step.event.index % 64, step.event.value),
            4 => {
                let _ = driver.handle_interrupt();
            }
            _ => {
                call(&mut driver, &step.op);
            }
        }
    }
    seen.handed
}

/// Representative inputs: the seeds of the corpus.
pub fn seeds() -> Vec<EventsInput> {
    let event = |event_type, device, index, value| EventIn {
        mode: 2,
        event_type,
        kind: 1,
        device,
        index,
        value,
        ..EventIn::default()
    };
    let push = |event| StepIn {
        action: 0,
        event,
        op: OpIn::default(),
    };
    let act = |action| StepIn {
        action,
        ..StepIn::default()
    };
    let grow = StepIn {
        action: 3,
        event: EventIn {
            index: 5,
            value: 48,
            ..EventIn::default()
        },
        op: OpIn::default(),
    };
    let mut steps = vec![
        push(event(0, 0, 3, 0x1234_0010)),
        push(event(1, 1, 2, 3)),
        push(event(2, 0xFF, 0, 48)),
        push(event(3, 0, 0, 4)),
        act(1),
        grow,
        push(event(4, 4, 0, 0)),
        act(4),
        act(2),
        push(event(5, 1, 0, 0)),
        act(2),
        act(2),
    ];
    let base = EventsInput {
        extensions: 0x1FF,
        event_queue_max: 4,
        replies: Vec::new(),
        steps: steps.clone(),
    };
    let mut hostile = base.clone();
    // One good event, then a record of each kind of lie.
    steps = vec![
        push(event(3, 0, 0, 1)),
        act(2),
        push(EventIn {
            mode: 1,
            sequence: 7,
            ..event(3, 0, 0, 1)
        }),
        act(1),
        push(EventIn {
            mode: 2 | 4,
            used_len: 31,
            ..event(3, 0, 0, 1)
        }),
        act(1),
        push(EventIn {
            mode: 2 | 8,
            id: 99,
            ..event(3, 0, 0, 1)
        }),
        act(1),
        push(EventIn {
            mode: 0,
            raw: Blob(vec![0; EVENT_LEN]),
            ..EventIn::default()
        }),
        act(2),
        push(event(0, 9, 0, 0)),
        act(1),
    ];
    hostile.steps = steps;
    let mut one_buffer = base.clone();
    one_buffer.event_queue_max = 1;
    vec![base, hostile, one_buffer]
}
