//! A hostile device that rewrites its reply after returning it (spec: the driver trusts no
//! byte the device can still write). The driver copies a reply out of shared memory once
//! and checks and returns only that copy, so what it returns is what it validated.

use super::driver::{REPLY, driver};
use super::fake::{FakeDevice, memory};
use crate::Error;
use pvirq_proto::{
    Alloc, IndexSpec, Kind, Operation, Outcome, RESPONSE_HEADER_LEN, RemappableMsi, Target,
};
use std::sync::atomic::{AtomicBool, Ordering};
use vm_memory::{Bytes, GuestAddress};

/// The index the tests ask for, and the one the hostile device swaps in.
const ASKED: u32 = 5;
const SWAPPED: u8 = 6;

fn alloc_at(targets: &[Target]) -> Alloc<'_> {
    Alloc {
        kind: Kind::MsiX,
        index: IndexSpec::At(ASKED),
        min: 1,
        max: 1,
        pasid: None,
        targeting: pvirq_proto::Targeting::PerVector,
        targets,
    }
}

/// Where the first grant's index sits in the last reply the fake device wrote.
fn grant_index_at(dev: &FakeDevice) -> GuestAddress {
    let reply = dev.with(|s| s.last_reply_at).expect("a reply was written");
    GuestAddress(reply.0 + RESPONSE_HEADER_LEN as u64)
}

#[test]
fn a_reply_rewritten_after_it_was_taken_does_not_change_the_response() {
    let dev = FakeDevice::new(memory());
    dev.with(|s| s.auto = false);
    let mut d = driver(&dev);
    let targets = [Target::new(1, 0x40)];
    let t = d.submit(0, Operation::Alloc(alloc_at(&targets))).unwrap();
    dev.process();
    d.poll().unwrap();
    let mut reply = [0; REPLY];
    let response = d.take(t, &mut reply).unwrap().unwrap();
    // The device rewrites the grant it returned, now that the driver has checked it.
    let at = grant_index_at(&dev);
    dev.with(|s| s.mem.write_obj(u32::from(SWAPPED), at).unwrap());
    let Outcome::Allocated { grants, .. } = response.outcome else {
        panic!("{response}");
    };
    assert_eq!(grants.len(), 1);
    let grant = grants.get(0).unwrap();
    assert_eq!(grant.index(), ASKED, "the grant the driver validated");
    let msi = RemappableMsi::decode(grant.message()).unwrap();
    assert_eq!(u32::from(msi.handle), ASKED);
    // The rewrite did land in shared memory: only the driver's copy is immune.
    dev.with(|s| assert_eq!(s.mem.read_obj::<u32>(at).unwrap(), u32::from(SWAPPED)));
}

/// A device that keeps flipping the grant's index in its reply between the index asked
/// for and another, while the driver copies and checks it. Whatever moment the driver's
/// single copy catches, it returns the index asked for or refuses the reply; a driver
/// that checks one read and returns another would let the swapped index through.
#[test]
fn a_device_racing_its_own_reply_never_gets_an_unchecked_grant_through() {
    const ROUNDS: usize = 20_000;
    let dev = FakeDevice::new(memory());
    dev.with(|s| s.available = u32::MAX);
    let mut d = driver(&dev);
    let targets = [Target::new(1, 0x40)];
    // Every call uses slot 0, so every reply lands at the same place.
    d.alloc_irq_at(0, Kind::MsiX, IndexSpec::At(ASKED), targets[0], None)
        .unwrap();
    let at = grant_index_at(&dev);
    let mem = dev.with(|s| s.mem.clone());
    let stop = AtomicBool::new(false);
    let (mut returned, mut refused) = (0, 0);
    let mut wrong = None;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // The index's low byte: 5 and 6 differ in no other byte, so no read tears.
            for value in [ASKED as u8, SWAPPED].into_iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                mem.write_obj(value, at).unwrap();
            }
        });
        // No assertion in here: a panic would leave the flipping thread running forever.
        for _ in 0..ROUNDS {
            match d.alloc_irq_at(0, Kind::MsiX, IndexSpec::At(ASKED), targets[0], None) {
                Ok(grant) if grant.index() == ASKED => returned += 1,
                Err(Error::GrantIndex { position: 0, index }) if index == u32::from(SWAPPED) => {
                    refused += 1
                }
                other => {
                    wrong = Some(other);
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(
        wrong, None,
        "after {returned} grants and {refused} refusals"
    );
    assert_eq!(returned + refused, ROUNDS);
    std::println!("{returned} grants returned, {refused} swapped replies refused");
}

/// The same race on the 24-byte records of `INFO`: the device flips a parked grant's
/// `PARKED` flag (record byte 17) while the driver copies the reply. The driver returns a
/// parked grant or refuses the reply; it never returns the unparked record it did not
/// check, whatever layout the caller's buffer has.
#[test]
fn a_device_racing_an_info_record_never_gets_an_unchecked_flag_through() {
    use crate::GrantField;
    use pvirq_proto::{Grant, GrantInfo};
    const ROUNDS: usize = 20_000;
    let dev = FakeDevice::full(memory());
    dev.with(|s| {
        s.track = false;
        s.available = u32::MAX;
    });
    let mut d = super::extensions::full_driver(&dev);
    let mut grants = [GrantInfo::from_grant(Grant::new(0, Default::default()))];
    d.alloc_parked(0, Kind::MsiX, IndexSpec::At(ASKED), 1, 1, None, &mut grants)
        .unwrap();
    let flags_at = GuestAddress(grant_index_at(&dev).0 + 17);
    let mem = dev.with(|s| s.mem.clone());
    let stop = AtomicBool::new(false);
    let (mut returned, mut refused) = (0, 0);
    let mut wrong = None;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for value in [1u8, 0].into_iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                mem.write_obj(value, flags_at).unwrap();
            }
        });
        for _ in 0..ROUNDS {
            match d.alloc_parked(0, Kind::MsiX, IndexSpec::At(ASKED), 1, 1, None, &mut grants) {
                Ok(a) if a.grants.len() == 1 && a.grants[0].parked() => returned += 1,
                Err(Error::GrantMismatch {
                    position: 0,
                    field: GrantField::Parked,
                }) => refused += 1,
                other => {
                    wrong = Some(other.map(|a| a.grants.to_vec()));
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(
        wrong, None,
        "after {returned} grants and {refused} refusals"
    );
    assert_eq!(returned + refused, ROUNDS);
    std::println!("{returned} parked grants returned, {refused} flipped replies refused");
}
