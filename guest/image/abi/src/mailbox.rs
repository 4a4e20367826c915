//! The mailbox: how the VMM commands the guest driver and reads what it saw.
//!
//! A 64 KiB page run at [`crate::layout::MAILBOX`], read and written as little-endian
//! `u32` words. The VMM writes a command (opcode, arguments, an input list), bumps
//! [`SEQ`] and lets the vCPU run; the guest executes it at CPL 3, writes its report
//! (status, results, an output list), copies [`SEQ`] to [`REPORT_SEQ`] and writes
//! [`crate::layout::MAILBOX_DOORBELL`]. The VMM holds the vCPU in that exit until it posts the
//! next command, so an idle guest costs no CPU and the mailbox needs no polling.
//!
//! Word indices:
//! ```text
//! 0        SEQ          command sequence number (VMM)
//! 1        OP           Op
//! 2..16    ARGS         arguments, per Op
//! 16       REPORT_SEQ   SEQ of the command this report answers (guest)
//! 17       STATUS       Status
//! 18..48   RESULTS      results, per Op
//! 0x400..  IN_LIST      input list (targets: vcpu, vector pairs), LIST_WORDS words
//! 0x2000.. OUT_LIST     output list (grants: index, addr_lo, addr_hi, data; or counts)
//! ```

/// Word: command sequence number.
pub const SEQ: usize = 0;
/// Word: the [`Op`].
pub const OP: usize = 1;
/// First argument word.
pub const ARGS: usize = 2;
/// Number of argument words.
pub const ARG_WORDS: usize = 14;
/// Word: the sequence number the report answers.
pub const REPORT_SEQ: usize = 16;
/// Word: the [`Status`].
pub const STATUS: usize = 17;
/// First result word.
pub const RESULTS: usize = 18;
/// Number of result words.
pub const RESULT_WORDS: usize = 30;
/// First word of the input list.
pub const IN_LIST: usize = 0x400;
/// First word of the output list.
pub const OUT_LIST: usize = 0x2000;
/// Words in each list.
pub const LIST_WORDS: usize = 0x1C00;
/// The most grants (4 words each) one report lists, and so the most vectors one command
/// asks for.
pub const MAX_LIST_GRANTS: usize = LIST_WORDS / 4;
/// Words in the mailbox.
pub const WORDS: usize = 0x4000;

/// What the VMM asks.
///
/// Arguments (`a[i]` = word `ARGS + i`) and results (`r[i]` = word `RESULTS + i`):
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    /// Nothing yet: the report the guest writes when it has booted.
    Boot = 0,
    /// Bring the pvirq channel up (virtio init). `a[0]` features mask low, `a[1]` high.
    /// `r[0..5]` = num_devices, vm_quota, num_vcpus, max_batch, features low.
    Init = 1,
    /// QUERY device `a[0]`. `r[0]` granted, `r[1]` available.
    Query = 2,
    /// ALLOC for device `a[0]`: `a[1]` kind (0 MSI, 1 MSI-X, 2 IMS), `a[2]` 1 = at index
    /// `a[3]` (else any), `a[4]` min, `a[5]` max, `a[6]` 1 = PASID `a[7]`, `a[8]` 1 = fall
    /// back as Linux does, `a[9]` number of targets in the input list. On success the
    /// guest programs every grant into its slot and unmasks it.
    /// `r[0]` granted count, `r[1]` attempts, `r[2..5]` first refusal (status, detail,
    /// info; status 0 = none). Output list: `count` × (index, addr_lo, addr_hi, data).
    Alloc = 3,
    /// FREE device `a[0]`, kind `a[1]`, first `a[2]`, count `a[3]`; the guest masks the
    /// slots first, unless `a[4]` = 1 (a careless guest that leaves them programmed).
    /// `r[0]` freed.
    Free = 4,
    /// RETARGET device `a[0]`, kind `a[1]`, first `a[2]`, `a[3]` targets in the input list.
    /// `r[0]` moved.
    Retarget = 5,
    /// Device RESET of device `a[0]`. `r[0]` freed.
    ResetDevice = 6,
    /// virtio reset: the driver goes away and comes back. `r[0]` vectors the guest held.
    ResetVirtio = 7,
    /// Ring the doorbell of every slot device `a[0]` holds (and, when `a[1]` = 1, of every
    /// slot it freed, with the stale message written back and unmasked), then wait until
    /// each expected interrupt arrived or the wait runs out. `r[0]` doorbells rung, `r[1]`
    /// interrupts that arrived where the guest expected them, `r[2]` interrupts at a vector
    /// the guest expected none on, `r[3]` expected interrupts that never arrived.
    /// Output list: (vcpu, vector, count) for every counter that moved.
    Fire = 8,
    /// Program MSI-X entry (`a[1]` = 0) or IMS slot (`a[1]` = 1) `a[2]` of device `a[0]`
    /// with a message the guest was never granted (compatibility format to vCPU `a[3]`,
    /// vector `a[4]`), unmask it and ring its doorbell. `r[0]` interrupts that arrived.
    FireUngranted = 9,
    /// Pending-bit check on granted slot (`a[1]` kind as in Alloc, `a[2]` index) of device
    /// `a[0]`: mask, ring `a[3]` times, wait, unmask, wait, ring once more, wait.
    /// `r[0]` arrived while masked, `r[1]` arrived at unmask, `r[2]` arrived after the
    /// last ring, `r[3]` the PBA bit (MSI-X) read while masked and pending.
    Pending = 10,
    /// Benchmark: `a[1]` vectors of kind `a[2]` of device `a[0]` through pvirq (one ALLOC,
    /// then program and unmask each), timed with the TSC and left held (the VMM resets the
    /// device afterwards). `r[0..2]` TSC cycles (lo, hi), `r[2]` vectors granted.
    BenchPvirqBringup = 11,
    /// Benchmark: `a[1]` MSI-X vectors of device `a[0]` the way a guest without pvirq
    /// does it: write each entry's message (compatibility format, vector `0x40 + i % 64`,
    /// vCPU 0) and unmask, through the trapped table. `r[0..2]` cycles. With `a[2]` = 1,
    /// only disables MSI-X (the clean-up, kept out of the measured command).
    BenchTrappedBringup = 12,
    /// Benchmark: `a[0]` rounds of (ALLOC one vector of kind `a[2]` of device `a[1]`, FREE
    /// it); `a[3]` = 1 asks the device not to interrupt for completions meanwhile.
    /// `r[0..2]` total cycles of the ALLOCs, `r[2..4]` of the FREEs.
    BenchAllocRoundTrip = 13,
    /// Benchmark: `a[0]` writes to the null MMIO register. `r[0..2]` total cycles.
    BenchBareExit = 14,
    /// Benchmark: `a[0]` rounds of ringing device `a[1]`'s doorbell for slot `a[2]`
    /// (kind `a[3]`) — or, when `a[4]` = 1, its PLAIN register — and spinning until the
    /// handler on vCPU 0 has counted it. `r[0..2]` total cycles doorbell → handler entry,
    /// `r[2..4]` total cycles doorbell → counted at CPL 3, `r[4]` rounds that timed out.
    BenchFire = 15,
    /// Stop: the guest writes the stop port.
    Shutdown = 16,
}

impl Op {
    /// The op for a word, if any.
    pub fn from_word(word: u32) -> Option<Op> {
        use Op::*;
        [
            Boot,
            Init,
            Query,
            Alloc,
            Free,
            Retarget,
            ResetDevice,
            ResetVirtio,
            Fire,
            FireUngranted,
            Pending,
            BenchPvirqBringup,
            BenchTrappedBringup,
            BenchAllocRoundTrip,
            BenchBareExit,
            BenchFire,
            Shutdown,
        ]
        .into_iter()
        .find(|op| *op as u32 == word)
    }
}

/// How a command went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Done; the results are valid.
    Ok = 0,
    /// The device refused: `r[RESULT_WORDS - 3..]` hold (status, detail, info) on the wire.
    Refused = 1,
    /// The driver failed otherwise (a `pvirq_guest::Error` that is no refusal); the last
    /// result word holds [`DriverError`].
    DriverError = 2,
    /// The command is malformed or names something the guest does not have.
    BadCommand = 3,
    /// The channel is not up (no `Init` yet, or it failed).
    NotReady = 4,
}

impl Status {
    /// The status for a word, if any.
    pub fn from_word(word: u32) -> Option<Status> {
        use Status::*;
        [Ok, Refused, DriverError, BadCommand, NotReady]
            .into_iter()
            .find(|s| *s as u32 == word)
    }
}

/// Result word holding the refusal's wire status when [`Status::Refused`].
pub const REFUSAL_STATUS: usize = RESULTS + RESULT_WORDS - 3;
/// Result word holding the refusal's wire detail.
pub const REFUSAL_DETAIL: usize = RESULTS + RESULT_WORDS - 2;
/// Result word holding the refusal's wire info.
pub const REFUSAL_INFO: usize = RESULTS + RESULT_WORDS - 1;
/// Result word holding a [`DriverError`] code when [`Status::DriverError`].
pub const DRIVER_ERROR: usize = RESULTS + RESULT_WORDS - 1;

/// Which `pvirq_guest::Error` the driver met, when it was no refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum DriverError {
    /// Any error not listed.
    Other = 0,
    /// The device broke the protocol.
    DeviceFault = 1,
    /// The driver ran out of DMA memory.
    DmaAlloc = 2,
    /// A blocking call timed out.
    Timeout = 3,
    /// The device refused initialisation (features, version, queue).
    Init = 4,
    /// The guest's own bookkeeping is full (too many slots or devices).
    GuestFull = 5,
}

impl DriverError {
    /// The code for a word (unknown words read as [`DriverError::Other`]).
    pub fn from_word(word: u32) -> DriverError {
        use DriverError::*;
        [DeviceFault, DmaAlloc, Timeout, Init, GuestFull]
            .into_iter()
            .find(|e| *e as u32 == word)
            .unwrap_or(Other)
    }
}

// The regions must not overlap and must fit the mailbox page.
const _: () = {
    assert!(RESULTS + RESULT_WORDS <= IN_LIST);
    assert!(IN_LIST + LIST_WORDS <= OUT_LIST);
    assert!(OUT_LIST + LIST_WORDS <= WORDS);
    assert!(WORDS * 4 == crate::layout::MAILBOX_SIZE as usize);
};

/// A `u64` result split over two words (low first).
pub const fn split(value: u64) -> (u32, u32) {
    (value as u32, (value >> 32) as u32)
}

/// The `u64` of two result words (low first).
pub const fn join(lo: u32, hi: u32) -> u64 {
    lo as u64 | (hi as u64) << 32
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn every_op_and_status_round_trips_through_its_word() {
        for w in 0..=16 {
            assert_eq!(Op::from_word(w).map(|op| op as u32), Some(w));
        }
        assert_eq!(Op::from_word(17), None);
        for w in 0..=4 {
            assert_eq!(Status::from_word(w).map(|s| s as u32), Some(w));
        }
        assert_eq!(Status::from_word(5), None);
        assert_eq!(DriverError::from_word(3), DriverError::Timeout);
        assert_eq!(DriverError::from_word(99), DriverError::Other);
    }

    #[test]
    fn a_u64_survives_two_result_words() {
        let (lo, hi) = split(0x1234_5678_9ABC_DEF0);
        assert_eq!((lo, hi), (0x9ABC_DEF0, 0x1234_5678));
        assert_eq!(join(lo, hi), 0x1234_5678_9ABC_DEF0);
    }
}
