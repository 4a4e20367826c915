//! The VFIO backend on a real Linux 6.12 kernel with VT-d interrupt remapping, in QEMU
//! (TCG, 2 vCPUs), on an emulated NVMe controller with 2048 MSI-X vectors bound to
//! vfio-pci. Needs what `.ci/vfio-lab-setup.sh` installs; without it the test says it
//! skipped, unless `PVIRQ_REQUIRE_QEMU=1`, which makes that a failure.

use pvirq_vfio_lab::report::{LabReport, PathFaultCase, PathFaults};
use pvirq_vfio_lab::{initramfs, lab_env, qemu};
use std::path::PathBuf;
use std::time::Duration;

fn boot_lab() -> Option<LabReport> {
    let env = lab_env::find_or_skip("vfio_backend_on_a_real_vtd_kernel")?;
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vfio-lab");
    std::fs::create_dir_all(&work).expect("work dir");
    let program = PathBuf::from(env!("CARGO_BIN_EXE_pvirq-vfio-guest"));
    let initrd = initramfs::build(&env, &program, &work).expect("initramfs");
    let boot = qemu::boot(&env, &initrd, 2, Duration::from_secs(150)).expect("qemu runs");
    let log = work.join("console.log");
    std::fs::write(&log, &boot.console).expect("console log");
    eprintln!(
        "QEMU boot took {:.1} s; console in {}",
        boot.wall.as_secs_f64(),
        log.display()
    );
    assert!(
        boot.console.contains("PVIRQ-LAB-INIT 1 remapping"),
        "the guest kernel did not enable interrupt remapping; console in {}",
        log.display()
    );
    assert_eq!(
        boot.exit,
        Some(0),
        "in-guest program; console in {}",
        log.display()
    );
    let report = boot
        .report
        .unwrap_or_else(|| panic!("no report; console in {}", log.display()));
    eprintln!("{report:#?}");
    assert_eq!(report.setup_error, None);
    Some(report)
}

#[test]
fn vfio_backend_on_a_real_vtd_kernel() {
    let Some(r) = boot_lab() else { return };
    assert_eq!(r.table_size, 2048);
    assert!(
        r.dynamic_msix,
        "6.12 with an emulated NVMe has NORESIZE clear"
    );
    assert_eq!(r.iommu, "IntelVtd");

    // One vector per request until the kernel refuses: the guest's CPU vectors (about 200
    // per vCPU) run out long before the table or the 64K IRTEs.
    let o = &r.one_by_one;
    assert!(o.granted >= 100 && o.granted < r.table_size, "{o:?}");
    let refusal = o.refusal.as_ref().expect("the kernel refused");
    assert_eq!(
        (refusal.what.as_str(), refusal.resource.as_str()),
        ("exhausted", "host-vector")
    );
    assert_eq!(
        o.lines_after_refusal, o.granted,
        "nothing held of the refused request"
    );
    assert_eq!(
        o.remapped_lines, o.granted,
        "every vector through interrupt remapping"
    );
    assert!(o.retry_refused);
    assert_eq!(o.lines_after_retry, o.granted);

    let f = &r.free_regrant;
    assert_eq!(f.freed, 10);
    assert_eq!(f.lines_after_free, o.granted - 10);
    assert_eq!(f.regranted, 10);
    assert!(
        f.refused_index_granted,
        "a freed vector lets the refused index in"
    );
    assert_eq!(f.lines_at_end, o.granted);

    // One request for 1.5x what fits: the prefix that fits, in a bounded number of calls.
    let b = &r.batch;
    assert!(b.granted > 0 && b.granted < b.asked, "{b:?}");
    assert!(b.granted.abs_diff(o.granted) <= 16, "{b:?} vs {o:?}");
    assert_eq!(b.lines, b.granted);
    let bound = 1 + u64::from(b.asked.next_power_of_two().ilog2());
    assert!(b.calls <= bound, "{} calls > {bound}", b.calls);
    let below = b.below_min.as_ref().expect("min = asked is refused");
    assert_eq!(below.what, "exhausted");
    assert!(below.supplied.abs_diff(b.granted) <= 16, "{below:?}");
    assert_eq!(b.lines_after_below_min, 0, "nothing held after a refusal");

    // Every failure point of a three-run request: nothing of it stays in the kernel.
    assert_eq!(r.faults.len(), 10);
    for c in &r.faults {
        assert_eq!(c.lines_after, c.expected, "{c:?}");
        assert_eq!(c.enabled_after, c.expected, "{c:?}");
    }
    for c in r.faults.iter().take(9) {
        assert!(!c.outcome.starts_with("ok"), "min = 5 cannot be met: {c:?}");
        assert_eq!(c.expected, 4, "only the earlier grants remain: {c:?}");
    }
    let prefix = r.faults.last().expect("prefix case");
    assert_eq!(
        prefix.outcome, "ok:4",
        "runs 10-11 and 20-21 before the refused third call"
    );

    let d = &r.delivery;
    assert!(d.model.starts_with("QEMU NVMe"), "{d:?}");
    assert!(
        d.admin_vector0_fired,
        "Identify's completion on vector 0's eventfd"
    );
    assert!(
        d.io_fired,
        "a Flush completion on vector {}'s eventfd",
        d.io_vector
    );
    assert!(d.freed_stayed_silent, "a freed vector no longer signals");
    assert!(
        d.regranted_fired,
        "a re-granted vector signals its new eventfd"
    );

    assert_eq!(r.disable_failures, 0);

    // The same through the whole pvirq path: guest driver, virtqueue, device, transaction.
    let p = &r.pvirq_path;
    assert_eq!(p.granted, o.granted, "{p:?}");
    assert_eq!(
        (p.refusal_resource.as_str(), p.refusal_available),
        ("host-vector", 0)
    );
    assert_eq!(
        p.lines_after_refusal, p.granted,
        "nothing held of the refused request"
    );
    assert_eq!(p.held_after_refusal, p.granted);
    assert_eq!(p.lines_after_free, p.granted - 10);
    assert_eq!(p.regranted, 10);
    assert_eq!(p.lines_after_regrant, p.granted);
    assert_eq!(p.below_min_resource, "host-vector", "{p:?}");
    assert!(p.below_min_available.abs_diff(p.granted) <= 16, "{p:?}");
    assert_eq!(
        p.lines_after_below_min, 0,
        "a refused ALLOC leaves nothing in the kernel"
    );
    assert!(p.prefix_granted.abs_diff(p.granted) <= 16, "{p:?}");
    assert_eq!(p.lines_after_prefix, p.prefix_granted);
    assert!(p.tokens_name_indices);
    assert!(
        p.admin_route_fired,
        "vector 0's completion on its route's eventfd"
    );
    assert!(
        p.route_fired,
        "vector 300's completion on its route's eventfd"
    );
    assert_eq!(
        p.lines_after_reset, 0,
        "RESET releases everything in the kernel"
    );
    assert!(p.errors.is_empty(), "full path: {:?}", p.errors);

    path_faults(&r.path_faults);
    assert_eq!(r.lines_at_exit, 0);

    let bc = &r.backend_cost;
    assert!(
        bc.backend_single_us > 0.0 && bc.bare_single_us > 0.0,
        "{bc:?}"
    );
    eprintln!(
        "backend alone (TCG guest, same run): one enable {:.0} us vs bare SET_IRQS {:.0} us = {:.2}x",
        bc.backend_single_us, bc.bare_single_us, bc.ratio
    );
    let c = &r.cost;
    assert!(c.bare_single_us > 0.0 && c.pvirq_single_us > 0.0, "{c:?}");
    eprintln!(
        "cost per vector (TCG guest, same run): one ALLOC each {:.0} us vs bare SET_IRQS {:.0} us = {:.2}x; \
         one ALLOC of {} {:.0} us vs one SET_IRQS of {} {:.0} us = {:.2}x",
        c.pvirq_single_us,
        c.bare_single_us,
        c.single_ratio,
        c.vectors,
        c.pvirq_batch_us,
        c.vectors,
        c.bare_batch_us,
        c.batch_ratio
    );
}

/// What the guest must be told when `c`'s point fails.
fn expected_outcome(c: &PathFaultCase) -> String {
    match (c.point.as_str(), c.fault.as_str()) {
        // A route the ALLOC could not add: a shortage names the routes staged before it.
        ("route-add", "exhausted") => format!("no-space guest-route {}", c.nth - 1),
        ("route-add" | "route-remove" | "route-commit", _) => "device-error guest-route".into(),
        // errno.rs: ENOSPC is the CPU vectors running out on VT-d; EBADF names the
        // route's eventfd; EINVAL the device's table.
        ("enable", "ENOSPC") => "no-space host-vector".into(),
        ("enable", "EBADF") => "device-error guest-route".into(),
        ("enable", "EINVAL") => "device-error device-slots".into(),
        ("reply-write", _) => "no-reply".into(),
        other => panic!("unknown failure point {other:?}"),
    }
}

/// Every failure point of the full path, on the real kernel: nothing held after any of
/// them, and the request then goes through.
fn path_faults(w: &PathFaults) {
    assert!(w.errors.is_empty(), "path faults: {:?}", w.errors);
    assert_eq!(w.base, [0, 1, 2, 3, 6, 9]);
    assert_eq!(
        w.alloc_calls, 3,
        "one VFIO_DEVICE_SET_IRQS per run: 4-5, 7-8, 10"
    );
    for c in &w.cases {
        let b = &c.before;
        // The state each case starts from is the base, and the probes see it: VFIO holds
        // a trigger for exactly the grants' routes, each with its IRQ handler.
        assert_eq!(b.indices(), w.base, "{c:?}");
        assert_eq!((b.lines, b.fire_errno, b.held), (6, 0, 6), "{c:?}");
        assert_eq!(b.attached, b.routes(), "{c:?}");
        assert_eq!(b.backend_enabled, w.base, "{c:?}");
        let expected = expected_outcome(c);
        assert!(
            c.outcome.starts_with(&expected),
            "{} {} #{} {}: got {:?}, expected {expected:?}",
            c.request,
            c.point,
            c.nth,
            c.fault,
            c.outcome
        );
        // Nothing held that was not before: the kernel's handlers and triggers, the
        // backend, the VM's quota and grants (same routes, same messages).
        assert_eq!(&c.after, b, "{c:?}");
        let (ok, held) = match c.request.as_str() {
            "alloc" => ("ok:5", 11),
            _ => ("ok:2", 4),
        };
        assert_eq!(c.retry, ok, "retry without the fault: {c:?}");
        // The same probes see the retry's vectors come and go in the kernel.
        let t = &c.retried;
        assert_eq!(
            (t.lines, t.held, t.grants.len()),
            (held, held, held as usize),
            "{c:?}"
        );
        assert_eq!(t.attached, t.routes(), "{c:?}");
        assert_eq!(t.backend_enabled, t.indices(), "{c:?}");
        let r = &c.restored;
        assert_eq!(
            (r.indices(), r.lines, r.held, &r.backend_enabled),
            (b.indices(), b.lines, b.held, &b.backend_enabled),
            "{c:?}"
        );
        assert_eq!(r.attached, r.routes(), "{c:?}");
    }
    let count = |request: &str, point: &str| {
        w.cases
            .iter()
            .filter(|c| c.request == request && c.point == point)
            .count()
    };
    // Both fault kinds at each route call: 5 adds (or 2 removals) and the commit.
    assert_eq!(count("alloc", "route-add"), 10);
    assert_eq!(count("alloc", "route-commit"), 2);
    assert_eq!(count("free", "route-remove"), 4);
    assert_eq!(count("free", "route-commit"), 2);
    // Three errnos at each of the three calls.
    assert_eq!(count("alloc", "enable"), 9);
    // Every 8-byte write of the reply: ALLOC's is a 24-byte header and 5 grants of 16
    // bytes (104 bytes, 13 writes), FREE's the header alone (3 writes).
    assert_eq!(count("alloc", "reply-write"), 13);
    assert_eq!(count("free", "reply-write"), 3);
}
