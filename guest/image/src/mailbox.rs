//! The guest's side of the mailbox: volatile words, and the doorbell write that hands the
//! report to the VMM and waits for the next command.

use pvirq_guest_image_abi::layout::{MAILBOX, MAILBOX_DOORBELL};
use pvirq_guest_image_abi::mailbox::{
    ARG_WORDS, ARGS, IN_LIST, LIST_WORDS, OP, OUT_LIST, REPORT_SEQ, RESULT_WORDS, RESULTS, SEQ,
    STATUS, Status, WORDS,
};

/// The mailbox page. Only the bootstrap vCPU's CPL-3 code uses it.
pub struct Mailbox;

impl Mailbox {
    fn read(&self, word: usize) -> u32 {
        if word >= WORDS {
            return 0;
        }
        // SAFETY: `word < WORDS`, so the address lies in the mailbox, RAM shared with the VMM.
        unsafe { core::ptr::read_volatile((MAILBOX as *const u32).add(word)) }
    }

    fn write(&self, word: usize, value: u32) {
        if word < WORDS {
            // SAFETY: as in `read`.
            unsafe { core::ptr::write_volatile((MAILBOX as *mut u32).add(word), value) }
        }
    }

    /// The command's sequence number and opcode word.
    pub fn command(&self) -> (u32, u32) {
        (self.read(SEQ), self.read(OP))
    }

    /// Argument `i` (0 past the last).
    pub fn arg(&self, i: usize) -> u32 {
        if i < ARG_WORDS {
            self.read(ARGS + i)
        } else {
            0
        }
    }

    /// Word `i` of the input list (0 past its end).
    pub fn input(&self, i: usize) -> u32 {
        if i < LIST_WORDS {
            self.read(IN_LIST + i)
        } else {
            0
        }
    }

    /// Sets result `i`.
    pub fn result(&self, i: usize, value: u32) {
        if i < RESULT_WORDS {
            self.write(RESULTS + i, value);
        }
    }

    /// Sets results `i` and `i + 1` to a `u64`.
    pub fn result64(&self, i: usize, value: u64) {
        self.result(i, value as u32);
        self.result(i + 1, (value >> 32) as u32);
    }

    /// Sets word `i` of the output list; false once the list is full.
    pub fn output(&self, i: usize, value: u32) -> bool {
        if i < LIST_WORDS {
            self.write(OUT_LIST + i, value);
            true
        } else {
            false
        }
    }

    /// Clears the results before a command runs.
    pub fn clear_results(&self) {
        for i in 0..RESULT_WORDS {
            self.write(RESULTS + i, 0);
        }
    }

    /// Publishes the report of command `seq` and waits in the VMM for the next command.
    pub fn report(&self, seq: u32, status: Status) {
        self.write(STATUS, status as u32);
        self.write(REPORT_SEQ, seq);
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        crate::cpu::doorbell(MAILBOX_DOORBELL, 1);
    }
}
