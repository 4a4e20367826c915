//! Waiting for an eventfd that a host interrupt signals.

use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// Whether `fd` is signalled within `wait`; consumes the signal.
pub fn fired(fd: &EventFd, wait: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        if fd.read().is_ok() {
            return true;
        }
        if t0.elapsed() > wait {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
