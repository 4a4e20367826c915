//! The guest's side of the request queue, as a driver would fill it: requests and reply
//! buffers in guest memory, chains on a split virtqueue (virtio-queue's `MockSplitQueue`
//! lays the rings out), replies read back from the used ring.

use pvirq_proto::{Alloc, Kind, Operation, Outcome, Request, Response, Target};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory of the examples: 4 MiB, the rings at the bottom, buffers from 1 MiB.
pub const MEM_SIZE: usize = 4 << 20;
const DATA: u64 = 1 << 20;
/// The queue size the driver sets.
pub const QUEUE_SIZE: u16 = 16;
const REPLY_LEN: u32 = 256;

/// One request on the ring: its head descriptor and where its reply goes.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    head: u16,
    reply_at: u64,
}

/// The driver's view of the request queue.
pub struct GuestRing<'a, B: Bitmap + 'static> {
    mem: &'a GuestMemoryMmap<B>,
    queue: MockSplitQueue<'a, GuestMemoryMmap<B>>,
    next_desc: u16,
    next_data: u64,
}

impl<'a, B: Bitmap + 'static> GuestRing<'a, B> {
    /// Rings of [`QUEUE_SIZE`] laid out in `mem`.
    pub fn new(mem: &'a GuestMemoryMmap<B>) -> Self {
        GuestRing {
            mem,
            queue: MockSplitQueue::new(mem, QUEUE_SIZE),
            next_desc: 0,
            next_data: DATA,
        }
    }

    /// Descriptor table, available ring and used ring addresses: what the driver writes
    /// into the transport's queue registers.
    pub fn addresses(&self) -> (GuestAddress, GuestAddress, GuestAddress) {
        (
            self.queue.desc_table_addr(),
            self.queue.avail_addr(),
            self.queue.used_addr(),
        )
    }

    /// The queue as a virtio-queue transport holds it once the driver set it up.
    pub fn configured_queue(&self) -> QueueState {
        let mut queue = Queue::new(256).unwrap_or_else(|e| panic!("queue: {e}"));
        let (desc, avail, used) = self.addresses();
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(desc.0 as u32), Some((desc.0 >> 32) as u32));
        queue.set_avail_ring_address(Some(avail.0 as u32), Some((avail.0 >> 32) as u32));
        queue.set_used_ring_address(Some(used.0 as u32), Some((used.0 >> 32) as u32));
        queue.set_ready(true);
        queue.state()
    }

    /// Offers an ALLOC of `n` MSI-X vectors on device 0, targeted at vCPU 1 from
    /// `first_vector` on.
    pub fn alloc(&mut self, n: u16, first_vector: u8) -> Sent {
        let targets: Vec<Target> = (0..n)
            .map(|i| Target::new(1, first_vector + i as u8))
            .collect();
        let request = Request {
            device: 0,
            tag: u64::from(self.next_desc),
            op: Operation::Alloc(Alloc::any(Kind::MsiX, n, &targets)),
        };
        let mut bytes = vec![0u8; request.encoded_len()];
        request
            .encode(&mut bytes)
            .unwrap_or_else(|e| panic!("encode: {e:?}"));
        let request_at = self.buffer(bytes.len() as u32);
        self.mem
            .write_slice(&bytes, GuestAddress(request_at))
            .unwrap_or_else(|e| panic!("guest memory: {e}"));
        let reply_at = self.buffer(REPLY_LEN);
        let head = self.next_desc;
        let chain = [
            RawDescriptor::from(Descriptor::new(
                request_at,
                bytes.len() as u32,
                VRING_DESC_F_NEXT as u16,
                head + 1,
            )),
            RawDescriptor::from(Descriptor::new(
                reply_at,
                REPLY_LEN,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        self.queue
            .add_desc_chains(&chain, head)
            .unwrap_or_else(|e| panic!("ring: {e}"));
        self.next_desc += 2;
        Sent { head, reply_at }
    }

    fn buffer(&mut self, len: u32) -> u64 {
        let at = self.next_data;
        self.next_data += u64::from(len).next_multiple_of(64);
        at
    }

    /// The used ring's index: chains the device has returned.
    pub fn used_idx(&self) -> u16 {
        self.read(self.queue.used_addr().0 + 2)
    }

    /// How many vectors `sent` was granted, once the device returned it (`None` before,
    /// or for a refusal).
    pub fn granted(&self, sent: Sent) -> Option<usize> {
        let used = self.queue.used_addr().0;
        let len = (0..self.used_idx()).find_map(|i| {
            let entry = used + 4 + u64::from(i % QUEUE_SIZE) * 8;
            let id: u32 = self.read(entry);
            (id == u32::from(sent.head)).then(|| self.read::<u32>(entry + 4))
        })?;
        let mut reply = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(sent.reply_at))
            .ok()?;
        match Response::decode(&reply, pvirq_proto::feature::V1)
            .ok()?
            .outcome
        {
            Outcome::Allocated { grants, .. } => Some(grants.len()),
            _ => None,
        }
    }

    /// Writes the available ring's index: a driver bug (or a hostile guest) the device
    /// answers with DEVICE_NEEDS_RESET.
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.queue.avail_addr().0 + 2))
            .unwrap_or_else(|e| panic!("guest memory: {e}"));
    }

    fn read<T: vm_memory::ByteValued>(&self, at: u64) -> T {
        self.mem
            .read_obj(GuestAddress(at))
            .unwrap_or_else(|e| panic!("guest memory: {e}"))
    }
}
