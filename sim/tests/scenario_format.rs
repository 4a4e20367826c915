//! The scenario format's new keys (issues 13 and 14): each one read into the model as the
//! README says, and each bad value refused with its file, line and field.

mod common;

use common::{EXT, line_of, with_steps};
use pvirq_host::model::Placement;
use pvirq_proto::{EventType, GrantMode, IndexSpec, Kind, MessageFormat, Targeting, feature};
use pvirq_sim::scenario::{Action, Dest, IndexSel, parse};

#[test]
fn every_new_host_vm_and_device_key_is_read() {
    let s = parse(EXT, "ext.toml").unwrap();
    assert!(s.host.posted);
    assert_eq!(s.host.max_msi_block, 8);
    assert_eq!(s.host.config().vtd_max_msi_block, 8);
    assert!(s.host.config().posted);
    let b = &s.destinations[0];
    assert_eq!((b.name.as_str(), b.host.irtes_per_unit), ("b", 8));
    assert!(!b.host.posted, "posted defaults to false");
    assert_eq!((b.tenants[0].unit, b.tenants[0].vectors), (0, 2));

    let x = &s.vms[0];
    assert_eq!(
        x.features,
        feature::V1
            | feature::APIC_ID
            | feature::INFO
            | feature::PARKED
            | feature::EVENTS
            | feature::SPREAD
            | feature::CONTIGUOUS
            | feature::INDEX_LIST
    );
    assert_eq!(x.apic_ids.as_deref(), Some(&[1, 3][..]));
    assert_eq!(
        (x.apic_id(1), x.vcpu_of_apic_id(3), x.wire_vcpu(0)),
        (Some(3), Some(1), 1)
    );
    let nic = &x.devices[0];
    assert_eq!(nic.share, Some(6));
    let id = nic.identity.unwrap();
    assert_eq!(
        (id.segment, id.bus, id.devfn, id.requester_id),
        (0, 2, 1, 0x0201)
    );
    assert_eq!(id.pasid, None);
    assert_eq!(nic.placement(), Placement::Vtd { unit: 0 });
    let amd = &x.devices[1];
    assert_eq!(amd.placement(), Placement::Amd { entries: 512 });
    assert_eq!(amd.format(), MessageFormat::AmdRemapped);
    let wq = &x.devices[2];
    assert!(wq.hotplug);
    let wq_id = wq.identity.unwrap();
    assert_eq!((wq_id.bus, wq_id.devfn, wq_id.pasid), (0, 0x30, Some(9)));
    // The VM starts without the hot-plugged device.
    let config = x.config();
    assert_eq!(config.devices.len(), 2);
    assert_eq!(config.devices[0].share, Some(6));
    assert_eq!(x.initial_devices(), 2);

    let old = &s.vms[1];
    assert_eq!(old.features, feature::V1, "no features: a version-1 driver");
    assert_eq!(old.apic_ids, None);
}

#[test]
fn every_new_step_and_expectation_is_read() {
    let text = with_steps(
        r#"
[[step]]
op = "alloc"
vm = "x"
device = "nic"
kind = "msix"
count = "1..4"
targeting = "spread"
expect = { grant_vcpus = [0, 1, 1], mode = "posted", parked = false }

[[step]]
op = "alloc"
vm = "x"
device = "nic"
kind = "msix"
index = "any-contiguous"
count = 2
targeting = "parked"

[[step]]
op = "activate"
vm = "x"
device = "nic"
kind = "msix"
indices = [4, 6]
targets = [{ vcpu = 1, vector = 0x50 }, { apic_id = 7, vector = 0x51 }]

[[step]]
op = "park"
vm = "x"
device = "nic"
kind = "msix"
first = 4

[[step]]
op = "free"
vm = "x"
device = "nic"
kind = "msix"
indices = [0, 2, 3]

[[step]]
op = "events"
vm = "x"
expect = { events = ["limits", "device-added"], applied = 0 }

[[step]]
op = "set_quota"
vm = "x"
quota = 20
expect = { vm_quota = 20 }

[[step]]
op = "set_share"
vm = "x"
device = "nic"
share = "none"

[[step]]
op = "add_device"
vm = "x"
device = "wq"

[[step]]
op = "query"
vm = "x"
device = "wq"
expect = { bdf = "00:06.0", interface_pasid = 9, format = "vtd-remappable", share = 16, can_post = true, msix_free_run = 0, ims_free_run = 8 }

[[step]]
op = "remove_device"
vm = "x"
device = "wq"

[[step]]
op = "resources_changed"
vm = "x"

[[step]]
op = "migrate"
vm = "x"
to = "b"
expect = { migrated = true, kept = 1, reprogrammed = 2, revoked = 0 }
"#,
    );
    let s = parse(&text, "steps.toml").unwrap();
    let actions: Vec<&Action> = s.steps.iter().map(|st| &st.action).collect();
    let Action::Alloc(spread) = actions[0] else {
        panic!("{:?}", actions[0])
    };
    assert_eq!(spread.targeting, Targeting::Spread);
    // One target per vCPU by default, on the wire as APIC IDs (the VM asks for APIC_ID).
    assert_eq!(
        spread.targets,
        [
            Dest {
                vcpu: 1,
                vector: 0x40
            },
            Dest {
                vcpu: 3,
                vector: 0x41
            }
        ]
    );
    let Action::Alloc(parked) = actions[1] else {
        panic!()
    };
    assert_eq!(
        (parked.index, parked.targeting, parked.targets.len()),
        (IndexSpec::AnyContiguous, Targeting::Parked, 0)
    );
    assert_eq!(
        *actions[2],
        Action::Retarget {
            device: 0,
            kind: Kind::MsiX,
            indices: IndexSel::List(vec![4, 6]),
            targets: vec![
                Dest {
                    vcpu: 3,
                    vector: 0x50
                },
                Dest {
                    vcpu: 7,
                    vector: 0x51
                }
            ],
            activate: true,
        }
    );
    assert_eq!(
        *actions[3],
        Action::Park {
            device: 0,
            kind: Kind::MsiX,
            indices: IndexSel::Run { first: 4, count: 1 }
        }
    );
    assert_eq!(
        *actions[4],
        Action::Free {
            device: 0,
            kind: Kind::MsiX,
            indices: IndexSel::List(vec![0, 2, 3])
        }
    );
    assert_eq!(*actions[5], Action::Events);
    assert_eq!(*actions[6], Action::SetQuota { quota: 20 });
    assert_eq!(
        *actions[7],
        Action::SetShare {
            device: 0,
            share: None
        }
    );
    assert_eq!(*actions[8], Action::AddDevice { device: 2 });
    assert_eq!(*actions[10], Action::RemoveDevice { device: 2 });
    assert_eq!(*actions[11], Action::ResourcesChanged);
    assert_eq!(*actions[12], Action::Migrate { to: 0 });
    assert_eq!(
        actions.iter().map(|a| a.op()).collect::<Vec<_>>(),
        [
            "alloc",
            "alloc",
            "activate",
            "park",
            "free",
            "events",
            "set_quota",
            "set_share",
            "add_device",
            "query",
            "remove_device",
            "resources_changed",
            "migrate"
        ]
    );

    let e = &s.steps[0].expect;
    assert_eq!(e.grant_vcpus.as_deref(), Some(&[0, 1, 1][..]));
    assert_eq!((e.mode, e.parked), (Some(GrantMode::Posted), Some(false)));
    let e = &s.steps[5].expect;
    assert_eq!(
        e.events.as_deref(),
        Some(&[EventType::Limits, EventType::DeviceAdded][..])
    );
    assert_eq!(e.applied, Some(0));
    assert_eq!(s.steps[6].expect.vm_quota, Some(20));
    let q = &s.steps[9].expect;
    assert_eq!(
        q.bdf.as_deref(),
        Some("0000:00:06.0"),
        "read in canonical form"
    );
    assert_eq!(q.format, Some(MessageFormat::VtdRemappable));
    assert_eq!(
        (
            q.interface_pasid,
            q.share,
            q.can_post,
            q.msix_free_run,
            q.ims_free_run
        ),
        (Some(9), Some(16), Some(true), Some(0), Some(8))
    );
    let m = &s.steps[12].expect;
    assert_eq!(m.migrated, Some(true));
    assert_eq!(
        (m.fates.kept, m.fates.reprogrammed, m.fates.revoked),
        (Some(1), Some(2), Some(0))
    );
}

#[test]
fn the_interleave_spread_gives_each_vcpu_the_next_vector_in_turn() {
    let text = with_steps(
        r#"
[[step]]
op = "alloc"
vm = "x"
device = "nic"
kind = "msix"
count = 5
spread = "interleave"
vector = 0x60
"#,
    );
    let s = parse(&text, "t.toml").unwrap();
    let Action::Alloc(a) = &s.steps[0].action else {
        panic!()
    };
    let got: Vec<(u32, u8)> = a.targets.iter().map(|d| (d.vcpu, d.vector)).collect();
    // vCPUs 0 and 1 have APIC IDs 1 and 3.
    assert_eq!(got, [(1, 0x60), (3, 0x60), (1, 0x61), (3, 0x61), (1, 0x62)]);
}

/// `EXT`'s text with `from` replaced by `to` (once), which must be refused naming `field`
/// on the line holding `marker`.
fn refused(base: &str, from: &str, to: &str, field: &str, marker: &str) {
    let text = base.replacen(from, to, 1);
    assert_ne!(text, base, "edit {from:?} applies");
    let err = parse(&text, "bad.toml").expect_err(to);
    assert_eq!(err.field.as_deref(), Some(field), "{err}");
    let line = line_of(&text, marker);
    assert_eq!(err.line(), Some(line), "{err}");
    let shown = err.to_string();
    assert!(shown.starts_with(&format!("bad.toml:{line}:")), "{shown}");
    assert!(shown.contains(&format!("field `{field}`")), "{shown}");
}

#[test]
fn bad_hosts_vms_and_devices_are_refused_with_line_and_field() {
    let cases = [
        (
            "max_msi_block = 8",
            "max_msi_block = 6",
            "max_msi_block",
            "max_msi_block = 6",
        ),
        ("posted = true", "posted = 1", "posted", "posted = 1"),
        (
            "tenants = [{ unit = 0, vectors = 2 }]",
            "tenants = [{ unit = 5, vectors = 2 }]",
            "tenants",
            "tenants = [{ unit = 5",
        ),
        (
            "tenants = [{ unit = 0, vectors = 2 }]",
            "tenants = [{ unit = 0, vectors = 0 }]",
            "tenants",
            "vectors = 0",
        ),
        (
            "\"apic-id\", \"info\"",
            "\"apic-id\", \"lnfo\"",
            "features",
            "lnfo",
        ),
        (
            "features = [\"apic-id\", \"info\", ",
            "features = [\"apic-id\", ",
            "features",
            "features = [\"apic-id\", \"parked\"",
        ),
        (
            "apic_ids = [1, 3]",
            "apic_ids = [1, 3, 5]",
            "apic_ids",
            "apic_ids",
        ),
        (
            "apic_ids = [1, 3]",
            "apic_ids = [3, 3]",
            "apic_ids",
            "apic_ids",
        ),
        (
            "amd_table = 512",
            "amd_table = 1024",
            "amd_table",
            "amd_table",
        ),
        (
            "amd_table = 512",
            "amd_table = 512\nunit = 1",
            "amd_table",
            "amd_table",
        ),
        (
            "bdf = \"0000:02:00.1\"",
            "bdf = \"0000:02:00.9\"",
            "bdf",
            "bdf =",
        ),
        (
            "bdf = \"0000:02:00.1\"",
            "bdf = \"02-00-1\"",
            "bdf",
            "bdf =",
        ),
        (
            "interface_pasid = 9",
            "interface_pasid = 0x100000",
            "interface_pasid",
            "interface_pasid",
        ),
        ("share = 6", "share = \"six\"", "share", "share ="),
        (
            "hotplug = true",
            "hotplug = \"yes\"",
            "hotplug",
            "hotplug =",
        ),
    ];
    for (from, to, field, marker) in cases {
        refused(EXT, from, to, field, marker);
    }
    // A device present at start after a hot-plugged one would get the wrong handle.
    let text = EXT.replacen(
        "[[vm]]\nname = \"old\"",
        "[[vm.device]]\nname = \"late\"\nrequester_id = 0x0050\nmsix = 1\n\n[[vm]]\nname = \"old\"",
        1,
    );
    let err = parse(&text, "bad.toml").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("hotplug"), "{err}");
    assert_eq!(
        err.line(),
        Some(line_of(&text, "name = \"late\"") - 1),
        "{err}"
    );
    assert_eq!(err.context.as_deref(), Some("vm 1, device 4"));
    // The destination's errors name it.
    let text = EXT.replacen("irtes_per_unit = 8", "irtes_per_unit = 0", 1);
    let err = parse(&text, "bad.toml").unwrap_err();
    assert_eq!(err.context.as_deref(), Some("destination 1"), "{err}");
    assert_eq!(err.line(), Some(line_of(&text, "irtes_per_unit = 0")));
}

#[test]
fn bad_steps_are_refused_with_line_and_field() {
    let alloc =
        "\n[[step]]\nop = \"alloc\"\nvm = \"x\"\ndevice = \"nic\"\nkind = \"msix\"\ncount = 2\n";
    let base = with_steps(alloc);
    let cases = [
        // Keys an op does not take.
        (
            "count = 2\n",
            "count = 2\nquota = 3\n",
            "quota",
            "quota = 3",
        ),
        ("count = 2\n", "count = 2\nto = \"b\"\n", "to", "to = \"b\""),
        // Shapes and their feature bits.
        (
            "count = 2\n",
            "count = 2\ntargeting = \"sprayed\"\n",
            "targeting",
            "sprayed",
        ),
        (
            "count = 2\n",
            "count = 2\ntargeting = \"parked\"\nvector = 0x50\n",
            "vector",
            "vector = 0x50",
        ),
        (
            "count = 2\n",
            "count = 2\nindex = \"any-contig\"\n",
            "index",
            "any-contig",
        ),
        (
            "count = 2\n",
            "count = 2\ntargets = [{ vcpu = 0, apic_id = 1, vector = 0x40 }, { vcpu = 1, vector = 0x41 }]\n",
            "targets",
            "targets =",
        ),
        (
            "count = 2\n",
            "count = 2\ntargeting = \"spread\"\ntargets = []\n",
            "targets",
            "targets = []",
        ),
    ];
    for (from, to, field, marker) in cases {
        refused(&base, from, to, field, marker);
    }
    // What a version-1 VM's driver does not ask for.
    let v1 =
        "\n[[step]]\nop = \"alloc\"\nvm = \"old\"\ndevice = \"disk\"\nkind = \"msix\"\ncount = 2\n";
    let base = with_steps(v1);
    for (to, field, marker) in [
        (
            "count = 2\ntargeting = \"spread\"\n",
            "targeting",
            "targeting",
        ),
        (
            "count = 2\ntargeting = \"parked\"\n",
            "targeting",
            "targeting",
        ),
        (
            "count = 2\nindex = \"any-contiguous\"\n",
            "index",
            "index =",
        ),
        (
            "count = 2\ntargets = [{ apic_id = 0, vector = 0x40 }, { vcpu = 0, vector = 0x41 }]\n",
            "targets",
            "targets =",
        ),
    ] {
        refused(&base, "count = 2\n", to, field, marker);
    }
    let refused_step = |step: &str, field: &str, marker: &str| {
        let text = with_steps(step);
        let err = parse(&text, "bad.toml").expect_err(step);
        assert_eq!(err.field.as_deref(), Some(field), "{step}: {err}");
        assert_eq!(err.line(), Some(line_of(&text, marker)), "{step}: {err}");
        assert_eq!(err.context.as_deref(), Some("step 1"), "{err}");
    };
    refused_step(
        "[[step]]\nop = \"free\"\nvm = \"old\"\ndevice = \"disk\"\nkind = \"msix\"\nindices = [0, 1]\n",
        "indices",
        "indices",
    );
    refused_step(
        "[[step]]\nop = \"free\"\nvm = \"x\"\ndevice = \"nic\"\nkind = \"msix\"\nindices = [3, 1]\n",
        "indices",
        "indices",
    );
    refused_step(
        "[[step]]\nop = \"free\"\nvm = \"x\"\ndevice = \"nic\"\nkind = \"msix\"\nfirst = 0\nindices = [1]\n",
        "indices",
        "indices",
    );
    refused_step(
        "[[step]]\nop = \"park\"\nvm = \"old\"\ndevice = \"disk\"\nkind = \"msix\"\nfirst = 0\n",
        "op",
        "op = \"park\"",
    );
    refused_step(
        "[[step]]\nop = \"events\"\nvm = \"old\"\n",
        "op",
        "op = \"events\"",
    );
    refused_step(
        "[[step]]\nop = \"set_quota\"\nvm = \"x\"\n",
        "quota",
        "[[step]]",
    );
    refused_step(
        "[[step]]\nop = \"set_share\"\nvm = \"x\"\ndevice = \"nic\"\nshare = \"lots\"\n",
        "share",
        "share = \"lots\"",
    );
    refused_step(
        "[[step]]\nop = \"add_device\"\nvm = \"x\"\ndevice = \"nic\"\n",
        "device",
        "device = \"nic\"",
    );
    refused_step(
        "[[step]]\nop = \"query\"\nvm = \"x\"\ndevice = \"wq\"\n",
        "device",
        "device = \"wq\"",
    );
    refused_step(
        "[[step]]\nop = \"migrate\"\nvm = \"x\"\nto = \"c\"\n",
        "to",
        "to = \"c\"",
    );
    refused_step("[[step]]\nop = \"migrate\"\nvm = \"x\"\n", "to", "[[step]]");
    for (expect, field) in [
        ("events = [\"reprogrammed\"]", "expect.events"),
        ("mode = \"pinned\"", "expect.mode"),
        ("format = \"vtd\"", "expect.format"),
        ("bdf = \"2:0\"", "expect.bdf"),
    ] {
        refused_step(
            &format!(
                "[[step]]\nop = \"query\"\nvm = \"x\"\ndevice = \"nic\"\nexpect = {{ {expect} }}\n"
            ),
            field,
            "expect =",
        );
    }
    // Plugged twice: the second add_device names a device plugged already.
    let text = with_steps(
        "[[step]]\nop = \"add_device\"\nvm = \"x\"\ndevice = \"wq\"\n\n[[step]]\nop = \"add_device\"\nvm = \"x\"\ndevice = \"wq\"\n",
    );
    let err = parse(&text, "bad.toml").unwrap_err();
    assert_eq!(
        (err.field.as_deref(), err.context.as_deref()),
        (Some("device"), Some("step 2")),
        "{err}"
    );
    // A destination with fewer units than a device of the VM needs.
    let text = EXT.replacen(
        "iommu_units = 2\nirtes_per_unit = 8",
        "iommu_units = 1\nirtes_per_unit = 8",
        1,
    ) + "\n[[step]]\nop = \"add_device\"\nvm = \"x\"\ndevice = \"wq\"\n\n[[step]]\nop = \"migrate\"\nvm = \"x\"\nto = \"b\"\n";
    let err = parse(&text, "bad.toml").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("to"), "{err}");
    assert!(err.message.contains("unit 1"), "{err}");
}
