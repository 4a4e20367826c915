//! The driver against a lying or broken device: every fault is a typed error, the slot
//! concerned is recovered, and the driver keeps working.

use super::driver::{REPLY, TestDriver, driver, targets};
use super::fake::{FakeDevice, Fault, memory};
use crate::{EchoField, Error};
use proptest::prelude::*;
use pvirq_proto::{Alloc, Grant, IndexRange, IndexSpec, Kind, Operation, Targeting};

/// Runs one QUERY with `fault` applied to its reply; then checks the driver still works.
fn query_with(fault: Fault) -> Error {
    let dev = FakeDevice::new(memory());
    let mut d = driver(&dev);
    dev.fault(fault);
    let err = d.query(0).unwrap_err();
    still_works(&mut d);
    err
}

fn still_works(d: &mut TestDriver<'_>) {
    assert_eq!(d.in_flight(), 0, "slot recovered");
    for device in 0..8 {
        assert!(d.query(device % 2).is_ok());
    }
}

#[test]
fn a_used_length_beyond_the_buffer_is_refused() {
    assert_eq!(
        query_with(Fault::UsedLen(49)),
        Error::UsedLenTooLarge {
            len: 49,
            capacity: 48
        }
    );
    assert_eq!(
        query_with(Fault::UsedLen(u32::MAX)),
        Error::UsedLenTooLarge {
            len: u32::MAX,
            capacity: 48
        }
    );
}

#[test]
fn a_short_used_length_is_malformed() {
    let err = query_with(Fault::UsedLen(30));
    assert!(matches!(err, Error::Malformed(_)), "{err}");
    assert!(err.is_device_fault());
}

#[test]
fn used_length_zero_means_no_reply() {
    let err = query_with(Fault::NoReply);
    assert_eq!(err, Error::NoReply);
    assert!(!err.is_device_fault());
}

#[test]
fn mismatched_echoes_are_refused() {
    let tag = query_with(Fault::Tag(0xdead));
    assert!(matches!(
        tag,
        Error::EchoMismatch {
            field: EchoField::Tag,
            got: 0xdead,
            ..
        }
    ));
    assert_eq!(
        query_with(Fault::Device(9)),
        Error::EchoMismatch {
            field: EchoField::Device,
            expected: 0,
            got: 9
        }
    );
    // A well-formed FREE reply to a RESET.
    let dev = FakeDevice::new(memory());
    let mut d = driver(&dev);
    dev.fault(Fault::Opcode(3));
    assert_eq!(
        d.reset_device(0).unwrap_err(),
        Error::EchoMismatch {
            field: EchoField::Opcode,
            expected: 5,
            got: 3
        }
    );
    still_works(&mut d);
}

#[test]
fn garbage_is_malformed() {
    let err = query_with(Fault::Garbage(std::vec![0xff; 48]));
    assert!(matches!(err, Error::Malformed(_)), "{err}");
    let err = query_with(Fault::Garbage(std::vec![1; 3]));
    assert!(matches!(err, Error::Malformed(_)), "{err}");
}

#[test]
fn unknown_ids_are_refused_without_touching_other_requests() {
    for id in [1, 3, 6, 8, 255, 0xffff_ffff] {
        let dev = FakeDevice::new(memory());
        dev.with(|s| s.auto = false);
        let mut d = driver(&dev);
        let mut reply = [0; REPLY];
        let t = d.submit(0, Operation::Query).unwrap();
        dev.fault(Fault::HeadId(id));
        dev.process();
        assert_eq!(d.poll().unwrap_err(), Error::UnknownId(id));
        assert!(!d.is_complete(t).unwrap(), "the request is still in flight");
        assert_eq!(d.in_flight(), 1);
        // The bad element was consumed: the next ones are processed normally.
        let u = d.submit(1, Operation::Query).unwrap();
        dev.process();
        assert_eq!(d.poll().unwrap(), 1);
        assert_eq!(d.take(u, &mut reply).unwrap().unwrap().device, 1);
    }
}

#[test]
fn a_completion_under_another_in_flight_head_is_caught() {
    let dev = FakeDevice::new(memory());
    dev.with(|s| {
        s.auto = false;
        s.budget = 1;
    });
    let mut d = driver(&dev);
    let mut reply = [0; REPLY];
    let a = d.submit(0, Operation::Query).unwrap();
    let b = d.submit(1, Operation::Query).unwrap();
    // `a` is answered, but returned under `b`'s head: `b`'s buffer holds no reply.
    dev.fault(Fault::HeadId(u32::from(b.slot()) * 2));
    dev.process();
    assert_eq!(d.poll().unwrap(), 1);
    assert!(matches!(
        d.take(b, &mut reply).unwrap_err(),
        Error::Malformed(_)
    ));
    // `b`'s real reply then arrives for a slot no longer in flight.
    dev.process();
    assert_eq!(
        d.poll().unwrap_err(),
        Error::UnknownId(u32::from(b.slot()) * 2)
    );
    assert!(
        !d.is_complete(a).unwrap(),
        "a's reply never came under its head"
    );
    assert_eq!(d.in_flight(), 1);
}

#[test]
fn a_reply_echoing_another_request_is_caught() {
    let dev = FakeDevice::new(memory());
    dev.with(|s| s.auto = false);
    let mut d = driver(&dev);
    let mut reply = [0; REPLY];
    let a = d.submit(0, Operation::Query).unwrap();
    dev.fault(Fault::Tag(a.tag() + 1));
    dev.process();
    d.poll().unwrap();
    assert_eq!(
        d.take(a, &mut reply).unwrap_err(),
        Error::EchoMismatch {
            field: EchoField::Tag,
            expected: a.tag(),
            got: a.tag() + 1
        }
    );
}

#[test]
fn a_used_index_running_ahead_is_refused() {
    let dev = FakeDevice::new(memory());
    dev.with(|s| s.auto = false);
    let mut d = driver(&dev);
    let _t = d.submit(0, Operation::Query).unwrap();
    dev.fault(Fault::UsedIdxJump(5));
    dev.process();
    assert_eq!(
        d.poll().unwrap_err(),
        Error::UsedIndexAhead {
            ahead: 6,
            outstanding: 1
        }
    );
}

fn alloc_with(fault: Fault, index: IndexSpec, kind: Kind) -> Error {
    let dev = FakeDevice::new(memory());
    let mut d = driver(&dev);
    let t = targets(4);
    let mut grants = [Grant::new(0, Default::default()); 4];
    let alloc = Alloc {
        kind,
        index,
        min: 2,
        max: 4,
        pasid: None,
        targets: &t,
        targeting: Targeting::PerVector,
    };
    dev.fault(fault);
    let err = d.alloc(0, alloc, &mut grants).unwrap_err();
    still_works(&mut d);
    err
}

#[test]
fn grants_outside_the_request_are_refused() {
    let err = alloc_with(Fault::GrantCount(1), IndexSpec::Any, Kind::MsiX);
    assert_eq!(
        err,
        Error::GrantCount {
            count: 1,
            min: 2,
            max: 4
        }
    );
    // Five grants do not fit the buffer offered for four.
    let err = alloc_with(Fault::GrantCount(5), IndexSpec::Any, Kind::MsiX);
    assert_eq!(
        err,
        Error::UsedLenTooLarge {
            len: 24 + 5 * 16,
            capacity: 24 + 4 * 16
        }
    );
    let err = alloc_with(Fault::GrantCount(3), IndexSpec::Any, Kind::Msi);
    assert!(matches!(err, Error::GrantCount { count: 3, .. }));
    let err = alloc_with(Fault::ShiftIndex, IndexSpec::At(8), Kind::MsiX);
    assert_eq!(
        err,
        Error::GrantIndex {
            position: 0,
            index: 9
        }
    );
}

#[test]
fn a_free_reply_with_another_count_is_refused() {
    let dev = FakeDevice::new(memory());
    let mut d = driver(&dev);
    dev.fault(Fault::Count(3));
    let range = IndexRange {
        kind: Kind::MsiX,
        first: 0,
        count: 2,
    };
    assert_eq!(
        d.free(0, range).unwrap_err(),
        Error::CountMismatch {
            expected: 2,
            got: 3
        }
    );
    still_works(&mut d);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever bytes and used length a device returns, the driver answers with a value or
    /// a typed error, never panics, and recovers the slot.
    #[test]
    fn arbitrary_replies_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..120),
        len in prop_oneof![Just(None), (0u32..200).prop_map(Some)],
        alloc in any::<bool>(),
    ) {
        let dev = FakeDevice::new(memory());
        let mut d = driver(&dev);
        let reported = len.unwrap_or(bytes.len() as u32);
        dev.fault(Fault::Garbage(bytes));
        if let Some(len) = len {
            // Garbage sets the used length to the byte count; a second fault cannot stack,
            // so emulate by overriding via a follow-up: write garbage, then report `len`.
            dev.with(|s| s.faults.clear());
            dev.fault(Fault::UsedLen(len));
        }
        let t = targets(4);
        let mut grants = [Grant::new(0, Default::default()); 4];
        let result = if alloc {
            let a = Alloc::any(Kind::MsiX, 1, &t);
            d.alloc(0, a, &mut grants).map(|_| ())
        } else {
            d.query(0).map(|_| ())
        };
        if let Err(e) = result {
            // Refusals are possible too: garbage can spell a valid refusal.
            prop_assert!(e.is_device_fault() || e.refusal().is_some() || e == Error::NoReply, "{e}");
            if reported > if alloc { 88 } else { 48 } {
                prop_assert!(matches!(e, Error::UsedLenTooLarge { .. }), "{e}");
            }
        }
        prop_assert_eq!(d.in_flight(), 0);
        prop_assert!(d.query(1).is_ok());
    }
}
