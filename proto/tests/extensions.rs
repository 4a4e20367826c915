//! The extensions byte by byte (spec §4.4–§4.7, §5.3): bytes built here by hand from the
//! spec's tables, not by the encoder, with their canonical text or their refusal.

use pvirq_proto::{Error, Negotiated, Request, Response, feature};

const ALL: Negotiated = Negotiated::new(64, feature::ALL);

fn header(opcode: u8) -> Vec<u8> {
    let mut b = vec![opcode, 0, 0, 0];
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    b
}

fn alloc(flags: u8, num_targets: u16, first: u32, min: u16, max: u16) -> Vec<u8> {
    let mut b = header(2);
    b.extend_from_slice(&[2, flags]);
    b.extend_from_slice(&num_targets.to_le_bytes());
    b.extend_from_slice(&first.to_le_bytes());
    b.extend_from_slice(&min.to_le_bytes());
    b.extend_from_slice(&max.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b
}

fn range(opcode: u8, flags: u8, first: u32, count: u16) -> Vec<u8> {
    let mut b = header(opcode);
    b.extend_from_slice(&[2, flags, 0, 0]);
    b.extend_from_slice(&first.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(&[0; 6]);
    b
}

fn with_list(mut b: Vec<u8>, list: &[u32]) -> Vec<u8> {
    for index in list {
        b.extend_from_slice(&index.to_le_bytes());
    }
    b
}

fn with_targets(mut b: Vec<u8>, n: u32) -> Vec<u8> {
    for i in 0..n {
        b.extend_from_slice(&i.to_le_bytes());
        b.extend_from_slice(&[0x30 + (i % 0xc0) as u8, 0, 0, 0]);
    }
    b
}

/// The canonical text of a valid request, checking that it re-encodes to `bytes`.
fn text(bytes: &[u8], negotiated: Negotiated) -> String {
    let request = Request::decode(bytes, negotiated).unwrap_or_else(|e| panic!("{e}"));
    let mut out = vec![0; bytes.len()];
    assert_eq!(request.encode(&mut out), Ok(bytes.len()));
    assert_eq!(out, bytes);
    request.to_string()
}

fn refusal(bytes: &[u8], negotiated: Negotiated) -> String {
    Request::decode(bytes, negotiated)
        .expect_err("malformed")
        .refusal()
        .to_string()
}

#[test]
fn extended_requests_print_their_canonical_text() {
    let contiguous = with_targets(alloc(0x11, 0, 0, 1, 2), 2);
    assert_eq!(
        text(&contiguous, ALL),
        "alloc device=1 tag=0x2 kind=msix index=any-contiguous count=1..2 pasid=none \
         targets=[0:0x30,1:0x31]"
    );
    let spread = with_targets(alloc(0x09, 3, 0, 4, 8), 3);
    assert_eq!(
        text(&spread, ALL),
        "alloc device=1 tag=0x2 kind=msix index=any count=4..8 pasid=none \
         targets=spread[0:0x30,1:0x31,2:0x32]"
    );
    let parked = alloc(0x04, 0, 16, 1, 8);
    assert_eq!(
        text(&parked, ALL),
        "alloc device=1 tag=0x2 kind=msix index=16 count=1..8 pasid=none targets=parked"
    );
    let free = with_list(range(3, 1, 0, 3), &[1, 5, 9]);
    assert_eq!(
        text(&free, ALL),
        "free device=1 tag=0x2 kind=msix index=[1,5,9]"
    );
    let retarget = with_targets(with_list(range(4, 1, 0, 2), &[1, 5]), 2);
    assert_eq!(
        text(&retarget, ALL),
        "retarget device=1 tag=0x2 kind=msix index=[1,5] targets=[0:0x30,1:0x31]"
    );
    let park = range(4, 2, 4, 2);
    assert_eq!(
        text(&park, ALL),
        "retarget device=1 tag=0x2 kind=msix index=4 count=2 targets=park"
    );
    let park_list = with_list(range(4, 3, 0, 2), &[0, u32::MAX]);
    assert_eq!(
        text(&park_list, ALL),
        "retarget device=1 tag=0x2 kind=msix index=[0,4294967295] targets=park"
    );
    // Each needs exactly its own bit (and INFO): not a bit more.
    let only = |bit| Negotiated::new(64, feature::V1 | feature::INFO | bit);
    text(&contiguous, only(feature::CONTIGUOUS));
    text(&spread, only(feature::SPREAD));
    text(&parked, only(feature::PARKED));
    text(&free, only(feature::INDEX_LIST));
    text(&park, only(feature::PARKED));
}

#[test]
fn alloc_flags_are_checked_before_num_targets_and_the_counts() {
    let flags = "bad-request field=flags entry=0";
    assert_eq!(
        refusal(&alloc(0x0d, 1, 0, 1, 1), ALL),
        flags,
        "PARKED with SPREAD"
    );
    assert_eq!(
        refusal(&alloc(0x10, 0, 0, 1, 1), ALL),
        flags,
        "ANY_CONTIGUOUS alone"
    );
    for bit in 5..8 {
        assert_eq!(refusal(&alloc(1 | 1 << bit, 0, 0, 1, 1), ALL), flags);
    }
    // Flags come first: a conflict with a bad num_targets and a bad count is still flags.
    assert_eq!(refusal(&alloc(0x0d, 0, 0, 0, 0), ALL), flags);
    let num = "bad-request field=num-targets entry=0";
    assert_eq!(
        refusal(&alloc(0x09, 0, 0, 1, 1), ALL),
        num,
        "SPREAD needs a target"
    );
    assert_eq!(
        refusal(&alloc(0x09, 65, 0, 1, 1), ALL),
        num,
        "above max_batch"
    );
    assert_eq!(
        refusal(&alloc(0x01, 1, 0, 1, 1), ALL),
        num,
        "num_targets without SPREAD"
    );
    assert_eq!(
        refusal(&alloc(0x09, 0, 0, 0, 0), ALL),
        num,
        "before the counts"
    );
    // Without SPREAD negotiated the field is version 1's `reserved`.
    let info = Negotiated::new(64, feature::V1 | feature::INFO | feature::PARKED);
    assert_eq!(
        refusal(&alloc(0x01, 1, 0, 1, 1), info),
        "bad-request field=body-reserved entry=0"
    );
    // A spread request's count is still bounded by max_batch.
    assert_eq!(
        refusal(&with_targets(alloc(0x09, 1, 0, 1, 65), 1), ALL),
        "batch-too-large max_batch=64"
    );
    // 4096 targets are allowed where max_batch is 4096, not one more.
    let big = Negotiated::new(u16::MAX, feature::ALL);
    assert_eq!(
        refusal(&alloc(0x09, 4097, 0, 1, 1), big),
        "bad-request field=num-targets entry=0"
    );
    assert!(Request::decode(&with_targets(alloc(0x09, 4096, 0, 1, 1), 4096), big).is_ok());
}

#[test]
fn alloc_lengths_follow_the_targeting() {
    let length = "bad-request field=length entry=0";
    // PARKED: no targets, whatever max_count says.
    assert_eq!(
        refusal(&with_targets(alloc(0x05, 0, 0, 1, 1), 1), ALL),
        length
    );
    // SPREAD: num_targets of them, not max_count.
    assert_eq!(
        refusal(&with_targets(alloc(0x09, 2, 0, 1, 4), 4), ALL),
        length
    );
    assert!(Request::decode(&with_targets(alloc(0x09, 2, 0, 1, 4), 2), ALL).is_ok());
    // Targets are still checked one at a time after the length.
    let mut bad = with_targets(alloc(0x09, 2, 0, 1, 4), 2);
    bad[32 + 8 + 4] = 0x1f;
    assert_eq!(
        refusal(&bad, ALL),
        "invalid-target field=target-vector entry=1"
    );
}

#[test]
fn index_lists_are_checked_after_the_length_and_before_the_targets() {
    assert_eq!(
        refusal(&with_list(range(3, 1, 5, 1), &[5]), ALL),
        "bad-request field=first-index entry=0"
    );
    for (list, position) in [(&[1, 1][..], 1), (&[5, 3, 9], 1), (&[1, 2, 0], 2)] {
        let count = list.len() as u16;
        assert_eq!(
            refusal(&with_list(range(3, 1, 0, count), list), ALL),
            format!("bad-request field=index-list entry={position}")
        );
    }
    let length = "bad-request field=length entry=0";
    assert_eq!(refusal(&with_list(range(3, 1, 0, 3), &[1, 1]), ALL), length);
    // A RETARGET list: the list before its targets, the length before both.
    let mut retarget = with_targets(with_list(range(4, 1, 0, 2), &[3, 3]), 2);
    retarget[32 + 8 + 4] = 0;
    assert_eq!(
        refusal(&retarget, ALL),
        "bad-request field=index-list entry=1"
    );
    retarget.pop();
    assert_eq!(refusal(&retarget, ALL), length);
    // PARK takes no targets.
    assert_eq!(refusal(&with_targets(range(4, 2, 0, 1), 1), ALL), length);
    // A run still may not pass 2^32 - 1; a list has no run.
    assert_eq!(
        refusal(&range(3, 0, u32::MAX, 2), ALL),
        "index-out-of-range index=4294967295"
    );
    assert!(Request::decode(&with_list(range(3, 1, 0, 1), &[u32::MAX]), ALL).is_ok());
}

#[test]
fn the_free_and_retarget_flags_byte_is_reserved_unless_an_extension_defines_it() {
    let flags = "bad-request field=flags entry=0";
    let reserved = "bad-request field=body-reserved entry=0";
    assert_eq!(refusal(&range(3, 2, 0, 1), ALL), flags, "FREE has no PARK");
    assert_eq!(refusal(&range(4, 4, 0, 1), ALL), flags);
    let parked_only = Negotiated::new(64, feature::V1 | feature::INFO | feature::PARKED);
    assert_eq!(
        refusal(&with_list(range(3, 1, 0, 1), &[0]), parked_only),
        flags
    );
    let list_only = Negotiated::new(64, feature::V1 | feature::INFO | feature::INDEX_LIST);
    assert_eq!(refusal(&range(4, 2, 0, 1), list_only), flags);
    let info_only = Negotiated::new(64, feature::V1 | feature::INFO);
    assert_eq!(
        refusal(&with_list(range(3, 1, 0, 1), &[0]), info_only),
        reserved
    );
    assert_eq!(refusal(&range(4, 2, 0, 1), Negotiated::v1(64)), reserved);
}

fn response_header(opcode: u8, status: u8, detail: u8, count: u32, info: u32) -> Vec<u8> {
    let mut b = vec![opcode, status, detail, 0];
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(&info.to_le_bytes());
    b
}

fn grant_record(mode: u8, flags: u8, reserved: u16, pasid: u32) -> Vec<u8> {
    let mut b = response_header(2, 0, 0, 1, 5);
    for word in [3u32, 0xfee0_0078, 0, 0] {
        b.extend_from_slice(&word.to_le_bytes());
    }
    b.extend_from_slice(&[mode, flags]);
    b.extend_from_slice(&reserved.to_le_bytes());
    b.extend_from_slice(&pasid.to_le_bytes());
    b
}

fn response_text(bytes: &[u8], features: u64) -> Result<String, Error> {
    let response = Response::decode(bytes, features)?;
    let mut out = vec![0; bytes.len()];
    assert_eq!(response.encode(&mut out), Ok(bytes.len()));
    assert_eq!(out, bytes);
    Ok(response.to_string())
}

#[test]
fn extended_refusal_codes_need_info() {
    let irte_fragmented = response_header(2, 1, 6, 0, 3);
    assert!(matches!(
        Response::decode(&irte_fragmented, feature::V1),
        Err(Error::InvalidStatus { .. })
    ));
    assert_eq!(
        response_text(&irte_fragmented, feature::V1 | feature::INFO).as_deref(),
        Ok("alloc device=1 tag=0x2 no-space resource=irte-fragmented available=3")
    );
    let index_list = response_header(3, 2, 14, 0, 2);
    assert!(Response::decode(&index_list, feature::V1).is_err());
    assert_eq!(
        response_text(&index_list, feature::ALL).as_deref(),
        Ok("free device=1 tag=0x2 bad-request field=index-list entry=2")
    );
    // `device-removed` is for events only, and 10 is no resource at all.
    for detail in [9, 10] {
        assert!(Response::decode(&response_header(2, 1, detail, 0, 0), feature::ALL).is_err());
    }
}

#[test]
fn grant_records_are_24_bytes_with_info_and_checked_field_by_field() {
    let posted = grant_record(1, 3, 0, 0x42);
    assert_eq!(
        response_text(&posted, feature::ALL).as_deref(),
        Ok("alloc device=1 tag=0x2 ok quota_remaining=5 \
            grants=[3:0xfee00078:0x0:posted:parked:pasid=0x42]")
    );
    let remapped = grant_record(0, 0, 0, 0);
    assert_eq!(
        response_text(&remapped, feature::V1 | feature::INFO).as_deref(),
        Ok("alloc device=1 tag=0x2 ok quota_remaining=5 grants=[3:0xfee00078:0x0:remapped]")
    );
    let info = feature::V1 | feature::INFO;
    assert_eq!(
        Response::decode(&grant_record(1, 0, 0, 0), info),
        Err(Error::NotNegotiated(feature::POSTED))
    );
    assert_eq!(
        Response::decode(&grant_record(0, 1, 0, 0), info),
        Err(Error::NotNegotiated(feature::PARKED))
    );
    assert_eq!(
        Response::decode(&grant_record(2, 0, 0, 0), feature::ALL),
        Err(Error::UnknownGrantMode(2))
    );
    for (flags, reserved, pasid) in [(4, 0, 0), (0, 1, 0), (0, 0, 7)] {
        assert!(matches!(
            Response::decode(&grant_record(0, flags, reserved, pasid), feature::ALL),
            Err(Error::ReservedNotZero(_))
        ));
    }
    assert_eq!(
        Response::decode(&grant_record(0, 2, 0, 1 << 20), feature::ALL),
        Err(Error::InvalidPasid(1 << 20))
    );
    // A 24-byte record is the wrong length for a version-1 driver, and the reverse.
    assert!(matches!(
        Response::decode(&remapped, feature::V1),
        Err(Error::LengthMismatch { .. })
    ));
    let mut basic = response_header(2, 0, 0, 1, 5);
    basic.extend_from_slice(&[0; 16]);
    assert!(matches!(
        Response::decode(&basic, feature::ALL),
        Err(Error::LengthMismatch { .. })
    ));
}

fn query(ext: &[u8; 40]) -> Vec<u8> {
    let mut b = response_header(1, 0, 0, 0, 30);
    for v in [0b011u32, 0x0040_0008, 0, 2, 32, 30] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(ext);
    b
}

fn ext(format: u8, flags: u8, pasid: u32) -> [u8; 40] {
    let mut e = [0u8; 40];
    e[0..2].copy_from_slice(&1u16.to_le_bytes());
    e[2] = 0x3a;
    e[3] = 0x18;
    e[4..6].copy_from_slice(&0x3a18u16.to_le_bytes());
    e[6] = format;
    e[7] = flags;
    e[8..12].copy_from_slice(&pasid.to_le_bytes());
    e[12..16].copy_from_slice(&16u32.to_le_bytes());
    e[16..18].copy_from_slice(&60u16.to_le_bytes());
    e[20..24].copy_from_slice(&0u32.to_le_bytes());
    e[24..28].copy_from_slice(&7u32.to_le_bytes());
    e
}

#[test]
fn the_extended_query_body_prints_its_fields_in_body_order() {
    assert_eq!(
        response_text(&query(&ext(1, 2, 0)), feature::ALL).as_deref(),
        Ok(
            "query device=1 tag=0x2 ok quota_remaining=30 kinds=msi|msix msi_max=8 \
            msix_table_size=64 ims_slots=0 granted=2 vm_quota=32 available=30 segment=0x1 \
            bus=0x3a devfn=0x18 requester_id=0x3a18 format=vtd-remappable \
            identity_flags=can-post pasid=0x0 share=16 msix_free_run=60 ims_free_run=0 \
            parked_drops=7"
        )
    );
    assert_eq!(
        response_text(&query(&ext(3, 1, 0xabc)), feature::V1 | feature::INFO)
            .map(|t| t.split_once(" format=").map(|(_, rest)| rest.to_owned())),
        Ok(Some(
            "vmm-trapped identity_flags=pasid-valid pasid=0xabc share=16 msix_free_run=60 \
             ims_free_run=0 parked_drops=7"
                .to_owned()
        ))
    );
    // 88 bytes need INFO; 48 bytes are version 1's.
    assert!(Response::decode(&query(&ext(1, 0, 0)), feature::V1).is_err());
    let short = &query(&ext(1, 0, 0))[..48];
    assert!(matches!(
        Response::decode(short, feature::ALL),
        Err(Error::LengthMismatch { .. })
    ));
    for format in [0, 4] {
        assert_eq!(
            Response::decode(&query(&ext(format, 0, 0)), feature::ALL),
            Err(Error::UnknownMessageFormat(format))
        );
    }
    for (flags, pasid) in [(4, 0), (0, 5)] {
        assert!(matches!(
            Response::decode(&query(&ext(1, flags, pasid)), feature::ALL),
            Err(Error::ReservedNotZero(_))
        ));
    }
    assert_eq!(
        Response::decode(&query(&ext(1, 1, 1 << 20)), feature::ALL),
        Err(Error::InvalidPasid(1 << 20))
    );
    for reserved in [18, 19, 28, 39] {
        let mut e = ext(1, 0, 0);
        e[reserved] = 1;
        assert!(matches!(
            Response::decode(&query(&e), feature::ALL),
            Err(Error::ReservedNotZero(_))
        ));
    }
}
