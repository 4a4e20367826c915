//! Phase 2: the guest driver asks, over a virtqueue in guest memory and virtio-mmio, and
//! the pvirq device's transaction reserves through `VfioBackend` on the real kernel.

use crate::eventfd_wait::fired;
use crate::nvme::Nvme;
use crate::procfs::lines;
use crate::report::{Cost, PvirqPath};
use crate::routes::EventfdRoutes;
use pvirq_guest::Options;
use pvirq_host::routes::RouteId;
use pvirq_host::vfio::OpenedDevice;
use pvirq_host::vfio::{
    DETACH, IrqHost, IrqSet, VfioBackend, VfioDeviceIrqs, VmmToken, vfio_index,
};
use pvirq_host::{DeviceSpec, Vm, VmConfig};
use pvirq_proto::{Alloc, Grant, IndexRange, IndexSpec, Kind, Target, Targeting};
use pvirq_sim::Channel;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// Why the full path could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// Eventfds.
    #[error("eventfds: {0}")]
    Io(#[from] std::io::Error),
    /// The VM.
    #[error("VM: {0}")]
    Host(#[from] pvirq_host::HostError),
    /// The channel.
    #[error("channel: {0}")]
    Sim(#[from] pvirq_sim::SimError),
    /// The guest driver.
    #[error("driver: {0}")]
    Driver(#[from] pvirq_guest::Error),
}

const DEVICE: u32 = 0;
const TARGET_VECTOR: u8 = 0x41;

fn alloc(
    ch: &mut Channel,
    index: IndexSpec,
    min: u16,
    max: u16,
    grants: &mut [Grant],
) -> Result<usize, pvirq_guest::Error> {
    // One target per vector, alternating between the two vCPUs.
    let targets: Vec<Target> = (0..max)
        .map(|i| Target::new(u32::from(i % 2), TARGET_VECTOR))
        .collect();
    let a = Alloc {
        kind: Kind::MsiX,
        index,
        min,
        max,
        pasid: None,
        targets: &targets,
        targeting: Targeting::PerVector,
    };
    ch.driver()
        .alloc(DEVICE, a, grants)
        .map(|out| out.grants.len())
}

fn free(ch: &mut Channel, first: u32, count: u16) -> bool {
    ch.driver()
        .free(
            DEVICE,
            IndexRange {
                kind: Kind::MsiX,
                first,
                count,
            },
        )
        .is_ok()
}

fn held(ch: &Channel) -> u32 {
    ch.vm().occupancy().held
}

/// Runs the checks and the measurement on the opened device.
pub fn run(opened: &OpenedDevice, sysfs: &Path) -> Result<(PvirqPath, Cost), PathError> {
    let backend = VfioBackend::for_device(opened.device.clone(), sysfs);
    let routes = EventfdRoutes::new(2048)?;
    let eventfds = routes.eventfds();
    let config = VmConfig {
        quota: 2048,
        num_vcpus: 2,
        max_batch: 2048,
        devices: vec![DeviceSpec {
            requester_id: 0x0018,
            msi_max: 0,
            msix_table_size: 2048,
            ims_slots: 0,
            ..DeviceSpec::default()
        }],
        ..VmConfig::default()
    };
    let vm = Vm::new(config, vec![Box::new(backend)], Box::new(routes))?;
    let mut ch = Channel::for_vm(vm, Options::default())?;
    let mut p = PvirqPath::default();
    let mut grants = vec![Grant::new(0, Default::default()); 2048];

    // One ALLOC per vector until the host refuses.
    let refusal = loop {
        match alloc(&mut ch, IndexSpec::Any, 1, 1, &mut grants) {
            Ok(_) => p.granted += 1,
            Err(e) => break e,
        }
    };
    if let Some(pvirq_proto::Refusal::NoSpace {
        resource,
        available,
    }) = refusal.refusal()
    {
        p.refusal_resource = resource.name().into();
        p.refusal_available = available;
    }
    p.lines_after_refusal = lines();
    p.held_after_refusal = held(&ch);
    let first = p.granted / 2;
    if free(&mut ch, first, 10) {
        p.lines_after_free = lines();
        match alloc(&mut ch, IndexSpec::At(first), 10, 10, &mut grants) {
            Ok(n) => p.regranted = n as u32,
            Err(e) => p.errors.push(format!("regrant: {e}")),
        }
    }
    p.lines_after_regrant = lines();
    free(&mut ch, 0, u16::try_from(p.granted).unwrap_or(u16::MAX));

    match alloc(&mut ch, IndexSpec::Any, 500, 600, &mut grants) {
        Ok(n) => p.below_min_available = n as u32,
        Err(e) => {
            if let Some(pvirq_proto::Refusal::NoSpace {
                resource,
                available,
            }) = e.refusal()
            {
                p.below_min_resource = resource.name().into();
                p.below_min_available = available;
            }
        }
    }
    p.lines_after_below_min = lines();
    if let Ok(n) = alloc(&mut ch, IndexSpec::Any, 1, 600, &mut grants) {
        p.prefix_granted = n as u32;
        p.tokens_name_indices = grants.iter().take(n).all(|g| {
            VmmToken::decode(g.message()).is_some_and(|t| u32::from(t.index) == g.index())
        });
    }
    p.lines_after_prefix = lines();
    if !free(
        &mut ch,
        0,
        u16::try_from(p.prefix_granted).unwrap_or(u16::MAX),
    ) {
        p.errors.push("free of the prefix".into());
    }

    // An interrupt the device raises arrives on the eventfd its route gave.
    if let Err(e) = route_delivery(&mut ch, opened, &eventfds, &mut grants, &mut p) {
        p.errors.push(format!("delivery: {e}"));
    }
    free(&mut ch, 300, 1);

    // Keep index 0 granted during the measurement, so the table stays on.
    let cost = measure(&mut ch, opened, &mut grants).unwrap_or_else(|e| {
        p.errors.push(format!("measure: {e}"));
        Cost::default()
    });
    let _ = ch.driver().reset_device(DEVICE);
    p.lines_after_reset = lines();
    Ok((p, cost))
}

/// Grants indices 0 and 300, then makes the controller complete on each.
fn route_delivery(
    ch: &mut Channel,
    opened: &OpenedDevice,
    eventfds: &BTreeMap<RouteId, Arc<EventFd>>,
    grants: &mut [Grant],
    p: &mut PvirqPath,
) -> Result<(), String> {
    alloc(ch, IndexSpec::At(0), 1, 1, grants).map_err(|e| format!("alloc 0: {e}"))?;
    alloc(ch, IndexSpec::At(300), 1, 1, grants).map_err(|e| format!("alloc 300: {e}"))?;
    let route_of = |index: u32| {
        ch.vm()
            .grants(DEVICE)
            .into_iter()
            .find(|(k, i, _)| *k == Kind::MsiX && *i == index)
            .and_then(|(_, _, r)| eventfds.get(&r.route).cloned())
            .ok_or(format!("no route eventfd for index {index}"))
    };
    let (fd0, fd300) = (route_of(0)?, route_of(300)?);
    let mut nvme = Nvme::new(opened.device.clone(), opened.container.clone())
        .map_err(|e| format!("nvme: {e}"))?;
    let _ = fd0.read();
    nvme.identify().map_err(|e| format!("identify: {e}"))?;
    p.admin_route_fired = fired(&fd0, Duration::from_secs(2));
    nvme.io_queue_on(300)
        .map_err(|e| format!("io queue: {e}"))?;
    let _ = fd300.read();
    nvme.flush().map_err(|e| format!("flush: {e}"))?;
    p.route_fired = fired(&fd300, Duration::from_secs(2));
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Rounds of: K vectors, one ALLOC each through pvirq at 1..=K interleaved with one bare
/// `VFIO_DEVICE_SET_IRQS` each at K+1..=2K; then one ALLOC of K against one call of K,
/// alternating. Only the grants are timed; each round frees what it took.
fn measure(ch: &mut Channel, opened: &OpenedDevice, grants: &mut [Grant]) -> Result<Cost, String> {
    const ROUNDS: u32 = 7;
    const K: u32 = 32;
    let mut c = Cost {
        rounds: ROUNDS,
        vectors: K,
        ..Cost::default()
    };
    let mut raw = VfioDeviceIrqs::new(opened.device.clone());
    let index = vfio_index(Kind::MsiX).unwrap_or(2);
    let fds: Vec<EventFd> = (0..K)
        .filter_map(|_| EventFd::new(libc::EFD_NONBLOCK).ok())
        .collect();
    let raw_fds: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let detach = vec![DETACH; K as usize];
    let (mut ps, mut bs, mut pb, mut bb) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        // Interleaved vector by vector (pvirq at i, bare at K + i), so that the
        // machine's drift falls on both alike.
        let mut ok = true;
        let (mut pvirq_us, mut bare_us) = (0.0, 0.0);
        for i in 1..=K {
            let t0 = Instant::now();
            ok &= alloc(ch, IndexSpec::At(i), 1, 1, grants).is_ok();
            pvirq_us += t0.elapsed().as_secs_f64() * 1e6;
            let fd = [raw_fds.get((i - 1) as usize).copied().unwrap_or(DETACH)];
            let set = IrqSet::Signal {
                index,
                start: K + i,
                fds: &fd,
            };
            let t0 = Instant::now();
            ok &= raw.set_irqs(&set).is_ok();
            bare_us += t0.elapsed().as_secs_f64() * 1e6;
        }
        ps.push(pvirq_us / f64::from(K));
        bs.push(bare_us / f64::from(K));
        ok &= free(ch, 1, K as u16);
        ok &= raw
            .set_irqs(&IrqSet::Signal {
                index,
                start: K + 1,
                fds: &detach,
            })
            .is_ok();

        let t0 = Instant::now();
        ok &= alloc(ch, IndexSpec::At(1), K as u16, K as u16, grants).is_ok();
        pb.push(t0.elapsed().as_secs_f64() * 1e6 / f64::from(K));
        ok &= free(ch, 1, K as u16);

        let t0 = Instant::now();
        ok &= raw
            .set_irqs(&IrqSet::Signal {
                index,
                start: 1,
                fds: &raw_fds,
            })
            .is_ok();
        bb.push(t0.elapsed().as_secs_f64() * 1e6 / f64::from(K));
        ok &= raw
            .set_irqs(&IrqSet::Signal {
                index,
                start: 1,
                fds: &detach,
            })
            .is_ok();
        if !ok {
            // A failed step makes the round's figures meaningless: report none.
            return Err("a measurement step failed".into());
        }
    }
    c.pvirq_single_us = median(&mut ps);
    c.bare_single_us = median(&mut bs);
    c.single_ratio = c.pvirq_single_us / c.bare_single_us;
    c.pvirq_batch_us = median(&mut pb);
    c.bare_batch_us = median(&mut bb);
    c.batch_ratio = c.pvirq_batch_us / c.bare_batch_us;
    Ok(c)
}
