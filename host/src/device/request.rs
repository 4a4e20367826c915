//! Reading a request out of a descriptor chain and writing its reply back.
//!
//! A chain is readable descriptors (the request) followed by writable ones (the reply).
//! Problems with one chain are the guest's request problem and get a status; a chain
//! that cannot even be walked (a loop, a `next` beyond the table) means the ring itself is
//! corrupt, and the device needs a reset.

use crate::error::ReplyError;
use crate::transaction::ReplySink;
use pvirq_proto::{HEADER_LEN, MAX_BATCH_LIMIT};
use std::ops::Deref;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

/// Longest valid request: header, body, `MAX_BATCH_LIMIT` targets. Anything longer is
/// read only to this length plus one byte, which decoding then rejects as a bad length.
pub const MAX_REQUEST_LEN: usize = HEADER_LEN + 16 + MAX_BATCH_LIMIT as usize * 8;

/// A chain that cannot be walked: the ring is corrupt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CorruptChain;

/// One chain, parsed, in buffers the device keeps from one chain to the next so that
/// handling a request allocates nothing here.
#[derive(Debug, Default)]
pub(crate) struct ChainBuffers {
    /// The request bytes; empty if the request could not be read (a readable descriptor
    /// outside guest memory, or readable after writable), which decodes to BAD_REQUEST.
    pub(crate) request: Vec<u8>,
    /// Readable buffers, in order.
    readable: Vec<(GuestAddress, u32)>,
    /// Writable buffers, in order.
    pub(crate) writable: Vec<(GuestAddress, u32)>,
}

/// Walks `chain`, reads its request into `out.request`, and collects its writable buffers
/// into `out.writable` (both replace what `out` held).
pub(crate) fn parse_chain<M, T>(
    mem: &M,
    chain: DescriptorChain<T>,
    out: &mut ChainBuffers,
) -> Result<(), CorruptChain>
where
    M: GuestMemory,
    T: Deref,
    T::Target: GuestMemory,
{
    out.request.clear();
    out.readable.clear();
    out.writable.clear();
    let mut misordered = false;
    let mut last_has_next = true; // an empty walk is a corrupt head
    for desc in chain {
        last_has_next = desc.has_next();
        if desc.is_write_only() {
            out.writable.push((desc.addr(), desc.len()));
        } else {
            misordered |= !out.writable.is_empty();
            out.readable.push((desc.addr(), desc.len()));
        }
    }
    // The walk stops early, still pointing on, when the chain loops or is longer than the
    // queue, when `next` is out of the table, or when a descriptor cannot be read.
    if last_has_next {
        return Err(CorruptChain);
    }
    if !misordered && read_request(mem, &out.readable, &mut out.request).is_none() {
        out.request.clear();
    }
    Ok(())
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
