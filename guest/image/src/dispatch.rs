//! The command loop: reads each command from the mailbox, runs it, writes the report.

use crate::bench;
use crate::commands::{Guest, Outcome, SCRATCH};
use crate::cpu;
use crate::mailbox::Mailbox;
use crate::state::MAX_GUEST_DEVICES;
use pvirq_guest_image_abi::mailbox::{
    DRIVER_ERROR, Op, REFUSAL_DETAIL, REFUSAL_INFO, REFUSAL_STATUS, RESULTS, Status,
};

/// Runs commands until `Shutdown`.
pub fn run() -> ! {
    // SAFETY: the only reference to SCRATCH ever made.
    let scratch = unsafe { &mut *core::ptr::addr_of_mut!(SCRATCH) };
    let mut guest = Guest {
        driver: None,
        devices: [None; MAX_GUEST_DEVICES],
        features: pvirq_guest::proto::feature::V1,
        mb: Mailbox,
        scratch,
    };
    guest.mb.report(0, Status::Ok);
    loop {
        let (seq, op) = guest.mb.command();
        guest.mb.clear_results();
        let outcome = match Op::from_word(op) {
            Some(Op::Shutdown) => {
                guest.driver = None;
                guest.mb.report(seq, Status::Ok);
                loop {
                    cpu::doorbell(pvirq_guest_image_abi::layout::MAILBOX_STOP, 0);
                }
            }
            Some(op) => execute(&mut guest, op),
            None => Outcome::Bad,
        };
        let status = match outcome {
            Outcome::Ok => Status::Ok,
            Outcome::Refused(r) => {
                let (status, detail, info) = r.to_wire();
                guest.mb.result(REFUSAL_STATUS - RESULTS, u32::from(status));
                guest.mb.result(REFUSAL_DETAIL - RESULTS, u32::from(detail));
                guest.mb.result(REFUSAL_INFO - RESULTS, info);
                Status::Refused
            }
            Outcome::Driver(e) => {
                guest.mb.result(DRIVER_ERROR - RESULTS, e as u32);
                Status::DriverError
            }
            Outcome::Bad => Status::BadCommand,
            Outcome::NotReady => Status::NotReady,
        };
        guest.mb.report(seq, status);
    }
}

fn execute(guest: &mut Guest, op: Op) -> Outcome {
    match op {
        Op::Boot => Outcome::Ok,
        Op::Init => guest.init(),
        Op::Query => guest.query(),
        Op::Alloc => guest.alloc(),
        Op::Free => guest.free(),
        Op::Retarget => guest.retarget(),
        Op::ResetDevice => guest.reset_device(),
        Op::ResetVirtio => guest.reset_virtio(),
        Op::Fire => guest.fire(),
        Op::FireUngranted => guest.fire_ungranted(),
        Op::Pending => guest.pending(),
        Op::BenchPvirqBringup => bench::pvirq_bringup(guest),
        Op::BenchTrappedBringup => bench::trapped_bringup(guest),
        Op::BenchAllocRoundTrip => bench::alloc_round_trip(guest),
        Op::BenchBareExit => bench::bare_exit(guest),
        Op::BenchFire => bench::fire(guest),
        Op::FreeList => guest.free_list(),
        Op::RetargetList => guest.retarget_list(),
        Op::Events => guest.events(),
        Op::Shutdown => Outcome::Ok,
    }
}
