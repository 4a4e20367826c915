//! The VMM's side of the mailbox: posts a command, lets vCPU 0 run, and waits for the
//! report. vCPU 0's thread, on the guest's write to the mailbox port, hands the report over
//! and blocks until the next command (or until the VM stops).

use super::error::VmmError;
use pvirq_guest_image_abi::layout::MAILBOX;
use pvirq_guest_image_abi::mailbox::{
    ARG_WORDS, ARGS, IN_LIST, LIST_WORDS, OP, OUT_LIST, Op, REPORT_SEQ, RESULT_WORDS, RESULTS, SEQ,
    STATUS, Status,
};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Who holds the turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// The guest is running a command (or booting).
    Guest,
    /// The guest reported and waits for the VMM.
    Vmm,
    /// The VM is stopping: the waiting vCPU returns.
    Closed,
}

/// The hand-over between the controller and vCPU 0.
#[derive(Debug)]
pub struct MailboxSync {
    turn: Mutex<Turn>,
    changed: Condvar,
}

impl Default for MailboxSync {
    fn default() -> Self {
        MailboxSync {
            turn: Mutex::new(Turn::Guest),
            changed: Condvar::new(),
        }
    }
}

impl MailboxSync {
    /// vCPU 0's side: the guest reported. Blocks until the VMM posts the next command;
    /// false when the VM is stopping instead.
    pub fn guest_reported(&self) -> bool {
        let mut turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        if *turn == Turn::Closed {
            return false;
        }
        *turn = Turn::Vmm;
        self.changed.notify_all();
        while *turn == Turn::Vmm {
            turn = self
                .changed
                .wait(turn)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *turn == Turn::Guest
    }

    /// Waits until the guest has reported; false after `timeout` or once closed.
    pub fn wait_report(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        while *turn == Turn::Guest {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            turn = self
                .changed
                .wait_timeout(turn, left.min(Duration::from_millis(50)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *turn == Turn::Vmm
    }

    /// Gives the turn to the guest (after posting a command).
    pub fn resume_guest(&self) {
        let mut turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        if *turn == Turn::Vmm {
            *turn = Turn::Guest;
            self.changed.notify_all();
        }
    }

    /// Releases a waiting vCPU for good.
    pub fn close(&self) {
        let mut turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        *turn = Turn::Closed;
        self.changed.notify_all();
    }
}

/// A command for the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// What to do.
    pub op: Op,
    /// Arguments (see [`Op`]).
    pub args: Vec<u32>,
    /// The input list.
    pub list: Vec<u32>,
}

impl Command {
    /// A command with arguments and no list.
    pub fn new(op: Op, args: &[u32]) -> Self {
        Command {
            op,
            args: args.to_vec(),
            list: Vec::new(),
        }
    }

    /// The same with an input list.
    pub fn with_list(mut self, list: Vec<u32>) -> Self {
        self.list = list;
        self
    }
}

/// What the guest reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// How it went.
    pub status: Status,
    /// The result words.
    pub results: [u32; RESULT_WORDS],
    /// The output list (as many words as the caller asked to read).
    pub list: Vec<u32>,
}

impl Report {
    /// Result word `i`.
    pub fn r(&self, i: usize) -> u32 {
        self.results.get(i).copied().unwrap_or(0)
    }

    /// Results `i`, `i + 1` as a `u64`.
    pub fn r64(&self, i: usize) -> u64 {
        u64::from(self.r(i)) | u64::from(self.r(i + 1)) << 32
    }
}

fn word_addr(word: usize) -> GuestAddress {
    GuestAddress(MAILBOX + word as u64 * 4)
}

/// Writes `command` with sequence number `seq` into the mailbox.
pub fn post(mem: &GuestMemoryMmap, seq: u32, command: &Command) -> Result<(), VmmError> {
    if command.args.len() > ARG_WORDS || command.list.len() > LIST_WORDS {
        return Err(VmmError::BadReport("command too large for the mailbox"));
    }
    let w = |word: usize, value: u32| {
        mem.write_obj(value, word_addr(word))
            .map_err(VmmError::MemoryAccess)
    };
    w(OP, command.op as u32)?;
    for i in 0..ARG_WORDS {
        w(ARGS + i, command.args.get(i).copied().unwrap_or(0))?;
    }
    for (i, v) in command.list.iter().enumerate() {
        w(IN_LIST + i, *v)?;
    }
    // Last: the sequence number says the command is complete.
    w(SEQ, seq)
}

/// Reads the report of command `seq`, then as many words of its output list as
/// `list_words` says for those results.
pub fn read(
    mem: &GuestMemoryMmap,
    seq: u32,
    list_words: impl Fn(&[u32; RESULT_WORDS]) -> usize,
) -> Result<Report, VmmError> {
    let r = |word: usize| -> Result<u32, VmmError> {
        mem.read_obj(word_addr(word))
            .map_err(VmmError::MemoryAccess)
    };
    if r(REPORT_SEQ)? != seq {
        return Err(VmmError::BadReport("the report answers another command"));
    }
    let status = Status::from_word(r(STATUS)?).ok_or(VmmError::BadReport("unknown status"))?;
    let mut results = [0u32; RESULT_WORDS];
    for (i, slot) in results.iter_mut().enumerate() {
        *slot = r(RESULTS + i)?;
    }
    let list = (0..list_words(&results).min(LIST_WORDS))
        .map(|i| r(OUT_LIST + i))
        .collect::<Result<_, _>>()?;
    Ok(Report {
        status,
        results,
        list,
    })
}
