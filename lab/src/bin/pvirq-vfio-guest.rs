//! Runs inside the lab guest: the VFIO backend's checks on the NVMe controller at the
//! PCI address given, then one report line on the console. Exit status 0 when the
//! checks ran (the host test judges what they found), 2 on bad usage.

use pvirq_vfio_lab::checks;
use pvirq_vfio_lab::report::REPORT_PREFIX;

fn main() {
    let Some(bdf) = std::env::args().nth(1) else {
        eprintln!("usage: pvirq-vfio-guest BDF");
        std::process::exit(2);
    };
    // One eventfd per vector, up to the table: raise the fd limit.
    let limit = libc::rlimit {
        rlim_cur: 1 << 16,
        rlim_max: 1 << 16,
    };
    // SAFETY: plain syscall on a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    let report = checks::run(&bdf);
    match serde_json::to_string(&report) {
        Ok(json) => println!("{REPORT_PREFIX}{json}"),
        Err(e) => println!("{REPORT_PREFIX}{{\"setup_error\":\"{e}\"}}"),
    }
}
