//! Writing a reply: the sink a reply goes to, and the per-request context that echoes the
//! request's header and encodes the outcome.

use crate::error::ReplyError;
use pvirq_proto::{Outcome, Refusal, Response, Status};

/// Where a reply goes: the writable part of a descriptor chain, or a test buffer.
pub trait ReplySink {
    /// Writable bytes.
    fn capacity(&self) -> usize;
    /// Writes `reply` at the start of the writable space (a later call overwrites).
    fn write(&mut self, reply: &[u8]) -> Result<(), ReplyError>;
}

/// A reply buffer in host memory, for calling a [`crate::Vm`] directly.
#[derive(Clone, Debug, Default)]
pub struct BufferSink {
    capacity: usize,
    bytes: Vec<u8>,
    fail_writes: u32,
}

impl BufferSink {
    /// A buffer of `capacity` writable bytes.
    pub fn new(capacity: usize) -> Self {
        BufferSink {
            capacity,
            ..Self::default()
        }
    }

    /// A buffer whose next `writes` writes fail, as guest memory that vanished would.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn failing(capacity: usize, writes: u32) -> Self {
        BufferSink {
            capacity,
            bytes: Vec::new(),
            fail_writes: writes,
        }
    }

    /// The last reply written.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl ReplySink for BufferSink {
    fn capacity(&self) -> usize {
        self.capacity
    }

    fn write(&mut self, reply: &[u8]) -> Result<(), ReplyError> {
        if self.fail_writes > 0 {
            self.fail_writes -= 1;
            return Err(ReplyError::Injected);
        }
        if reply.len() > self.capacity {
            return Err(ReplyError::TooLong {
                needed: reply.len(),
                capacity: self.capacity,
            });
        }
        self.bytes.clear();
        self.bytes.extend_from_slice(reply);
        Ok(())
    }
}

/// What handling one request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handled {
    /// Bytes written: the used length to return the chain with (0: nothing said).
    pub used_len: u32,
    /// The request's opcode byte as received (0 if the request was shorter than a header).
    pub opcode: u8,
    /// The status written, if a reply was written.
    pub status: Option<Status>,
}

/// The header fields a reply echoes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Echo {
    pub(crate) opcode: u8,
    pub(crate) device: u32,
    pub(crate) tag: u64,
}

/// Replies up to this long are encoded in a stack buffer (a header and 16 grants).
const STACK_REPLY: usize = 320;

/// One request's reply context.
pub(crate) struct Ctx<'a> {
    pub(crate) echo: Echo,
    pub(crate) sink: &'a mut dyn ReplySink,
    /// The features the driver negotiated: which codes it may be told.
    pub(crate) features: u64,
}

impl Ctx<'_> {
    /// Encodes and writes `outcome`; the used length.
    pub(crate) fn send(&mut self, outcome: Outcome<'_>) -> Result<u32, ReplyError> {
        let response = Response {
            opcode: self.echo.opcode,
            device: self.echo.device,
            tag: self.echo.tag,
            outcome,
        };
        // Most replies (every refusal, FREE, QUERY, small ALLOCs) fit on the stack.
        let mut stack = [0u8; STACK_REPLY];
        let mut heap = Vec::new();
        let buf = match stack.get_mut(..response.encoded_len()) {
            Some(buf) => buf,
            None => {
                heap.resize(response.encoded_len(), 0);
                heap.as_mut_slice()
            }
        };
        let len = response.encode(buf).map_err(|_| ReplyError::Encode)?;
        let bytes = buf.get(..len).ok_or(ReplyError::Encode)?;
        self.sink.write(bytes)?;
        u32::try_from(len).map_err(|_| ReplyError::Encode)
    }

    /// Writes `refusal`, or says nothing if it cannot be written. A code the driver did
    /// not negotiate is told as version 1 tells it (spec §3.3: `device-share` as
    /// `vm-quota`, the fragmented causes as the resource they fragment).
    pub(crate) fn refuse(&mut self, refusal: Refusal) -> Handled {
        let refusal = refusal.for_features(self.features);
        match self.send(Outcome::Refused(refusal)) {
            Ok(len) => self.handled(len, refusal.status()),
            Err(_) => self.dropped(),
        }
    }

    pub(crate) fn handled(&self, used_len: u32, status: Status) -> Handled {
        Handled {
            used_len,
            opcode: self.echo.opcode,
            status: Some(status),
        }
    }

    /// Nothing said, nothing changed: used length 0 ([DEV-5]).
    pub(crate) fn dropped(&self) -> Handled {
        Handled {
            used_len: 0,
            opcode: self.echo.opcode,
            status: None,
        }
    }
}
