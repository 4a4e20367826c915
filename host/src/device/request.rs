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
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Longest valid request: header, body, `MAX_BATCH_LIMIT` targets. Anything longer is
/// read only to this length plus one byte, which decoding then rejects as a bad length.
pub const MAX_REQUEST_LEN: usize = HEADER_LEN + 16 + MAX_BATCH_LIMIT as usize * 8;

/// A chain that cannot be walked: the ring is corrupt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CorruptChain;

/// One chain, parsed.
#[derive(Debug)]
pub(crate) struct ParsedChain {
    /// The request bytes; empty if the request could not be read (a readable descriptor
    /// outside guest memory, or readable after writable), which decodes to BAD_REQUEST.
    pub(crate) request: Vec<u8>,
    /// Writable buffers, in order.
    pub(crate) writable: Vec<(GuestAddress, u32)>,
}

/// Walks `chain`, reads its request, and collects its writable buffers.
pub(crate) fn parse_chain<M, T>(
    mem: &M,
    chain: DescriptorChain<T>,
) -> Result<ParsedChain, CorruptChain>
where
    M: GuestMemory,
    T: Deref,
    T::Target: GuestMemory,
{
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut misordered = false;
    let mut last_has_next = true; // an empty walk is a corrupt head
    for desc in chain {
        last_has_next = desc.has_next();
        if desc.is_write_only() {
            writable.push((desc.addr(), desc.len()));
        } else {
            misordered |= !writable.is_empty();
            readable.push((desc.addr(), desc.len()));
        }
    }
    // The walk stops early, still pointing on, when the chain loops or is longer than the
    // queue, when `next` is out of the table, or when a descriptor cannot be read.
    if last_has_next {
        return Err(CorruptChain);
    }
    let request = if misordered {
        Vec::new()
    } else {
        read_request(mem, &readable).unwrap_or_default()
    };
    Ok(ParsedChain { request, writable })
}

fn read_request<M: GuestMemory>(mem: &M, readable: &[(GuestAddress, u32)]) -> Option<Vec<u8>> {
    let total: usize = readable
        .iter()
        .map(|(_, len)| *len as usize)
        .fold(0, usize::saturating_add);
    let mut bytes = vec![0u8; total.min(MAX_REQUEST_LEN + 1)];
    let mut offset = 0;
    for (addr, len) in readable {
        let end = bytes.len().min(offset + *len as usize);
        let dst = bytes.get_mut(offset..end)?;
        if !dst.is_empty() {
            mem.read_slice(dst, *addr).ok()?;
        }
        offset = end;
        if offset == bytes.len() {
            break;
        }
    }
    Some(bytes)
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
            self.mem
                .write_slice(now, *addr)
                .map_err(|_| ReplyError::GuestMemory(addr.0))?;
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
