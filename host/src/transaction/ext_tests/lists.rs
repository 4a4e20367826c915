//! FREE and RETARGET by index list (spec §4.6, §4.7, §5.4): indices in list order,
//! NOT_GRANTED at the first that is not granted, an MSI block freed whole, all or
//! nothing.

use super::*;
use crate::model::HostOccupancy;
use crate::vm::VmOccupancy;
use pvirq_proto::Field;

fn state(host: &ModelHost, vm: &Vm) -> (HostOccupancy, VmOccupancy, Vec<(u32, Option<u32>)>) {
    (host.occupancy(), vm.occupancy(), dests(vm, 0, Kind::MsiX))
}

#[test]
fn free_by_list_releases_exactly_the_listed_grants_or_nothing() {
    let host = host(64, 64, false);
    let vm = vm(
        &host,
        config(16, vec![dev(0x100, 0, 16, 0)]),
        info(feature::INDEX_LIST),
    );
    let t = targets(8);
    let g = grants(
        &vm,
        0,
        alloc(Kind::MsiX, IndexSpec::Any, (8, 8), Targeting::PerVector, &t),
    )
    .unwrap();
    // Not granted: 9 (inside the table) and 100 (outside); the first in list order is named,
    // and nothing is freed, not even the granted entries before it.
    let before = state(&host, &vm);
    for (list, first) in [(vec![1, 9, 100], 9), (vec![0, 1, 100], 100), (vec![8], 8)] {
        let list = le(&list);
        assert_eq!(
            counted(&vm, 0, listed(Kind::MsiX, &list, None)),
            Err(Refusal::NotGranted { index: first })
        );
        assert_eq!(state(&host, &vm), before);
    }
    let list = le(&[1, 4, 6]);
    assert_eq!(counted(&vm, 0, listed(Kind::MsiX, &list, None)), Ok(3));
    let left: Vec<u32> = dests(&vm, 0, Kind::MsiX).iter().map(|(i, _)| *i).collect();
    assert_eq!(left, [0, 2, 3, 5, 7]);
    assert_eq!(host.occupancy().vectors_used, 5);
    // The freed messages are blocked at the remapping unit.
    assert!(host.fire(0x100, g[4].message()).is_err());
    assert!(host.fire(0x100, g[5].message()).is_ok());
    vm.check_invariants().unwrap();
    host.check_invariants().unwrap();
}

#[test]
fn an_msi_block_is_freed_whole_by_list() {
    let host = host(64, 64, false);
    let vm = vm(
        &host,
        config(16, vec![dev(0x100, 8, 0, 0)]),
        info(feature::INDEX_LIST),
    );
    let t = targets(4);
    grants(
        &vm,
        0,
        alloc(Kind::Msi, IndexSpec::Any, (4, 4), Targeting::PerVector, &t),
    )
    .unwrap();
    for (list, index) in [
        (vec![0, 1, 3], 3),
        (vec![0, 1], 0),
        (vec![0, 1, 2, 3, 4], 4),
    ] {
        let list = le(&list);
        assert_eq!(
            counted(&vm, 0, listed(Kind::Msi, &list, None)),
            Err(Refusal::NotGranted { index })
        );
        assert_eq!(vm.occupancy().held, 4);
    }
    // Retargeting part of a block by list is allowed (each vector has its own entry).
    let to = [Target::new(3, 0x77)];
    let list = le(&[2]);
    assert_eq!(
        counted(
            &vm,
            0,
            listed(Kind::Msi, &list, Some(RetargetTo::Targets(&to)))
        ),
        Ok(1)
    );
    let list = le(&[0, 1, 2, 3]);
    assert_eq!(counted(&vm, 0, listed(Kind::Msi, &list, None)), Ok(4));
    assert_eq!(vm.occupancy().held, 0);
    host.check_invariants().unwrap();
}

#[test]
fn retarget_by_list_moves_each_index_to_its_target_or_nothing() {
    let host = host(64, 64, false);
    let vm = vm(
        &host,
        config(16, vec![dev(0x100, 0, 16, 0)]),
        info(feature::INDEX_LIST),
    );
    let t = targets(6);
    let g = grants(
        &vm,
        0,
        alloc(Kind::MsiX, IndexSpec::Any, (6, 6), Targeting::PerVector, &t),
    )
    .unwrap();
    let before = state(&host, &vm);
    // Step 8 before step 9: a bad CPU at position 1 is named before the ungranted index.
    let bad = [Target::new(3, 0x70), Target::new(9, 0x71)];
    let list = le(&[1, 7]);
    assert_eq!(
        counted(
            &vm,
            0,
            listed(Kind::MsiX, &list, Some(RetargetTo::Targets(&bad)))
        ),
        Err(Refusal::InvalidTarget {
            field: Field::TargetVcpu,
            entry: 1
        })
    );
    let to = [Target::new(3, 0x70), Target::new(2, 0x71)];
    assert_eq!(
        counted(
            &vm,
            0,
            listed(Kind::MsiX, &list, Some(RetargetTo::Targets(&to)))
        ),
        Err(Refusal::NotGranted { index: 7 })
    );
    assert_eq!(state(&host, &vm), before, "nothing moved");
    let list = le(&[1, 4]);
    assert_eq!(
        counted(
            &vm,
            0,
            listed(Kind::MsiX, &list, Some(RetargetTo::Targets(&to)))
        ),
        Ok(2)
    );
    assert_eq!(
        host.fire(0x100, g[1].message()).unwrap().to(),
        Some((3, 0x70))
    );
    assert_eq!(
        host.fire(0x100, g[4].message()).unwrap().to(),
        Some((2, 0x71))
    );
    assert_eq!(
        host.fire(0x100, g[2].message()).unwrap().to(),
        Some((2, 0x42))
    );
    vm.check_invariants().unwrap();
}

#[test]
fn an_unordered_list_is_a_bad_request_naming_its_entry() {
    let host = host(64, 64, false);
    let vm = vm(
        &host,
        config(16, vec![dev(0x100, 0, 16, 0)]),
        info(feature::INDEX_LIST),
    );
    // Encoded by hand: the encoder only builds valid (increasing) lists.
    let mut bytes = [0u8; 44];
    bytes[0] = 3; // FREE
    bytes[16] = Kind::MsiX as u8;
    bytes[17] = 1; // LIST
    bytes[24] = 3; // count
    for (i, index) in [2u32, 5, 5].iter().enumerate() {
        bytes[32 + 4 * i..36 + 4 * i].copy_from_slice(&index.to_le_bytes());
    }
    let mut sink = crate::transaction::BufferSink::new(24);
    vm.handle(&bytes, &mut sink);
    read(&vm, sink.bytes(), |o| {
        assert_eq!(
            o,
            Outcome::Refused(Refusal::BadRequest {
                field: Field::IndexList,
                entry: 2
            })
        )
    });
    // A driver without INDEX_LIST: the byte is version 1's reserved field.
    vm.set_features(feature::V1);
    vm.handle(&bytes, &mut sink);
    read(&vm, sink.bytes(), |o| {
        assert_eq!(
            o,
            Outcome::Refused(Refusal::BadRequest {
                field: Field::BodyReserved,
                entry: 0
            })
        )
    });
}
