//! The VFIO backend on a real Linux 6.12 kernel with VT-d interrupt remapping, in QEMU
//! (TCG, 2 vCPUs), on an emulated NVMe controller with 2048 MSI-X vectors bound to
//! vfio-pci. Needs what `.ci/vfio-lab-setup.sh` installs; without it the test says it
//! skipped, unless `PVIRQ_REQUIRE_QEMU=1`, which makes that a failure.

use pvirq_vfio_lab::report::LabReport;
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
