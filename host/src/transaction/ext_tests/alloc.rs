//! ALLOC's extensions: APIC-ID targets, 24-byte records, SPREAD (also over a count the
//! host shortened), ANY_CONTIGUOUS, device shares, and the fragmentation causes.

use super::*;
use crate::config::ApicIds;
use crate::fault::{Shortfall, ShortfallCap};
use pvirq_proto::{Field, GrantMode, Resource};

#[test]
fn apic_id_targets_name_the_vms_x2apic_ids() {
    let host = host(64, 64, false);
    let mut c = config(16, vec![dev(0x100, 0, 8, 0)]);
    c.apic_ids = ApicIds::Table(vec![0, 2, 4, 300]);
    let vm = vm(&host, c, feature::V1 | feature::APIC_ID);
    let t = [Target::new(300, 0x40), Target::new(4, 0x41)];
    let g = grants(
        &vm,
        0,
        alloc(Kind::MsiX, IndexSpec::Any, (2, 2), Targeting::PerVector, &t),
    )
    .unwrap();
    assert_eq!(dests(&vm, 0, Kind::MsiX), [(0, Some(300)), (1, Some(4))]);
    let d = host.fire(0x100, g[0].message()).unwrap();
    assert_eq!(d.to(), Some((300, 0x40)));
    // 1 is a vCPU index but no APIC ID of this VM: refused at its position.
    let bad = [Target::new(300, 0x40), Target::new(1, 0x41)];
    let op = alloc(
        Kind::MsiX,
        IndexSpec::Any,
        (2, 2),
        Targeting::PerVector,
        &bad,
    );
    let refusal = Refusal::InvalidTarget {
        field: Field::TargetVcpu,
        entry: 1,
    };
    assert_eq!(grants(&vm, 0, op), Err(refusal));
    // RETARGET names APIC IDs too.
    let to = [Target::new(2, 0x50)];
    let op = Operation::Retarget(Retarget::run(
        IndexRange {
            kind: Kind::MsiX,
            first: 1,
            count: 1,
        },
        &to,
    ));
    assert_eq!(counted(&vm, 0, op), Ok(1));
    assert_eq!(dests(&vm, 0, Kind::MsiX), [(0, Some(300)), (1, Some(2))]);
    // A version-1 driver names vCPU indices: index 3 is APIC ID 300, and 300 is no index.
    vm.reset_all();
    vm.set_features(feature::V1);
    let v1 = [Target::new(3, 0x40), Target::new(1, 0x41)];
    grants(
        &vm,
        0,
        alloc(
            Kind::MsiX,
            IndexSpec::Any,
            (2, 2),
            Targeting::PerVector,
            &v1,
        ),
    )
    .unwrap();
    assert_eq!(dests(&vm, 0, Kind::MsiX), [(0, Some(300)), (1, Some(2))]);
    let op = alloc(Kind::MsiX, IndexSpec::Any, (2, 2), Targeting::PerVector, &t);
    assert_eq!(
        grants(&vm, 0, op),
        Err(Refusal::InvalidTarget {
            field: Field::TargetVcpu,
            entry: 0
        })
    );
    vm.check_invariants().unwrap();
}

#[test]
fn info_records_carry_mode_parked_flag_and_pasid() {
    let host = host(64, 64, false);
    let vm = vm(&host, config(16, vec![dev(0x100, 0, 8, 16)]), info(0));
    let t = targets(3);
    let op = Operation::Alloc(Alloc {
        kind: Kind::Ims,
        index: IndexSpec::At(2),
        min: 3,
        max: 3,
        pasid: Some(0x42),
        targeting: Targeting::PerVector,
        targets: &t,
    });
    let reply = call(&vm, 0, op);
    assert_eq!(reply.len(), 24 + 3 * 24, "24-byte records");
    let g = read(&vm, &reply, |o| match o {
        Outcome::Allocated { grants, .. } => grants.iter().collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    });
    let held = vm.grants(0);
    for (i, g) in g.iter().enumerate() {
        assert_eq!(g.index(), 2 + i as u32);
        assert_eq!(
            (g.mode(), g.parked(), g.pasid()),
            (GrantMode::Remapped, false, Some(0x42))
        );
        assert_eq!(held[i].2.message, g.message());
        assert_eq!(held[i].2.pasid, Some(0x42));
    }
    // Without a PASID the flag is clear.
    let g = grants(
        &vm,
        0,
        alloc(
            Kind::MsiX,
            IndexSpec::Any,
            (1, 1),
            Targeting::PerVector,
            &t[..1],
        ),
    )
    .unwrap();
    assert_eq!(g[0].pasid(), None);
    // A version-1 driver gets 16-byte records for the same request.
    let v1 = super::vm(&host, config(16, vec![dev(0x200, 0, 8, 16)]), feature::V1);
    assert_eq!(call(&v1, 0, op).len(), 24 + 3 * 16);
}

#[test]
fn spread_puts_grant_i_at_target_floor_i_t_over_n() {
    let host = host(64, 64, false);
    let features = info(feature::SPREAD | feature::APIC_ID);
    let vm = vm(&host, config(32, vec![dev(0x100, 8, 16, 0)]), features);
    let t = targets(4);
    // 6 over 4 targets: consecutive vectors share one.
    let g = grants(
        &vm,
        0,
        alloc(Kind::MsiX, IndexSpec::Any, (1, 6), Targeting::Spread, &t),
    )
    .unwrap();
    assert_eq!(g.len(), 6);
    let placed: Vec<_> = dests(&vm, 0, Kind::MsiX)
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(placed, [0, 0, 1, 2, 2, 3].map(Some));
    // Each delivers to its target's vector too.
    let d = host.fire(0x100, g[3].message()).unwrap();
    assert_eq!(d.to(), Some((2, 0x42)));
    // 2 over 4: every other target.
    let g = grants(
        &vm,
        0,
        alloc(Kind::MsiX, IndexSpec::Any, (2, 2), Targeting::Spread, &t),
    )
    .unwrap();
    assert_eq!(g.iter().map(|g| g.index()).collect::<Vec<_>>(), [6, 7]);
    assert_eq!(dests(&vm, 0, Kind::MsiX)[6..], [(6, Some(0)), (7, Some(2))]);
    // An MSI block is spread the same way.
    grants(
        &vm,
        0,
        alloc(
            Kind::Msi,
            IndexSpec::Any,
            (4, 4),
            Targeting::Spread,
            &t[..2],
        ),
    )
    .unwrap();
    assert_eq!(
        dests(&vm, 0, Kind::Msi),
        [(0, Some(0)), (1, Some(0)), (2, Some(1)), (3, Some(1))]
    );
    vm.check_invariants().unwrap();
    host.check_invariants().unwrap();
}

#[test]
fn a_spread_the_host_shortens_is_spread_over_the_count_granted() {
    for posted in [false, true] {
        let host = host(64, 64, posted);
        let cap = ShortfallCap::new(usize::MAX);
        let vm = host
            .create_vm_wrapped(
                config(32, vec![dev(0x100, 0, 16, 0)]),
                |b| Box::new(Shortfall::new(b, cap.clone())),
                Box::new(MemoryRoutes::kvm_like()),
            )
            .unwrap();
        vm.set_features(info(feature::SPREAD | feature::POSTED));
        // Sized for 8, backed 3: the spread is over 3 of the 4 targets, ⌊i × 4 / 3⌋.
        cap.set(3);
        let t = targets(4);
        let g = grants(
            &vm,
            0,
            alloc(Kind::MsiX, IndexSpec::Any, (2, 8), Targeting::Spread, &t),
        )
        .unwrap();
        assert_eq!(g.len(), 3);
        assert_eq!(
            dests(&vm, 0, Kind::MsiX),
            [(0, Some(0)), (1, Some(1)), (2, Some(2))],
            "posted: {posted}"
        );
        let mode = if posted {
            GrantMode::Posted
        } else {
            GrantMode::Remapped
        };
        for (i, g) in g.iter().enumerate() {
            assert_eq!(g.mode(), mode);
            // The host delivers where the record says: route and (posted) IRTE moved.
            let d = host.fire(0x100, g.message()).unwrap();
            assert_eq!(d.to(), Some((i as u32, 0x40 + i as u8)), "posted: {posted}");
            assert_eq!(d.mode, mode);
        }
        assert_eq!(
            vm.occupancy().routes,
            3,
            "the routes past the prefix are gone"
        );
        vm.check_invariants().unwrap();
        host.check_invariants().unwrap();
    }
}

#[test]
fn any_contiguous_takes_the_lowest_run_long_enough_and_names_fragmentation() {
    let host = host(64, 64, false);
    let features = info(feature::CONTIGUOUS | feature::INDEX_LIST);
    let vm = vm(&host, config(32, vec![dev(0x100, 4, 16, 0)]), features);
    let t = targets(16);
    grants(
        &vm,
        0,
        alloc(
            Kind::MsiX,
            IndexSpec::Any,
            (16, 16),
            Targeting::PerVector,
            &t,
        ),
    )
    .unwrap();
    // Free 2..4, 6..9 and 12..16: 9 free, the longest run 4 at 12.
    let list = le(&[2, 3, 6, 7, 8, 12, 13, 14, 15]);
    assert_eq!(counted(&vm, 0, listed(Kind::MsiX, &list, None)), Ok(9));
    let contiguous = |min, max| {
        alloc(
            Kind::MsiX,
            IndexSpec::AnyContiguous,
            (min, max),
            Targeting::PerVector,
            &t[..usize::from(max)],
        )
    };
    let indices = |g: Vec<GrantInfo>| g.iter().map(|g| g.index()).collect::<Vec<_>>();
    // 3: the lowest run of 3 is 6..9 (2..4 is too short).
    assert_eq!(
        indices(grants(&vm, 0, contiguous(1, 3)).unwrap()),
        [6, 7, 8]
    );
    // 6 free in runs of 2 and 4: at least 5 in one run is fragmentation, 7 a shortage;
    // `available` is the longest run either way.
    assert_eq!(
        grants(&vm, 0, contiguous(5, 5)),
        Err(no_space(Resource::SlotsFragmented, 4))
    );
    assert_eq!(
        grants(&vm, 0, contiguous(7, 7)),
        Err(no_space(Resource::DeviceSlots, 4))
    );
    // Capped by the longest run: 4 at 12, though 6 are free.
    assert_eq!(
        indices(grants(&vm, 0, contiguous(1, 8)).unwrap()),
        [12, 13, 14, 15]
    );
    // An MSI block is contiguous by nature.
    let msi = alloc(
        Kind::Msi,
        IndexSpec::AnyContiguous,
        (1, 4),
        Targeting::PerVector,
        &t[..4],
    );
    assert_eq!(indices(grants(&vm, 0, msi).unwrap()), [0, 1, 2, 3]);
    vm.check_invariants().unwrap();
}

#[test]
fn a_device_share_bounds_it_and_is_named_after_the_quota() {
    let host = host(128, 128, false);
    let mut a = dev(0x100, 0, 16, 0);
    a.share = Some(4);
    let vm = vm(&host, config(10, vec![a, dev(0x101, 0, 16, 0)]), info(0));
    let t = targets(8);
    let any = |min, max| {
        alloc(
            Kind::MsiX,
            IndexSpec::Any,
            (min, max),
            Targeting::PerVector,
            &t[..usize::from(max)],
        )
    };
    // QUERY's `available` and `share` say it before the ALLOC does.
    let q = query(&vm, 0);
    assert_eq!((q.available, q.ext.unwrap().share), (4, 4));
    assert_eq!(grants(&vm, 0, any(1, 8)).unwrap().len(), 4);
    assert_eq!(
        grants(&vm, 0, any(1, 1)),
        Err(no_space(Resource::DeviceShare, 0))
    );
    // A version-1 driver is told `vm-quota` (spec §3.3).
    vm.set_features(feature::V1);
    assert_eq!(
        grants(&vm, 0, any(1, 1)),
        Err(no_space(Resource::VmQuota, 0))
    );
    vm.set_features(info(0));
    // The other device has no share of its own: the rest of the quota.
    assert_eq!(query(&vm, 1).ext.unwrap().share, 10);
    assert_eq!(grants(&vm, 1, any(1, 8)).unwrap().len(), 6);
    // Quota and share both short: `vm-quota` comes first in §3.3 order.
    assert_eq!(
        grants(&vm, 0, any(1, 1)),
        Err(no_space(Resource::VmQuota, 0))
    );
    vm.check_invariants().unwrap();

    // Share and device slots both short: `device-share` comes first.
    let mut c = dev(0x102, 0, 2, 0);
    c.share = Some(2);
    let other = super::vm(&host, config(16, vec![c]), info(0));
    assert_eq!(grants(&other, 0, any(2, 2)).unwrap().len(), 2);
    assert_eq!(
        grants(&other, 0, any(1, 1)),
        Err(no_space(Resource::DeviceShare, 0))
    );
    // A share larger than the table: the table is named.
    let mut d = dev(0x103, 0, 2, 0);
    d.share = Some(3);
    let third = super::vm(&host, config(16, vec![d]), info(0));
    assert_eq!(
        grants(&third, 0, any(3, 3)),
        Err(no_space(Resource::DeviceSlots, 2))
    );
}

#[test]
fn an_msi_block_without_an_aligned_run_of_irtes_is_fragmentation() {
    // 32 IRTEs: 32 MSI-X grants take entries 0..32; freeing every odd index leaves 16
    // entries free and no aligned pair.
    let host = host(32, 64, false);
    let vm = vm(
        &host,
        config(64, vec![dev(0x100, 8, 32, 0)]),
        info(feature::INDEX_LIST),
    );
    let t = targets(32);
    grants(
        &vm,
        0,
        alloc(
            Kind::MsiX,
            IndexSpec::Any,
            (32, 32),
            Targeting::PerVector,
            &t,
        ),
    )
    .unwrap();
    let odd: Vec<u32> = (0..16).map(|i| 2 * i + 1).collect();
    assert_eq!(counted(&vm, 0, listed(Kind::MsiX, &le(&odd), None)), Ok(16));
    let msi = alloc(
        Kind::Msi,
        IndexSpec::Any,
        (2, 4),
        Targeting::PerVector,
        &t[..4],
    );
    assert_eq!(
        grants(&vm, 0, msi),
        Err(no_space(Resource::IrteFragmented, 1))
    );
    // A version-1 driver is told `irte`, as before.
    vm.set_features(feature::V1);
    assert_eq!(grants(&vm, 0, msi), Err(no_space(Resource::Irte, 1)));
    // Single entries are not fragmented: an MSI block of 1 and 15 MSI-X entries fit.
    vm.set_features(info(0));
    let one = alloc(
        Kind::Msi,
        IndexSpec::Any,
        (1, 4),
        Targeting::PerVector,
        &t[..4],
    );
    assert_eq!(grants(&vm, 0, one).unwrap().len(), 1);
    let msix = alloc(
        Kind::MsiX,
        IndexSpec::Any,
        (15, 15),
        Targeting::PerVector,
        &t[..15],
    );
    assert_eq!(grants(&vm, 0, msix).unwrap().len(), 15);
    host.check_invariants().unwrap();
}

/// A backend whose host says nothing of its supply (as VFIO does): only its answer to the
/// reservation tells a shortage.
struct Blind(crate::model::ModelBackend);

impl crate::backend::InterruptBackend for Blind {
    fn format(&self) -> pvirq_proto::MessageFormat {
        self.0.format()
    }
    fn supply(&self, _: Kind) -> crate::backend::HostSupply {
        crate::backend::HostSupply::default()
    }
    fn enable(
        &mut self,
        request: &crate::backend::EnableRequest<'_>,
        out: &mut Vec<crate::backend::Enabled>,
    ) -> Result<(), crate::backend::BackendError> {
        self.0.enable(request, out)
    }
    fn disable(&mut self, kind: Kind, indices: &[u32]) {
        self.0.disable(kind, indices)
    }
}

#[test]
fn a_host_that_finds_no_aligned_block_is_told_as_fragmentation() {
    // As above, but the core cannot see the supply: the backend's Fragmented answer is
    // what names the cause.
    let host = host(32, 64, false);
    let vm = host
        .create_vm_wrapped(
            config(64, vec![dev(0x100, 8, 32, 0)]),
            |b| Box::new(Blind(b)),
            Box::new(MemoryRoutes::kvm_like()),
        )
        .unwrap();
    vm.set_features(info(feature::INDEX_LIST));
    let t = targets(32);
    grants(
        &vm,
        0,
        alloc(
            Kind::MsiX,
            IndexSpec::Any,
            (32, 32),
            Targeting::PerVector,
            &t,
        ),
    )
    .unwrap();
    let odd: Vec<u32> = (0..16).map(|i| 2 * i + 1).collect();
    assert_eq!(counted(&vm, 0, listed(Kind::MsiX, &le(&odd), None)), Ok(16));
    let msi = alloc(
        Kind::Msi,
        IndexSpec::Any,
        (2, 4),
        Targeting::PerVector,
        &t[..4],
    );
    assert_eq!(
        grants(&vm, 0, msi),
        Err(no_space(Resource::IrteFragmented, 1))
    );
    vm.set_features(feature::V1);
    assert_eq!(grants(&vm, 0, msi), Err(no_space(Resource::Irte, 1)));
    assert_eq!(vm.occupancy().held, 16);
    host.check_invariants().unwrap();
}

/// A backend that backs one vector fewer than it could, above `min` (as VFIO does when it
/// halves a refused run and keeps every part that fitted: 2 + 1 of 4).
struct OneShort(crate::model::ModelBackend);

impl crate::backend::InterruptBackend for OneShort {
    fn format(&self) -> pvirq_proto::MessageFormat {
        self.0.format()
    }
    fn supply(&self, kind: Kind) -> crate::backend::HostSupply {
        self.0.supply(kind)
    }
    fn enable(
        &mut self,
        request: &crate::backend::EnableRequest<'_>,
        out: &mut Vec<crate::backend::Enabled>,
    ) -> Result<(), crate::backend::BackendError> {
        self.0.enable(request, out)?;
        if out.len() > request.min
            && let Some(last) = request.vectors.get(out.len() - 1)
        {
            self.0.disable(request.kind, &[last.index]);
            out.pop();
        }
        Ok(())
    }
    fn disable(&mut self, kind: Kind, indices: &[u32]) {
        self.0.disable(kind, indices)
    }
}

#[test]
fn an_msi_block_backed_short_of_a_power_of_two_is_granted_as_the_largest_one() {
    // Found by the vfio_errno campaign: a VFIO backend backed 3 of an MSI request of 4,
    // and the guest was granted a block of 3.
    let host = host(32, 64, false);
    let vm = host
        .create_vm_wrapped(
            config(64, vec![dev(0x100, 8, 32, 0)]),
            |b| Box::new(OneShort(b)),
            Box::new(MemoryRoutes::kvm_like()),
        )
        .unwrap();
    let t = targets(4);
    let msi = alloc(Kind::Msi, IndexSpec::Any, (1, 4), Targeting::PerVector, &t);
    let granted = grants(&vm, 0, msi).unwrap();
    assert_eq!(granted.len(), 2);
    // The third vector the backend backed was given back: the host holds two.
    assert_eq!(vm.occupancy().held, 2);
    assert_eq!(vm.grants(0).len(), 2);
    assert_eq!(host.occupancy().vectors_used, 2);
    host.check_invariants().unwrap();
    vm.check_invariants().unwrap();
    // Freed: nothing is left behind, in the VM or on the host.
    assert_eq!(
        counted(&vm, 0, Operation::Free(run(Kind::Msi, 0, 2))),
        Ok(2)
    );
    assert_eq!(vm.occupancy().held, 0);
    assert_eq!(host.occupancy().vectors_used, 0);
    host.check_invariants().unwrap();
}
