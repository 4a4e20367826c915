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
//! 0x400..  IN_LIST      input list (targets: vcpu, vector pairs; indices), LIST_WORDS words
//! 0x2000.. OUT_LIST     output list (grants, counters or events), LIST_WORDS words
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
/// Words per grant in an output list: index, address low, address high, data, then
/// [`grant_flags`] (delivery mode, parked, PASID valid) and the PASID.
pub const GRANT_WORDS: usize = 6;
/// The most grants one report lists, and so the most vectors one command asks for.
pub const MAX_LIST_GRANTS: usize = LIST_WORDS / GRANT_WORDS;
/// Words per event in an output list: the 32-byte event record as the device wrote it
/// (eight little-endian words), then 1 if the guest applied it to its table, else 0.
pub const EVENT_WORDS: usize = 9;
/// The most events one report lists.
pub const MAX_LIST_EVENTS: usize = LIST_WORDS / EVENT_WORDS;
/// The most indices a FREE or RETARGET by list names (as many as one ALLOC grants): its
/// input list holds the indices and, for RETARGET with targets, a (vcpu, vector) pair for
/// each after them.
pub const MAX_LIST_INDICES: usize = MAX_LIST_GRANTS;

/// Alloc `a[2]`: at any indices.
pub const INDEX_ANY: u32 = 0;
/// Alloc `a[2]`: from index `a[3]`.
pub const INDEX_AT: u32 = 1;
/// Alloc `a[2]`: any run of consecutive indices (`CONTIGUOUS`).
pub const INDEX_ANY_CONTIGUOUS: u32 = 2;
/// Alloc `a[10]`: one target per vector, in order.
pub const TARGETING_PER_VECTOR: u32 = 0;
/// Alloc `a[10]`: the granted vectors spread over the targets (`SPREAD`).
pub const TARGETING_SPREAD: u32 = 1;
/// Alloc `a[10]`: no targets, parked (`PARKED`).
pub const TARGETING_PARKED: u32 = 2;

/// Grant flags word: the delivery mode's wire value in bits 7:0.
pub const GRANT_MODE_MASK: u32 = 0xFF;
/// Grant flags word: the grant is parked.
pub const GRANT_PARKED: u32 = 1 << 8;
/// Grant flags word: the PASID word is valid.
pub const GRANT_PASID: u32 = 1 << 9;

/// The flags word of a grant in `mode` (its wire value), parked or not, with a PASID or not.
pub const fn grant_flags(mode: u8, parked: bool, pasid: bool) -> u32 {
    mode as u32 | if parked { GRANT_PARKED } else { 0 } | if pasid { GRANT_PASID } else { 0 }
}
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
    /// Bring the pvirq channel up (virtio init): the features the guest asks for, `a[0]`
    /// low and `a[1]` high (0: version 1's); with `EVENTS` the event queue is set up and
    /// its buffers made available. `r[0..4]` = num_devices, vm_quota, num_vcpus, max_batch,
    /// `r[4..6]` the negotiated features (low, high).
    Init = 1,
    /// QUERY device `a[0]`. `r[0]` granted, `r[1]` available; `r[2]` 1 when the reply had
    /// `INFO`'s extension, then `r[3]` segment, `r[4]` bus, `r[5]` devfn, `r[6]` requester
    /// ID, `r[7]` message format (wire), `r[8]` can post, `r[9]` 1 = PASID `r[10]`,
    /// `r[11]` share, `r[12]` MSI-X free run, `r[13]` IMS free run, `r[14]` parked drops.
    Query = 2,
    /// ALLOC for device `a[0]`: `a[1]` kind (0 MSI, 1 MSI-X, 2 IMS), `a[2]` index
    /// ([`INDEX_ANY`], [`INDEX_AT`] `a[3]`, [`INDEX_ANY_CONTIGUOUS`]), `a[4]` min, `a[5]`
    /// max, `a[6]` 1 = PASID `a[7]`, `a[8]` 1 = fall back as Linux does, `a[9]` number of
    /// targets in the input list, `a[10]` targeting ([`TARGETING_PER_VECTOR`],
    /// [`TARGETING_SPREAD`], [`TARGETING_PARKED`]). On success the guest programs every
    /// grant into its slot and unmasks it; a parked grant stays masked until activated.
    /// `r[0]` granted count, `r[1]` attempts, `r[2..5]` first refusal (status, detail,
    /// info; status 0 = none). Output list: `count` × [`GRANT_WORDS`].
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
    /// Ring the doorbell of every slot device `a[0]` holds with a target (parked slots stay
    /// masked and unrung; and, when `a[1]` = 1, of every slot it freed or that was revoked,
    /// with the stale message written back and unmasked), then wait until each expected
    /// interrupt arrived or the wait runs out. `r[0]` doorbells rung, `r[1]` interrupts
    /// that arrived where the guest expected them, `r[2]` interrupts at a vector the guest
    /// expected none on, `r[3]` expected interrupts that never arrived. `r[4]` entries in
    /// the output list: (APIC ID, vector, count) for every counter that moved.
    Fire = 8,
    /// Program MSI-X entry (`a[1]` = 0) or IMS slot (`a[1]` = 1) `a[2]` of device `a[0]`
    /// with a message the guest was never granted (compatibility format to APIC ID `a[3]`,
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
    /// FREE by list: device `a[0]`, kind `a[1]`, `a[2]` indices in the input list (any
    /// order, distinct). The guest masks them first (unless `a[3]` = 1, a careless guest)
    /// and sends one FREE with the list (`INDEX_LIST`), or one per run without it.
    /// `r[0]` freed, `r[1]` requests sent.
    FreeList = 17,
    /// RETARGET by list: device `a[0]`, kind `a[1]`, `a[2]` = n indices in the input list;
    /// `a[3]` 0 parks them (PARK: the guest masks them first), 1 gives them the n
    /// (vcpu, vector) pairs that follow the indices (activating parked grants, which the
    /// guest then unmasks, or moving active ones). Pairs travel with their index, in any
    /// order. `r[0]` moved.
    RetargetList = 18,
    /// Poll the event queue: the guest takes each event in order, applies a REPROGRAM to
    /// its MSI-X entry or IMS slot (mask, program, unmask, replay) and forgets a revoked
    /// vector (mask), opens a device added and drops one removed. `r[0]` events handled,
    /// `r[1]` replays (vectors that may have lost an interrupt). Output list: `r[0]` ×
    /// [`EVENT_WORDS`]; the rest waits for the next command once the list is full.
    Events = 19,
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
            FreeList,
            RetargetList,
            Events,
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

// The regions must not overlap and must fit the mailbox page; every list a command may
// carry fits its region.
const _: () = {
    assert!(RESULTS + RESULT_WORDS <= IN_LIST);
    assert!(IN_LIST + LIST_WORDS <= OUT_LIST);
    assert!(OUT_LIST + LIST_WORDS <= WORDS);
    assert!(WORDS * 4 == crate::layout::MAILBOX_SIZE as usize);
    // Alloc: targets in, grants out.
    assert!(2 * MAX_LIST_GRANTS <= LIST_WORDS);
    assert!(GRANT_WORDS * MAX_LIST_GRANTS <= LIST_WORDS);
    // Retarget by list: indices and their pairs in.
    assert!(3 * MAX_LIST_INDICES <= LIST_WORDS);
    assert!(EVENT_WORDS * MAX_LIST_EVENTS <= LIST_WORDS);
    // An event record is eight words.
    assert!(EVENT_WORDS == 32 / 4 + 1);
    // The query results stay clear of the refusal words.
    assert!(15 <= RESULT_WORDS - 3);
    // The flags word holds a mode byte below its flag bits.
    assert!(GRANT_MODE_MASK < GRANT_PARKED && GRANT_PARKED < GRANT_PASID);
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
        for w in 0..=19 {
            assert_eq!(Op::from_word(w).map(|op| op as u32), Some(w));
        }
        assert_eq!(Op::from_word(20), None);
        for w in 0..=4 {
            assert_eq!(Status::from_word(w).map(|s| s as u32), Some(w));
        }
        assert_eq!(Status::from_word(5), None);
        assert_eq!(DriverError::from_word(3), DriverError::Timeout);
        assert_eq!(DriverError::from_word(99), DriverError::Other);
    }

    #[test]
    fn grant_flags_keep_mode_parked_and_pasid_apart() {
        assert_eq!(grant_flags(1, false, false), 1);
        let f = grant_flags(0, true, true);
        assert_eq!(f & GRANT_MODE_MASK, 0);
        assert!(f & GRANT_PARKED != 0 && f & GRANT_PASID != 0);
        assert_eq!(grant_flags(1, false, true) & GRANT_PARKED, 0);
    }

    #[test]
    fn a_u64_survives_two_result_words() {
        let (lo, hi) = split(0x1234_5678_9ABC_DEF0);
        assert_eq!((lo, hi), (0x9ABC_DEF0, 0x1234_5678));
        assert_eq!(join(lo, hi), 0x1234_5678_9ABC_DEF0);
    }
}
