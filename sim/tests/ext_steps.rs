//! Each new step kind on a small scenario, run in-process: what the guest reported and what
//! the report shows, checked here independently of the scenarios' own expectations.

mod common;

use common::{EXT, assert_passed, run_text, step, with_steps};

#[test]
fn targets_name_apic_ids_and_a_spread_lands_where_the_report_says() {
    let report = run_text(&with_steps(
        r#"
[[step]]
op = "alloc"
vm = "x"
device = "nic"
kind = "msix"
count = "1..8"
targeting = "spread"
expect = { status = "ok", granted = 6, grant_vcpus = [0, 0, 0, 1, 1, 1], mode = "remapped", parked = false }

[[step]]
op = "fire"
vm = "x"
device = "nic"
expect = { delivered = 6, blocked = 0 }

[[step]]
op = "alloc"
vm = "x"
device = "amd"
kind = "msix"
count = 1
targets = [{ apic_id = 2, vector = 0x40 }]
expect = { status = "invalid-target" }
"#,
    ));
    assert_passed(&report);
    let spread = step(&report, 1);
    // The share (6) bounds the grant; spread over the two vCPUs, named by APIC ID 1 and 3.
    let apic: Vec<Option<u32>> = spread.grants.iter().map(|g| g.apic_id).collect();
    assert_eq!(apic, [Some(1), Some(1), Some(1), Some(3), Some(3), Some(3)]);
    assert!(spread.request.contains("spread/2"), "{}", spread.request);
    let fire = step(&report, 2).fire.unwrap();
    assert_eq!((fire.fired, fire.misrouted), (6, 0));
    assert_eq!(
        step(&report, 3).refusal.as_ref().unwrap().status,
        "invalid-target"
    );
    let x = &report.vms[0];
    assert_eq!(x.apic_ids.as_deref(), Some(&[1, 3][..]));
    assert_eq!(
        x.features,
        [
            "apic-id",
            "info",
            "parked",
            "events",
            "spread",
            "contiguous",
            "index-list"
        ]
    );
    assert!(report.vms[1].features.is_empty(), "a version-1 driver");
}

#[test]
fn parked_grants_send_nothing_until_activated_and_nothing_once_parked_again() {
    let report = run_text(&with_steps(
        r#"
[[step]]
op = "alloc"
vm = "x"
device = "nic"
kind = "msix"
count = 3
targeting = "parked"
expect = { status = "ok", granted = 3, parked = true }

[[step]]
op = "fire"
vm = "x"
device = "nic"
expect = { delivered = 0, blocked = 0 }

[[step]]
op = "activate"
vm = "x"
device = "nic"
kind = "msix"
indices = [0, 1, 2]
vector = 0x50
expect = { status = "ok", granted = 3 }

[[step]]
op = "fire"
vm = "x"
device = "nic"
expect = { delivered = 3, blocked = 0 }

[[step]]
op = "park"
vm = "x"
device = "nic"
kind = "msix"
first = 1
expect = { status = "ok", granted = 1 }

[[step]]
op = "fire"
vm = "x"
device = "nic"
expect = { delivered = 2, blocked = 0 }
"#,
    ));
    assert_passed(&report);
    assert!(
        step(&report, 1)
            .grants
            .iter()
            .all(|g| g.parked && g.vcpu.is_none())
    );
    // A masked slot writes nothing at all: not fired, not blocked.
    assert_eq!(step(&report, 2).fire.unwrap().fired, 0);
    assert_eq!(step(&report, 3).answer, "activated 3");
    assert_eq!(step(&report, 5).request, "park msix 1");
    assert_eq!(report.fire_totals.misrouted, 0);
    assert_eq!(report.host_faults, 0);
}

#[test]
fn a_fragmented_table_refuses_any_contiguous_until_a_free_by_list_joins_a_run() {
    let report = run_text(&with_steps(
        r#"
[[step]]
op = "alloc"
vm = "x"
device = "amd"
kind = "msix"
count = 4
expect = { status = "ok", granted = 4 }

[[step]]
op = "free"
vm = "x"
device = "amd"
kind = "msix"
indices = [0, 2]
expect = { status = "ok", granted = 2 }

[[step]]
op = "alloc"
vm = "x"
device = "amd"
kind = "msix"
index = "any-contiguous"
count = 2
expect = { status = "no-space", resource = "slots-fragmented", available = 1 }

[[step]]
op = "query"
vm = "x"
device = "amd"
expect = { granted = 2, msix_free_run = 1, format = "amd-remapped" }

[[step]]
op = "free"
vm = "x"
device = "amd"
kind = "msix"
indices = [1]
expect = { status = "ok", granted = 1 }

[[step]]
op = "alloc"
vm = "x"
device = "amd"
kind = "msix"
index = "any-contiguous"
count = 2
expect = { status = "ok", granted = 2 }

[[step]]
op = "fire"
vm = "x"
device = "amd"
include_freed = true
"#,
    ));
    assert_passed(&report);
    assert_eq!(step(&report, 2).request, "free msix list 0,2");
    assert_eq!(step(&report, 6).answer, "granted 2 @0-1");
    let q = step(&report, 4).query.as_ref().unwrap();
    assert_eq!((q.bdf.as_str(), q.requester_id), ("0000:00:04.0", 0x0020));
    // Re-granted messages are not stale: only index 2's old message was, and it is granted
    // again too (an AMD message is its table index), so every write lands.
    let fire = step(&report, 7).fire.unwrap();
    assert_eq!(fire.delivered + fire.blocked, fire.fired);
}

#[test]
fn the_vmm_changes_reach_the_guest_as_events_in_order() {
    let report = run_text(&with_steps(
        r#"
[[step]]
op = "set_quota"
vm = "x"
quota = 20
expect = { vm_quota = 20 }

[[step]]
op = "set_share"
vm = "x"
device = "nic"
share = 2

[[step]]
op = "add_device"
vm = "x"
device = "wq"

[[step]]
op = "events"
vm = "x"
expect = { events = ["limits", "limits", "device-added"], applied = 0 }

[[step]]
op = "query"
vm = "x"
device = "wq"
expect = { bdf = "0000:00:06.0", interface_pasid = 9, share = 20, ims_free_run = 0 }

[[step]]
op = "alloc"
vm = "x"
device = "wq"
note = "IMS was not offered when the driver negotiated (no device had it): not usable"
kind = "ims"
count = 2
pasid = 9
expect = { status = "unsupported" }


[[step]]
op = "alloc"
vm = "x"
device = "nic"
kind = "msix"
count = 4
expect = { status = "no-space", resource = "device-share", available = 2 }

[[step]]
op = "remove_device"
vm = "x"
device = "wq"
expect = { granted = 0, vm_held = 0 }

[[step]]
op = "events"
vm = "x"
expect = { events = ["device-removed"] }

[[step]]
op = "alloc"
vm = "x"
device = "wq"
kind = "ims"
count = 1
expect = { status = "no-device" }

[[step]]
op = "set_quota"
vm = "old"
quota = 2
expect = { vm_quota = 4 }

[[step]]
op = "reset_vm"
vm = "old"
expect = { vm_quota = 2 }
"#,
    ));
    assert_passed(&report);
    let texts: Vec<&str> = step(&report, 4)
        .events
        .iter()
        .map(|e| e.text.as_str())
        .collect();
    assert_eq!(texts, ["VM quota 20", "nic share 2", "wq (handle 2)"]);
    let seq: Vec<u32> = step(&report, 4).events.iter().map(|e| e.sequence).collect();
    assert_eq!(seq, [1, 2, 3]);
    assert_eq!(step(&report, 9).events[0].sequence, 4, "numbered on");
    assert_eq!(step(&report, 11).answer, "staged: quota 4 until a reset");
    assert_eq!(step(&report, 3).answer, "handle 2");
}

#[test]
fn a_guest_that_fell_back_hears_available_when_another_tenant_frees_and_retries() {
    let report = run_text(
        r#"
[host]
irtes_per_unit = 64
cpus = 1
end_vector = 0x30              # 16 host vectors

[[vm]]
name = "a"
vcpus = 1
quota = 16
features = ["info", "events"]
[[vm.device]]
name = "nic"
requester_id = 0x10
msix = 16

[[vm]]
name = "b"
vcpus = 1
quota = 8
[[vm.device]]
name = "disk"
requester_id = 0x20
msix = 8

[[step]]
op = "alloc"
vm = "b"
device = "disk"
kind = "msix"
count = 8

[[step]]
op = "alloc"
vm = "a"
device = "nic"
kind = "msix"
count = 12
fallback = "linux"
expect = { status = "ok", fallback = true, resource = "host-vector", available = 8, granted = 8 }

[[step]]
op = "alloc"
vm = "a"
device = "nic"
kind = "msix"
count = 4
vector = 0x50
expect = { status = "no-space", available = 0 }

[[step]]
op = "events"
vm = "a"
expect = { events = [] }

[[step]]
op = "reset"
vm = "b"
device = "disk"

[[step]]
op = "events"
vm = "a"
note = "nobody told the device yet"
expect = { events = [] }

[[step]]
op = "resources_changed"
vm = "a"

[[step]]
op = "events"
vm = "a"
expect = { events = ["available"] }

[[step]]
op = "alloc"
vm = "a"
device = "nic"
kind = "msix"
count = 4
vector = 0x50
expect = { status = "ok", granted = 4 }
"#,
    );
    assert_passed(&report);
    assert_eq!(step(&report, 8).events[0].text, "nic could get 8");
}

/// Two devices on the source: the NIC behind VT-d unit 0 (entries 0..), the other behind
/// its own AMD table. On `b`, a tenant holds unit 0's entries 0 and 1, and unit 0 has 8.
const MIGRATION: &str = r#"
[[step]]
op = "alloc"
vm = "x"
device = "nic"
kind = "msix"
count = 6

[[step]]
op = "alloc"
vm = "x"
device = "amd"
kind = "msix"
count = 2
vector = 0x60

[[step]]
op = "alloc"
vm = "old"
device = "disk"
kind = "msix"
count = 2

[[step]]
op = "migrate"
vm = "x"
to = "b"
expect = { migrated = true, kept = 2, reprogrammed = 6, revoked = 0 }
"#;

#[test]
fn a_migration_keeps_reprograms_and_the_guest_reprograms_its_table_from_the_events() {
    let text = with_steps(&format!(
        "{MIGRATION}{}",
        r#"
[[step]]
op = "fire"
vm = "x"
device = "nic"
note = "before the guest reads its events, its table holds the source's messages"

[[step]]
op = "events"
vm = "x"
expect = { applied = 6 }

[[step]]
op = "fire"
vm = "x"
device = "nic"
expect = { delivered = 6, blocked = 0 }

[[step]]
op = "fire"
vm = "x"
device = "amd"
expect = { delivered = 2, blocked = 0 }
"#
    ));
    let report = run_text(&text);
    assert_passed(&report);
    let migrate = step(&report, 4);
    let m = migrate.migration.as_ref().unwrap();
    assert_eq!(m.to, "b");
    assert_eq!(m.source_released, 8);
    assert_eq!(migrate.host_name, "b");
    assert!(
        m.fates
            .iter()
            .filter(|f| f.device == "amd")
            .all(|f| f.fate == "kept")
    );
    // The source kept only the other VM's grants once the destination ran.
    assert_eq!(report.final_host.irtes_used, [2, 0]);
    assert_eq!(report.final_host.vectors_used, 2);
    // Before the events, the table's old messages do not reach their targets.
    let stale = step(&report, 5).fire.unwrap();
    assert!(stale.blocked + stale.misrouted > 0, "{stale:?}");
    let events = &step(&report, 6).events;
    assert_eq!(events.len(), 6);
    assert!(events.iter().all(|e| e.kind == "reprogram" && e.applied));
    assert_eq!(report.vms[0].host, "b");
    assert_eq!(report.destinations[0].tenant_vectors, 2);
    assert_eq!(report.destinations[0].final_host.irtes_used, [8, 0]);
}

#[test]
fn a_destination_too_small_revokes_and_the_guest_forgets_the_revoked_vectors() {
    let text = with_steps(&format!(
        "{}{}",
        MIGRATION.replace(
            "kept = 2, reprogrammed = 6, revoked = 0",
            "kept = 2, reprogrammed = 4, revoked = 2"
        ),
        r#"
[[step]]
op = "events"
vm = "x"
expect = { events = ["reprogram", "reprogram", "reprogram", "reprogram", "revoke", "revoke"], applied = 6 }

[[step]]
op = "fire"
vm = "x"
device = "nic"
expect = { delivered = 4, blocked = 0 }
"#
    ))
    .replacen("tenants = [{ unit = 0, vectors = 2 }]", "tenants = [{ unit = 0, vectors = 4 }]", 1);
    let report = run_text(&text);
    assert_passed(&report);
    let m = step(&report, 4).migration.as_ref().unwrap();
    let revoked: Vec<(u32, Option<&str>)> = m
        .fates
        .iter()
        .filter(|f| f.fate == "revoked")
        .map(|f| (f.index, f.reason.as_deref()))
        .collect();
    assert_eq!(revoked, [(4, Some("irte")), (5, Some("irte"))]);
    assert_eq!(step(&report, 4).vm_held, 6);
}

#[test]
fn a_version_1_driver_cannot_be_told_so_the_destination_refuses_and_the_vm_stays() {
    let text = with_steps(
        r#"
[[step]]
op = "alloc"
vm = "old"
device = "disk"
kind = "msix"
count = 2

[[step]]
op = "migrate"
vm = "old"
to = "b"
expect = { migrated = false, vm_held = 2 }

[[step]]
op = "fire"
vm = "old"
device = "disk"
expect = { delivered = 2, blocked = 0 }
"#,
    );
    let report = run_text(&text);
    assert_passed(&report);
    let m = step(&report, 2).migration.as_ref().unwrap();
    assert!(
        m.refused.as_deref().unwrap().contains("cannot be told"),
        "{m:?}"
    );
    assert_eq!(step(&report, 2).host_name, "host");
    assert_eq!(report.vms[1].host, "host");
    // Nothing is held on the destination but its tenant's.
    assert_eq!(
        report.destinations[0].final_host,
        report.destinations[0].initial
    );
}

#[test]
fn the_extended_scenario_text_parses_unchanged() {
    // The shared base runs with no steps at all.
    let report = run_text(EXT);
    assert!(report.steps.is_empty());
    assert_eq!(report.destinations.len(), 1);
    assert_eq!(report.destinations[0].initial.vectors_used, 2);
}

#[test]
fn the_vt_d_msi_block_limit_bounds_a_multi_msi_grant() {
    let text = r#"
[host]
irtes_per_unit = 32
cpus = 1
max_msi_block = 4

[[vm]]
name = "a"
vcpus = 1
quota = 16
[[vm.device]]
name = "ahci"
requester_id = 0x8
msi = 16

[[step]]
op = "alloc"
vm = "a"
device = "ahci"
kind = "msi"
count = "1..16"
spread = "same-vcpu"
expect = { status = "ok", granted = 4 }

[[step]]
op = "fire"
vm = "a"
device = "ahci"
expect = { delivered = 4, blocked = 0 }
"#;
    let report = run_text(text);
    assert_passed(&report);
    // Without the limit, the whole block.
    let report = run_text(
        &text
            .replace("max_msi_block = 4\n", "")
            .replace("granted = 4", "granted = 16")
            .replace("delivered = 4", "delivered = 16"),
    );
    assert_passed(&report);
}
