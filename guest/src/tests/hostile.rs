//! A device that lies in ways only the extensions' shapes, or spec §8's fuller list of
//! checks, can catch: every check of a reply is a typed device fault, the request's slot is
//! recovered, and the driver keeps working (the double fetch of the new layouts is in
//! `double_fetch.rs`).

use super::driver::{TestDriver, driver, driver_with, targets};
use super::extensions::{full_driver, options};
use super::fake::{FakeDevice, Fault, memory};
use crate::{Error, GrantField, QueryField};
use pvirq_proto::{
    Alloc, DeviceInfo, Field, Grant, GrantInfo, GrantMode, IndexRange, IndexSpec, Kind, KindSet,
    Opcode, Refusal, Resource, Targeting, feature,
};
use std::vec::Vec;

fn blank() -> GrantInfo {
    GrantInfo::from_grant(Grant::new(0, Default::default()))
}

fn still_works(d: &mut TestDriver<'_>) {
    assert_eq!(d.in_flight(), 0, "slot recovered");
    assert!(d.query(0).is_ok());
}

/// Runs `alloc` on a fresh extended driver with `fault` applied to its reply.
fn alloc_with(fault: Fault, alloc: Alloc<'_>, query_first: bool) -> Result<usize, Error> {
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    if query_first {
        d.query(0).unwrap();
    }
    dev.fault(fault);
    let mut grants = [blank(); 8];
    let result = d.alloc(0, alloc, &mut grants).map(|a| a.grants.len());
    still_works(&mut d);
    result
}

#[test]
fn duplicate_indices_are_refused_wherever_they_are() {
    let t = targets(4);
    let any = Alloc::any(Kind::MsiX, 4, &t);
    let err = alloc_with(
        Fault::EditGrants(|g| {
            let first = g[0];
            g[1] = first;
        }),
        any,
        false,
    );
    assert_eq!(
        err,
        Err(Error::DuplicateGrant {
            position: 1,
            index: 0
        })
    );
    // Out of order: found by the search, not by the increasing fast path.
    let err = alloc_with(
        Fault::EditGrants(|g| {
            let (a, b) = (g[0], g[2]);
            g[0] = b;
            g[2] = a;
            g[3] = a;
        }),
        any,
        false,
    );
    assert_eq!(
        err,
        Err(Error::DuplicateGrant {
            position: 3,
            index: 0
        })
    );
    // Reordered but distinct: fine (the device chooses the order of ANY grants).
    let ok = alloc_with(Fault::EditGrants(|g| g.reverse()), any, false);
    assert_eq!(ok, Ok(4));
}

fn reindex(g: &mut GrantInfo, index: u32) {
    *g = GrantInfo::new(index, g.message(), g.mode())
        .with_parked(g.parked())
        .with_pasid(g.pasid());
}

#[test]
fn indices_outside_the_table_or_the_run_are_refused() {
    let t = targets(4);
    let any = Alloc::any(Kind::MsiX, 4, &t);
    let past = Fault::EditGrants(|g| reindex(&mut g[2], 64));
    // Once QUERY said the table has 64 entries, index 64 is outside it.
    assert_eq!(
        alloc_with(past.clone(), any, true),
        Err(Error::GrantIndex {
            position: 2,
            index: 64
        })
    );
    // Without a QUERY the driver does not know the table, and cannot tell.
    assert_eq!(alloc_with(past, any, false), Ok(4));
    // ANY_CONTIGUOUS must come back as one run.
    let run = Alloc {
        index: IndexSpec::AnyContiguous,
        ..any
    };
    assert_eq!(
        alloc_with(Fault::EditGrants(|g| reindex(&mut g[3], 9)), run, false),
        Err(Error::GrantIndex {
            position: 3,
            index: 9
        })
    );
    assert_eq!(
        alloc_with(Fault::EditGrants(|g| g.swap(0, 3)), run, false),
        Ok(4),
        "a run in any order is still one run"
    );
    // An MSI block's indices are its message numbers.
    let msi = Alloc {
        kind: Kind::Msi,
        ..any
    };
    assert_eq!(
        alloc_with(Fault::EditGrants(|g| reindex(&mut g[1], 4)), msi, false),
        Err(Error::GrantIndex {
            position: 1,
            index: 4
        })
    );
    // And no larger than the block QUERY reported.
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    dev.fault(Fault::EditQuery(|q| q.msi_max = 2));
    d.query(0).unwrap();
    let mut grants = [blank(); 4];
    assert_eq!(
        d.alloc(0, msi, &mut grants).unwrap_err(),
        Error::GrantCount {
            count: 4,
            min: 4,
            max: 4
        }
    );
}

#[test]
fn records_must_be_parked_exactly_when_asked_and_carry_the_pasid_asked_for() {
    let t = targets(2);
    let active = Alloc::any(Kind::Ims, 2, &t);
    let parked = Alloc {
        targeting: Targeting::Parked,
        targets: &[],
        ..active
    };
    let flip = |g: &mut Vec<GrantInfo>| g[1] = g[1].with_parked(!g[1].parked());
    let mismatch = |position, field| Err(Error::GrantMismatch { position, field });
    assert_eq!(
        alloc_with(Fault::EditGrants(flip), active, false),
        mismatch(1, GrantField::Parked)
    );
    assert_eq!(
        alloc_with(Fault::EditGrants(flip), parked, false),
        mismatch(1, GrantField::Parked)
    );
    let with_pasid = Alloc {
        pasid: Some(0x42),
        ..active
    };
    assert_eq!(
        alloc_with(Fault::EditGrants(|_| {}), with_pasid, false),
        Ok(2)
    );
    let other = Fault::EditGrants(|g| g[0] = g[0].with_pasid(Some(0x43)));
    assert_eq!(
        alloc_with(other.clone(), with_pasid, false),
        mismatch(0, GrantField::Pasid)
    );
    assert_eq!(
        alloc_with(other, active, false),
        mismatch(0, GrantField::Pasid)
    );
    let none = Fault::EditGrants(|g| g[1] = g[1].with_pasid(None));
    assert_eq!(
        alloc_with(none, with_pasid, false),
        mismatch(1, GrantField::Pasid)
    );
}

#[test]
fn posted_and_parked_records_need_their_features() {
    let make_posted = |g: &mut Vec<GrantInfo>| {
        g[0] = GrantInfo::new(g[0].index(), g[0].message(), GrantMode::Posted)
    };
    let make_parked = |g: &mut Vec<GrantInfo>| g[0] = g[0].with_parked(true);
    for (missing, edit) in [
        (feature::POSTED, make_posted as fn(&mut Vec<GrantInfo>)),
        (feature::PARKED, make_parked),
    ] {
        let dev = FakeDevice::full(memory());
        let mut d = driver_with(&dev, options(feature::ALL & !missing)).unwrap();
        dev.fault(Fault::EditGrants(edit));
        let mut grants = [blank(); 1];
        let err = d
            .alloc_irq_vectors(0, Kind::MsiX, 1, &targets(1), &mut grants)
            .unwrap_err();
        assert_eq!(
            err,
            Error::Malformed(pvirq_proto::Error::NotNegotiated(missing))
        );
        assert!(err.is_device_fault());
    }
}

/// Answers one request of `op` on a fresh extended driver with `refusal`; returns the error.
fn refused(refusal: Refusal, op: fn(&mut TestDriver<'_>) -> Result<(), Error>) -> Error {
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    // Something to free and move.
    let mut grants = [blank(); 4];
    d.alloc_irq_vectors(0, Kind::MsiX, 4, &targets(4), &mut grants)
        .unwrap();
    dev.fault(Fault::Refuse(refusal));
    let err = op(&mut d).unwrap_err();
    still_works(&mut d);
    err
}

fn free_run(d: &mut TestDriver<'_>) -> Result<(), Error> {
    let run = IndexRange {
        kind: Kind::MsiX,
        first: 1,
        count: 2,
    };
    d.free(0, run).map(|_| ())
}

fn retarget_run(d: &mut TestDriver<'_>) -> Result<(), Error> {
    let run = IndexRange {
        kind: Kind::MsiX,
        first: 1,
        count: 2,
    };
    d.retarget(0, run, &targets(2)).map(|_| ())
}

fn alloc_at_8(d: &mut TestDriver<'_>) -> Result<(), Error> {
    let t = targets(2);
    let alloc = Alloc {
        index: IndexSpec::At(8),
        ..Alloc::any(Kind::MsiX, 1, &t)
    };
    let mut grants = [blank(); 2];
    d.alloc(0, alloc, &mut grants).map(|_| ())
}

fn alloc_any(d: &mut TestDriver<'_>) -> Result<(), Error> {
    let mut grants = [blank(); 2];
    d.alloc_irq_vectors(0, Kind::MsiX, 1, &targets(2), &mut grants)
        .map(|_| ())
}

fn alloc_parked(d: &mut TestDriver<'_>) -> Result<(), Error> {
    let mut grants = [blank(); 2];
    d.alloc_parked(0, Kind::MsiX, IndexSpec::Any, 1, 2, None, &mut grants)
        .map(|_| ())
}

fn query(d: &mut TestDriver<'_>) -> Result<(), Error> {
    d.query(0).map(|_| ())
}

#[test]
fn refusals_the_request_cannot_get_are_device_faults() {
    type Op = fn(&mut TestDriver<'_>) -> Result<(), Error>;
    let implausible: [(Refusal, Op, Opcode); 14] = [
        (
            Refusal::NoSpace {
                resource: Resource::Irte,
                available: 1,
            },
            free_run,
            Opcode::Free,
        ),
        (Refusal::IndexInUse { index: 1 }, free_run, Opcode::Free),
        (
            Refusal::IndexOutOfRange { index: 1 },
            retarget_run,
            Opcode::Retarget,
        ),
        (Refusal::NotGranted { index: 3 }, free_run, Opcode::Free),
        (Refusal::NotGranted { index: 8 }, alloc_at_8, Opcode::Alloc),
        (Refusal::IndexInUse { index: 10 }, alloc_at_8, Opcode::Alloc),
        (Refusal::IndexInUse { index: 0 }, alloc_any, Opcode::Alloc),
        (
            Refusal::IndexOutOfRange { index: 64 },
            alloc_any,
            Opcode::Alloc,
        ),
        (
            Refusal::InvalidTarget {
                field: Field::TargetVcpu,
                entry: 2,
            },
            alloc_any,
            Opcode::Alloc,
        ),
        (
            Refusal::InvalidTarget {
                field: Field::TargetVcpu,
                entry: 0,
            },
            alloc_parked,
            Opcode::Alloc,
        ),
        (
            Refusal::BadRequest {
                field: Field::Count,
                entry: 1,
            },
            alloc_any,
            Opcode::Alloc,
        ),
        (
            Refusal::Unsupported {
                field: Field::Count,
            },
            alloc_any,
            Opcode::Alloc,
        ),
        (
            Refusal::BatchTooLarge { max_batch: 2 },
            alloc_any,
            Opcode::Alloc,
        ),
        (
            Refusal::ResponseTooSmall { needed: 48 },
            query,
            Opcode::Query,
        ),
    ];
    for (refusal, op, opcode) in implausible {
        let err = refused(refusal, op);
        assert_eq!(
            err,
            Error::ImplausibleRefusal { opcode, refusal },
            "{refusal}"
        );
        assert!(err.is_device_fault());
    }
    let plausible: [(Refusal, Op); 8] = [
        (
            Refusal::NoSpace {
                resource: Resource::SlotsFragmented,
                available: 0,
            },
            alloc_any,
        ),
        (Refusal::NotGranted { index: 2 }, free_run),
        (Refusal::IndexInUse { index: 9 }, alloc_at_8),
        (Refusal::IndexOutOfRange { index: 8 }, alloc_at_8),
        (
            Refusal::InvalidTarget {
                field: Field::TargetVcpu,
                entry: 1,
            },
            retarget_run,
        ),
        (Refusal::BatchTooLarge { max_batch: 1 }, alloc_any),
        (Refusal::ResponseTooSmall { needed: 89 }, query),
        (Refusal::NoDevice, query),
    ];
    for (refusal, op) in plausible {
        let err = refused(refusal, op);
        assert_eq!(err.refusal(), Some(refusal), "{refusal}");
    }
    // A second MSI block is in use at index 0, whoever chose the index.
    let err = refused(Refusal::IndexInUse { index: 0 }, |d| {
        let mut grants = [blank(); 1];
        d.alloc_irq_vectors(0, Kind::Msi, 1, &targets(1), &mut grants)
            .map(|_| ())
    });
    assert_eq!(err.refusal(), Some(Refusal::IndexInUse { index: 0 }));
}

#[test]
fn query_replies_that_contradict_themselves_or_the_negotiation_are_refused() {
    type Edit = fn(&mut DeviceInfo);
    let cases: [(Edit, QueryField); 7] = [
        (|q| q.kinds = q.kinds.with(Kind::Ims), QueryField::Kinds),
        (|q| q.msi_max = 4, QueryField::MsiMax),
        (|q| q.kinds = KindSet::EMPTY, QueryField::MsixTableSize),
        (|q| q.ims_slots = 1, QueryField::ImsSlots),
        (|q| q.available = 65, QueryField::Available),
        (
            |q| q.ext.as_mut().unwrap().msix_free_run = 65,
            QueryField::MsixFreeRun,
        ),
        (
            |q| q.ext.as_mut().unwrap().ims_free_run = 1,
            QueryField::ImsFreeRun,
        ),
    ];
    for (edit, field) in cases {
        let dev = FakeDevice::full(memory());
        // MSI-X and INFO only: MSI and IMS sizes must be 0.
        let wanted = feature::MSIX | feature::VERSION_1 | feature::INFO;
        let mut d = driver_with(&dev, options(wanted)).unwrap();
        dev.fault(Fault::EditQuery(edit));
        let err = d.query(0).unwrap_err();
        assert_eq!(err, Error::QueryMismatch(field));
        assert!(err.is_device_fault());
        still_works(&mut d);
    }
    // A version-1 driver checks the same, on version 1's body.
    let dev = FakeDevice::full(memory());
    let mut d = driver(&dev);
    dev.fault(Fault::EditQuery(|q| q.available = 65));
    assert_eq!(
        d.query(0).unwrap_err(),
        Error::QueryMismatch(QueryField::Available)
    );
}

#[test]
fn list_counts_are_checked_like_run_counts() {
    let dev = FakeDevice::full(memory());
    let mut d = full_driver(&dev);
    let mut grants = [blank(); 3];
    d.alloc_irq_vectors(0, Kind::MsiX, 3, &targets(3), &mut grants)
        .unwrap();
    dev.fault(Fault::Count(3));
    let list = [0, 2].map(pvirq_proto::Le32::new);
    let indices = crate::index_list(Kind::MsiX, &list).unwrap();
    assert_eq!(
        d.free_indices(0, indices).unwrap_err(),
        Error::CountMismatch {
            expected: 2,
            got: 3
        }
    );
    still_works(&mut d);
}
