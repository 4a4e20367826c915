//! The in-guest checks: `VfioBackend` through the `InterruptBackend` trait on the real
//! kernel. Each check records what it saw in the [`LabReport`]; the host test judges.

use crate::eventfd_wait::fired;
use crate::nvme::{Nvme, NvmeError};
use crate::procfs::{lines, vfio_msix_lines};
use crate::report::{
    BackendCost, Batch, Delivery, FaultCase, FreeRegrant, LabReport, OneByOne, Refusal,
};
use pvirq_host::backend::{BackendError, EnableRequest, Enabled, InterruptBackend, VectorSetup};
use pvirq_host::vfio::{
    FailNth, IommuKind, OpenedDevice, VfioBackend, VfioDeviceIrqs, open_device,
};
use pvirq_proto::Kind;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// The backend as the checks use it: on the real device, behind a failure injector.
pub type LabBackend = VfioBackend<FailNth<VfioDeviceIrqs>>;

/// Eventfds by index, made on first use: the triggers the routes would give.
pub struct Triggers(Vec<Option<Arc<EventFd>>>);

impl Triggers {
    /// Room for `n` indices.
    pub fn new(n: u32) -> Self {
        Triggers(vec![None; n as usize + 1])
    }

    /// The trigger of `index`.
    pub fn get(&mut self, index: u32) -> Arc<EventFd> {
        let slot = &mut self.0[index as usize];
        slot.get_or_insert_with(|| Arc::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")))
            .clone()
    }

    /// Replaces the trigger of `index` with a new eventfd.
    pub fn renew(&mut self, index: u32) -> Arc<EventFd> {
        self.0[index as usize] = None;
        self.get(index)
    }
}

/// Asks the backend for `indices` of MSI-X with at least `min`.
pub fn grant(
    b: &mut LabBackend,
    t: &mut Triggers,
    indices: &[u32],
    min: usize,
) -> Result<Vec<Enabled>, BackendError> {
    let vectors: Vec<VectorSetup> = indices
        .iter()
        .map(|&index| VectorSetup {
            index,
            trigger: t.get(index),
            dest: None,
            previous: None,
        })
        .collect();
    let request = EnableRequest {
        kind: Kind::MsiX,
        vectors: &vectors,
        min,
        pasid: None,
        allow_posted: false,
    };
    let mut out = Vec::new();
    b.enable(&request, &mut out).map(|()| out)
}

fn free_all(b: &mut LabBackend) {
    let all = b.enabled(Kind::MsiX);
    b.disable(Kind::MsiX, &all);
}

/// Runs every check on the device at `bdf`; never panics on a kernel answer.
pub fn run(bdf: &str) -> LabReport {
    let mut report = LabReport {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get() as u32),
        ..LabReport::default()
    };
    let sysfs = Path::new("/sys/bus/pci/devices").join(bdf);
    let opened = match open_device(&sysfs) {
        Ok(o) => o,
        Err(e) => {
            report.setup_error = Some(format!("{e}: {:?}", std::error::Error::source(&e)));
            return report;
        }
    };
    let iommu = IommuKind::detect(&sysfs);
    let mut b = VfioBackend::new(
        FailNth::new(VfioDeviceIrqs::new(opened.device.clone())),
        iommu,
    );
    report.iommu = format!("{iommu:?}");
    report.table_size = b.table_size(Kind::MsiX);
    report.dynamic_msix = b.dynamic_msix();
    let mut t = Triggers::new(report.table_size);

    report.one_by_one = one_by_one(&mut b, &mut t);
    report.free_regrant = free_regrant(&mut b, &mut t, report.one_by_one.granted);
    free_all(&mut b);
    report.batch = batch(&mut b, &mut t, report.one_by_one.granted);
    free_all(&mut b);
    report.faults = faults(&mut b, &mut t);
    free_all(&mut b);
    match delivery(&mut b, &mut t, &opened) {
        Ok(d) => report.delivery = d,
        Err(e) => report.setup_error = Some(format!("nvme: {e}")),
    }
    free_all(&mut b);
    report.backend_cost = backend_cost(&mut b, &mut t, &opened);
    free_all(&mut b);
    report.disable_failures = b.disable_failures();
    // The phase-1 backend goes (its Drop disables everything); the full path gets its own.
    drop(b);
    match crate::pvirq_path::run(&opened, &sysfs) {
        Ok((path, cost)) => {
            report.pvirq_path = path;
            report.cost = cost;
        }
        Err(e) => report.setup_error = Some(format!("pvirq path: {e}")),
    }
    match crate::path_faults::run(&opened, &sysfs) {
        Ok(walk) => report.path_faults = walk,
        Err(e) => report.setup_error = Some(format!("path faults: {e}")),
    }
    report.lines_at_exit = lines();
    report
}

fn one_by_one(b: &mut LabBackend, t: &mut Triggers) -> OneByOne {
    let mut r = OneByOne::default();
    let table = b.table_size(Kind::MsiX);
    let t0 = Instant::now();
    let mut refused_at = None;
    for index in 0..table {
        match grant(b, t, &[index], 1) {
            Ok(_) => r.granted += 1,
            Err(e) => {
                r.refusal = Some(Refusal::from(&e));
                refused_at = Some(index);
                break;
            }
        }
    }
    r.mean_us = t0.elapsed().as_secs_f64() * 1e6 / f64::from(r.granted.max(1));
    let (all, remapped) = vfio_msix_lines();
    r.lines_after_refusal = all;
    r.remapped_lines = remapped;
    if let Some(index) = refused_at {
        r.retry_refused = grant(b, t, &[index], 1).is_err();
        r.lines_after_retry = lines();
    }
    r
}

fn free_regrant(b: &mut LabBackend, t: &mut Triggers, granted: u32) -> FreeRegrant {
    let mut r = FreeRegrant::default();
    if granted < 40 {
        return r;
    }
    let first = granted / 2;
    let freed: Vec<u32> = (first..first + 10).collect();
    b.disable(Kind::MsiX, &freed);
    r.freed = 10;
    r.lines_after_free = lines();
    for &i in &freed {
        if grant(b, t, &[i], 1).is_ok() {
            r.regranted += 1;
        }
    }
    // Free index 3, then the index the kernel refused before gets in.
    b.disable(Kind::MsiX, &[3]);
    r.refused_index_granted = grant(b, t, &[granted], 1).is_ok();
    r.lines_at_end = lines();
    r
}

fn batch(b: &mut LabBackend, t: &mut Triggers, granted: u32) -> Batch {
    let table = b.table_size(Kind::MsiX);
    let asked = (granted + granted / 2).clamp(1, table);
    let indices: Vec<u32> = (0..asked).collect();
    let mut r = Batch {
        asked,
        ..Batch::default()
    };
    b.host_mut().disarm();
    if let Ok(out) = grant(b, t, &indices, 1) {
        r.granted = out.len() as u32;
    }
    r.calls = b.host().calls();
    r.lines = lines();
    free_all(b);
    b.host_mut().disarm();
    if let Err(e) = grant(b, t, &indices, asked as usize) {
        r.below_min = Some(Refusal::from(&e));
    }
    r.below_min_calls = b.host().calls();
    r.lines_after_below_min = lines();
    r
}

fn faults(b: &mut LabBackend, t: &mut Triggers) -> Vec<FaultCase> {
    // Four vectors held by earlier grants; the request has three runs: 10-11, 20-21, 30.
    let held: Vec<u32> = (0..4).collect();
    let request = [10, 11, 20, 21, 30];
    let mut cases = Vec::new();
    for errno in [libc::EBADF, libc::ENOSPC, libc::EINVAL] {
        for nth in 1..=3 {
            free_all(b);
            b.host_mut().disarm();
            let _ = grant(b, t, &held, held.len());
            b.host_mut().arm(nth, errno);
            let outcome = grant(b, t, &request, request.len());
            b.host_mut().disarm();
            let (outcome, expected) = match outcome {
                Ok(out) => (format!("ok:{}", out.len()), held.len() + out.len()),
                Err(e) => (format!("{e}"), held.len()),
            };
            cases.push(FaultCase {
                nth,
                errno,
                outcome,
                enabled_after: b.enabled(Kind::MsiX).len() as u32,
                lines_after: lines(),
                expected: expected as u32,
            });
        }
    }
    // A shortage with min 1 keeps the prefix before the refused call.
    free_all(b);
    b.host_mut().arm(3, libc::ENOSPC);
    let outcome = grant(b, t, &request, 1);
    b.host_mut().disarm();
    let n = outcome.as_ref().map_or(0, Vec::len);
    cases.push(FaultCase {
        nth: 3,
        errno: libc::ENOSPC,
        outcome: outcome.map_or_else(|e| format!("{e}"), |o| format!("ok:{}", o.len())),
        enabled_after: b.enabled(Kind::MsiX).len() as u32,
        lines_after: lines(),
        expected: n as u32,
    });
    cases
}

/// Makes the controller raise vector 0 (admin queue) and vector 300 (an I/O queue).
fn delivery(
    b: &mut LabBackend,
    t: &mut Triggers,
    opened: &OpenedDevice,
) -> Result<Delivery, NvmeError> {
    let mut d = Delivery {
        io_vector: 300,
        ..Delivery::default()
    };
    let k = d.io_vector;
    if grant(b, t, &[0], 1).is_err() || grant(b, t, &[k], 1).is_err() {
        return Ok(d);
    }
    // QEMU's controller binds its admin queue to vector 0 when it is enabled, and only if
    // MSI-X is on by then (nvme_init_cq): bring it up after the grants.
    let mut nvme = Nvme::new(opened.device.clone(), opened.container.clone())?;
    let nvme = &mut nvme;
    let v0 = t.get(0);
    let _ = v0.read();
    match nvme.identify() {
        Ok(model) => d.model = model,
        Err(e) => {
            d.model = format!("error: {e}");
            return Ok(d);
        }
    }
    d.admin_vector0_fired = fired(&v0, Duration::from_secs(2));
    nvme.io_queue_on(k as u16)?;
    let vk = t.get(k);
    let _ = vk.read();
    d.io_fired = nvme.flush().is_ok() && fired(&vk, Duration::from_secs(2));
    b.disable(Kind::MsiX, &[k]);
    let _ = vk.read();
    d.freed_stayed_silent = nvme.flush().is_ok() && !fired(&vk, Duration::from_millis(300));
    let renewed = t.renew(k);
    if grant(b, t, &[k], 1).is_ok() {
        // The completion raised while it was detached may be replayed on attach.
        std::thread::sleep(Duration::from_millis(50));
        let _ = renewed.read();
        d.regranted_fired = nvme.flush().is_ok() && fired(&renewed, Duration::from_secs(2));
    }
    Ok(d)
}

/// The backend alone against the bare call, same run: K vectors one `enable` each
/// against one `VFIO_DEVICE_SET_IRQS` each, alternating rounds, index 0 held throughout
/// so the table stays on. Medians of µs per vector.
fn backend_cost(b: &mut LabBackend, t: &mut Triggers, opened: &OpenedDevice) -> BackendCost {
    use pvirq_host::vfio::{DETACH, IrqHost, IrqSet};
    const ROUNDS: usize = 7;
    const K: u32 = 32;
    let mut c = BackendCost::default();
    if grant(b, t, &[0], 1).is_err() {
        return c;
    }
    let mut raw = VfioDeviceIrqs::new(opened.device.clone());
    let detach = vec![DETACH; K as usize];
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    // Interleaved vector by vector (ours at i, bare at K + i), so that the machine's
    // drift falls on both alike.
    for _ in 0..ROUNDS {
        let (mut ours_us, mut bare_us) = (0.0, 0.0);
        for i in 1..=K {
            let t0 = Instant::now();
            if grant(b, t, &[i], 1).is_err() {
                return c;
            }
            ours_us += t0.elapsed().as_secs_f64() * 1e6;
            let fd = [std::os::fd::AsRawFd::as_raw_fd(&*t.get(K + i))];
            let set = IrqSet::Signal {
                index: 2,
                start: K + i,
                fds: &fd,
            };
            let t0 = Instant::now();
            if raw.set_irqs(&set).is_err() {
                return c;
            }
            bare_us += t0.elapsed().as_secs_f64() * 1e6;
        }
        ours.push(ours_us / f64::from(K));
        bare.push(bare_us / f64::from(K));
        b.disable(Kind::MsiX, &(1..=K).collect::<Vec<_>>());
        let _ = raw.set_irqs(&IrqSet::Signal {
            index: 2,
            start: K + 1,
            fds: &detach,
        });
    }
    ours.sort_by(f64::total_cmp);
    bare.sort_by(f64::total_cmp);
    c.backend_single_us = ours[ROUNDS / 2];
    c.bare_single_us = bare[ROUNDS / 2];
    c.ratio = c.backend_single_us / c.bare_single_us;
    c
}
