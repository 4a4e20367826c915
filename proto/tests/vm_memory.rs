//! The `vm-memory` feature: the wire structs are `ByteValued`, so a host can read them
//! straight out of guest memory and get the same values as the byte decoders.
#![cfg(feature = "vm-memory")]

use pvirq_proto::wire::{AllocBody, RequestHeader, WireTarget};
use pvirq_proto::{
    Alloc, Config, IndexSpec, Kind, Le16, Le32, Operation, Request, Target, Targeting,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[test]
fn wire_structs_read_out_of_guest_memory_match_the_encoder() {
    let targets = [Target::new(1, 0x41), Target::new(0, 0x42)];
    let request = Request {
        device: 3,
        tag: 0x1122_3344_5566_7788,
        op: Operation::Alloc(Alloc {
            kind: Kind::MsiX,
            index: IndexSpec::At(5),
            min: 1,
            max: 2,
            pasid: None,
            targeting: Targeting::PerVector,
            targets: &targets,
        }),
    };
    let mut bytes = vec![0u8; request.encoded_len()];
    request.encode(&mut bytes).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    // An odd address: the structs have alignment 1, as the spec says.
    let at = GuestAddress(0x101);
    mem.write_slice(&bytes, at).unwrap();

    let header: RequestHeader = mem.read_obj(at).unwrap();
    assert_eq!(header.opcode, 2);
    assert_eq!(header.device.get(), 3);
    assert_eq!(header.tag.get(), 0x1122_3344_5566_7788);
    let body: AllocBody = mem.read_obj(GuestAddress(0x101 + 16)).unwrap();
    assert_eq!(body.first_index.get(), 5);
    assert_eq!((body.min_count.get(), body.max_count.get()), (1, 2));
    let second: WireTarget = mem.read_obj(GuestAddress(0x101 + 32 + 8)).unwrap();
    assert_eq!((second.dest.get(), second.vector), (0, 0x42));

    let config = Config {
        version: Le16::new(1),
        max_batch: Le16::new(64),
        num_devices: Le32::new(2),
        vm_quota: Le32::new(32),
        num_vcpus: Le32::new(4),
    };
    mem.write_obj(config, GuestAddress(0x203)).unwrap();
    assert_eq!(mem.read_obj::<Config>(GuestAddress(0x203)).unwrap(), config);
}
