//! The device poller: while any pass-through slot holds a pending interrupt, re-reads the
//! slot storage the VMM does not trap (untrapped MSI-X tables, IMS slots in RAM) and sends
//! what was unmasked, as a device reading its own slots would.

use super::bar_slots::BarSlots;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often pending slots are re-read.
const BUSY: Duration = Duration::from_micros(100);
/// How often the poller looks for pending slots when there are none.
const IDLE: Duration = Duration::from_millis(2);

/// The poller thread; stops when dropped.
#[derive(Debug)]
pub struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Starts polling the devices plugged into `bars` (those plugged later too).
    pub fn start(bars: Arc<BarSlots>) -> std::io::Result<Poller> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name(String::from("device-poller"))
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let mut busy = false;
                    for bar in bars.plugged() {
                        if bar.has_pending() {
                            bar.poll_pending();
                            busy = true;
                        }
                    }
                    thread::sleep(if busy { BUSY } else { IDLE });
                }
            })?;
        Ok(Poller {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
