//! Reading a request out of a descriptor chain and writing its reply back.
//!
//! A chain is readable descriptors (the request) followed by writable ones (the reply).
//! Problems with one chain are the guest's request problem and get a status; a chain
//! that cannot even be walked (a loop, a `next` beyond the table, an indirect descriptor, more
//! than 2^32 bytes) means the ring itself is malformed, and the device needs a reset.

use crate::error::ReplyError;
use crate::transaction::ReplySink;
use pvirq_proto::{HEADER_LEN, MAX_BATCH_LIMIT};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

/// Bytes of one split-ring descriptor.
const DESCRIPTOR_SIZE: u64 = 16;

/// Longest valid request: header, body, `MAX_BATCH_LIMIT` targets. Anything longer is
/// read only to this length plus one byte, which decoding then rejects as a bad length.
pub const MAX_REQUEST_LEN: usize = HEADER_LEN + 16 + MAX_BATCH_LIMIT as usize * 8;

/// Why a chain cannot be walked: the ring itself is malformed, and the device needs a reset
/// (spec §8, [DEV-15]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MalformedChain {
    /// A `next` (or the head) names no entry of the descriptor table.
    OutsideTable,
    /// More descriptors than the queue holds: a loop.
    TooManyDescriptors,
    /// `VIRTQ_DESC_F_INDIRECT`, which the device never offers (`VIRTIO_F_INDIRECT_DESC`).
    Indirect,
    /// The descriptor table entry lies outside guest memory.
    Unreadable,
    /// The lengths add up to more than 2^32 bytes, which virtio forbids.
    TooLong,
}

/// Where the descriptor table of a split queue lies, and how many entries it has.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DescriptorTable {
    pub(crate) addr: GuestAddress,
    pub(crate) size: u16,
}

/// Virtio's limit on a chain's total length (virtio 1.2 §2.7.5.2: a driver MUST NOT add a
/// chain longer than 2^32 bytes).
const MAX_CHAIN_BYTES: u64 = 1 << 32;

/// One chain, parsed, in buffers the device keeps from one chain to the next so that
/// handling a request allocates nothing here.
#[derive(Debug, Default)]
pub(crate) struct ChainBuffers {
    /// The request bytes; empty if the request could not be read (a readable descriptor
    /// outside guest memory, or readable after writable), which decodes to BAD_REQUEST.
    pub(crate) request: Vec<u8>,
    /// Readable buffers, in order.
    pub(crate) readable: Vec<(GuestAddress, u32)>,
    /// Writable buffers, in order.
    pub(crate) writable: Vec<(GuestAddress, u32)>,
}

/// Walks the chain headed at `head` in `table`, reads its request into `out.request`, and
/// collects its writable buffers into `out.writable` (both replace what `out` held).
/// `visited` counts the descriptors read, so that at most `table.size` are read per chain.
///
/// The walk is ours rather than virtio-queue's `DescriptorChain`, which follows indirect
/// tables of up to 65,535 entries without saying so and stops silently at 2^32 - 1 bytes.
pub(crate) fn parse_chain<M: GuestMemory>(
    mem: &M,
    table: DescriptorTable,
    head: u16,
    out: &mut ChainBuffers,
    visited: &mut u64,
) -> Result<(), MalformedChain> {
    let misordered = walk_chain(mem, table, head, out, visited)?;
    if !misordered && read_request(mem, &out.readable, &mut out.request).is_none() {
        out.request.clear();
    }
    Ok(())
}

/// Walks the chain headed at `head` as [`parse_chain`] does, collecting its readable and
/// writable buffers into `out` without reading any of them (`out.request` is left empty).
/// Returns whether a readable descriptor followed a writable one.
pub(crate) fn walk_chain<M: GuestMemory>(
    mem: &M,
    table: DescriptorTable,
    head: u16,
    out: &mut ChainBuffers,
    visited: &mut u64,
) -> Result<bool, MalformedChain> {
    out.request.clear();
    out.readable.clear();
    out.writable.clear();
    let mut misordered = false;
    let mut total: u64 = 0;
    let mut index = head;
    let mut ended = false;
    for _ in 0..table.size {
        if index >= table.size {
            return Err(MalformedChain::OutsideTable);
        }
        let at = table
            .addr
            .checked_add(u64::from(index) * DESCRIPTOR_SIZE)
            .ok_or(MalformedChain::Unreadable)?;
        let desc: Descriptor = mem.read_obj(at).map_err(|_| MalformedChain::Unreadable)?;
        *visited += 1;
        if desc.refers_to_indirect_table() {
            return Err(MalformedChain::Indirect);
        }
        total += u64::from(desc.len());
        if total > MAX_CHAIN_BYTES {
            return Err(MalformedChain::TooLong);
        }
        if desc.is_write_only() {
            out.writable.push((desc.addr(), desc.len()));
        } else {
            misordered |= !out.writable.is_empty();
            out.readable.push((desc.addr(), desc.len()));
        }
        if !desc.has_next() {
            ended = true;
            break;
        }
        index = desc.next();
    }
    if !ended {
        return Err(MalformedChain::TooManyDescriptors);
    }
    Ok(misordered)
}

fn read_request<M: GuestMemory>(
    mem: &M,
    readable: &[(GuestAddress, u32)],
    bytes: &mut Vec<u8>,
) -> Option<()> {
    let total: usize = readable
        .iter()
        .map(|(_, len)| *len as usize)
        .fold(0, usize::saturating_add);
    bytes.resize(total.min(MAX_REQUEST_LEN + 1), 0);
    let mut offset = 0;
    for (addr, len) in readable {
        let end = bytes.len().min(offset + *len as usize);
        let dst = bytes.get_mut(offset..end)?;
        if !dst.is_empty() {
            read_guest(mem, dst, *addr)?;
        }
        offset = end;
        if offset == bytes.len() {
            break;
        }
    }
    Some(())
}

/// Reads `dst.len()` bytes at `addr`: one copy when a single memory region holds them
/// (always, for the buffers a driver allocates), else vm-memory's region-by-region walk.
fn read_guest<M: GuestMemory>(mem: &M, dst: &mut [u8], addr: GuestAddress) -> Option<()> {
    if let Some(slice) = mem
        .physical_memory()
        .and_then(|phys| GuestMemoryBackend::get_slice(phys, addr, dst.len()).ok())
    {
        return (slice.copy_to(dst) == dst.len()).then_some(());
    }
    mem.read_slice(dst, addr).ok()
}

/// Writes `src` at `addr`, as [`read_guest`] reads.
fn write_guest<M: GuestMemory>(mem: &M, src: &[u8], addr: GuestAddress) -> Option<()> {
    if let Some(slice) = mem
        .physical_memory()
        .and_then(|phys| GuestMemoryBackend::get_slice(phys, addr, src.len()).ok())
    {
        slice.copy_from(src);
        return Some(());
    }
    mem.write_slice(src, addr).ok()
}

/// The writable part of a chain, as a [`ReplySink`].
pub(crate) struct ChainSink<'a, M> {
    mem: &'a M,
    writable: &'a [(GuestAddress, u32)],
}

impl<'a, M: GuestMemory> ChainSink<'a, M> {
    pub(crate) fn new(mem: &'a M, writable: &'a [(GuestAddress, u32)]) -> Self {
        ChainSink { mem, writable }
    }
}

impl<M: GuestMemory> ReplySink for ChainSink<'_, M> {
    fn capacity(&self) -> usize {
        self.writable
            .iter()
            .map(|(_, len)| *len as usize)
            .fold(0, usize::saturating_add)
    }

    fn write(&mut self, reply: &[u8]) -> Result<(), ReplyError> {
        let mut rest = reply;
        for (addr, len) in self.writable {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at(rest.len().min(*len as usize));
            write_guest(self.mem, now, *addr).ok_or(ReplyError::GuestMemory(addr.0))?;
            rest = later;
        }
        if rest.is_empty() {
            Ok(())
        } else {
            Err(ReplyError::TooLong {
                needed: reply.len(),
                capacity: self.capacity(),
            })
        }
    }
}
