//! The backend's enable/disable logic against the model of `vfio_pci_intrs.c`.

use super::fake_kernel::{FakeKernel, Shared};
use super::{FailNth, IommuKind, VfioBackend, VmmToken};
use crate::backend::{BackendError, EnableRequest, Enabled, InterruptBackend, Signal, VectorSetup};
use pvirq_proto::{Kind, MessageFormat, Resource};
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

fn vectors(indices: impl IntoIterator<Item = u32>) -> Vec<VectorSetup> {
    indices
        .into_iter()
        .map(|index| VectorSetup {
            index,
            trigger: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            dest: None,
            previous: None,
        })
        .collect()
}

fn request(kind: Kind, vectors: &[VectorSetup], min: usize) -> EnableRequest<'_> {
    EnableRequest {
        kind,
        vectors,
        min,
        pasid: None,
        allow_posted: false,
    }
}

fn enable(
    b: &mut VfioBackend<FakeKernel>,
    kind: Kind,
    v: &[VectorSetup],
    min: usize,
) -> Result<Vec<Enabled>, BackendError> {
    let mut out = Vec::new();
    b.enable(&request(kind, v, min), &mut out).map(|()| out)
}

fn fds(v: &[VectorSetup]) -> Vec<RawFd> {
    v.iter().map(|s| s.trigger.eventfd().unwrap()).collect()
}

fn backend(table: u32, cpu_vectors: u32) -> VfioBackend<FakeKernel> {
    VfioBackend::new(FakeKernel::new(table, cpu_vectors), IommuKind::IntelVtd)
}

#[test]
fn one_vector_at_a_time_until_the_kernel_runs_out() {
    let mut b = backend(64, 5);
    let mut held = Vec::new();
    let refusal = loop {
        let v = vectors([u32::try_from(held.len()).unwrap()]);
        match enable(&mut b, Kind::MsiX, &v, 1) {
            Ok(out) => {
                assert_eq!(out.len(), 1);
                held.push(v);
            }
            Err(e) => break e,
        }
    };
    assert_eq!(held.len(), 5);
    assert_eq!(
        refusal,
        BackendError::Exhausted {
            resource: Resource::HostVector,
            supplied: 0
        }
    );
    // Each vector was its own call at its own index, never a rewrite from 0.
    let starts: Vec<u32> = b.host().calls.iter().map(|c| c.1).collect();
    assert_eq!(starts, [0, 1, 2, 3, 4, 5]);
    let kernel: Vec<u32> = b.host().triggers.keys().copied().collect();
    assert_eq!(kernel, [0, 1, 2, 3, 4]);
    assert_eq!(b.enabled(Kind::MsiX), kernel);
    // The triggers are the routes' eventfds.
    for (i, v) in held.iter().enumerate() {
        let index = u32::try_from(i).unwrap();
        assert_eq!(b.host().triggers[&index], fds(v)[0]);
    }
}

#[test]
fn a_batch_is_one_call_and_its_messages_are_tokens() {
    let mut b = backend(64, 100);
    let v = vectors(8..12);
    let out = enable(&mut b, Kind::MsiX, &v, 4).unwrap();
    assert_eq!(b.host().calls, [(2, 8, 4, false)]);
    assert_eq!(b.format(), MessageFormat::VmmTrapped);
    for (k, e) in out.iter().enumerate() {
        let token = VmmToken::decode(e.message).unwrap();
        assert_eq!(
            (token.kind, u32::from(token.index)),
            (Kind::MsiX, 8 + k as u32)
        );
        assert_eq!(b.recognise(e.message), Some(token));
    }
    // The first enable allocated host IRQs for 0..12 (nvec = start + count).
    assert_eq!(b.host().allocated.len(), 12);
}

#[test]
fn a_shortage_backs_the_largest_prefix_with_logarithmic_calls() {
    let mut b = backend(2048, 37);
    let v = vectors(0..100);
    let out = enable(&mut b, Kind::MsiX, &v, 1).unwrap();
    assert_eq!(out.len(), 37);
    assert_eq!(b.host().triggers.len(), 37);
    assert_eq!(b.enabled(Kind::MsiX), (0..37).collect::<Vec<_>>());
    // One failed batch, then at most ⌈log2 100⌉ = 7 halving attempts.
    assert!(b.host().calls.len() <= 8, "{:?}", b.host().calls);
}

#[test]
fn a_prefix_shorter_than_min_leaves_nothing_and_says_how_many_fit() {
    let mut b = backend(2048, 37);
    let held = vectors([500]);
    enable(&mut b, Kind::MsiX, &held, 1).unwrap();
    let v = vectors(0..100);
    let e = enable(&mut b, Kind::MsiX, &v, 50).unwrap_err();
    assert_eq!(
        e,
        BackendError::Exhausted {
            resource: Resource::HostVector,
            supplied: 36
        }
    );
    // Only the earlier grant is left.
    let kernel: Vec<u32> = b.host().triggers.keys().copied().collect();
    assert_eq!(kernel, [500]);
    assert_eq!(b.enabled(Kind::MsiX), [500]);
}

#[test]
fn a_refusal_that_is_no_shortage_undoes_every_earlier_run() {
    // Runs 0..2, 10..12, 20: the third call is refused with EBADF.
    let mut b = VfioBackend::new(FailNth::new(FakeKernel::new(64, 100)), IommuKind::IntelVtd);
    let v = vectors([0, 1, 10, 11, 20]);
    for nth in 1..=3 {
        b.host_mut().arm(nth, libc::EBADF);
        let mut out = Vec::new();
        let e = b.enable(&request(Kind::MsiX, &v, 1), &mut out).unwrap_err();
        assert_eq!(
            e,
            BackendError::Errno {
                errno: libc::EBADF,
                resource: Resource::GuestRoute
            },
            "call {nth}"
        );
        assert!(out.is_empty());
        assert!(b.host().inner().triggers.is_empty(), "call {nth}");
        assert_eq!(
            b.host().inner().on,
            None,
            "call {nth}: the kind is off again"
        );
        assert!(b.enabled(Kind::MsiX).is_empty());
    }
    b.host_mut().disarm();
    let mut out = Vec::new();
    b.enable(&request(Kind::MsiX, &v, 5), &mut out).unwrap();
    assert_eq!(out.len(), 5);
    assert_eq!(b.host().calls(), 3, "one call per run");
}

#[test]
fn an_injected_shortage_at_each_call_keeps_the_prefix_or_nothing() {
    let v = vectors([0, 1, 10, 11, 20]);
    for nth in 1..=3u64 {
        let mut b = VfioBackend::new(FailNth::new(FakeKernel::new(64, 100)), IommuKind::IntelVtd);
        b.host_mut().arm(nth, libc::ENOSPC);
        let mut out = Vec::new();
        let result = b.enable(&request(Kind::MsiX, &v, 5), &mut out);
        assert!(result.is_err(), "call {nth}");
        assert!(b.host().inner().triggers.is_empty(), "call {nth}");
        // With min 1 the same fault leaves the runs before the refused call, plus
        // whatever the halving got of the refused run.
        let mut b = VfioBackend::new(FailNth::new(FakeKernel::new(64, 100)), IommuKind::IntelVtd);
        b.host_mut().arm(nth, libc::ENOSPC);
        let mut out = Vec::new();
        b.enable(&request(Kind::MsiX, &v, 1), &mut out).unwrap();
        let held = b.host().inner().triggers.len();
        assert_eq!(held, out.len());
        assert_eq!(b.enabled(Kind::MsiX).len(), out.len());
        assert!(
            out.len() >= 2 * (nth as usize - 1).min(2),
            "call {nth}: {}",
            out.len()
        );
    }
}

#[test]
fn without_dynamic_msix_growth_is_refused_before_any_call() {
    let mut kernel = FakeKernel::new(64, 100);
    kernel.noresize = true;
    let mut b = VfioBackend::new(kernel, IommuKind::IntelVtd);
    assert!(!b.dynamic_msix());
    enable(&mut b, Kind::MsiX, &vectors(0..4), 4).unwrap();
    let calls = b.host().calls.len();
    let e = enable(&mut b, Kind::MsiX, &vectors([4]), 1).unwrap_err();
    assert_eq!(e, BackendError::NoResize { kind: Kind::MsiX });
    assert_eq!(b.host().calls.len(), calls, "no call reached the kernel");
    // A freed index inside the allocated block can be taken again.
    b.disable(Kind::MsiX, &[2]);
    enable(&mut b, Kind::MsiX, &vectors([2]), 1).unwrap();
    // Freeing everything disables the table, which can then be sized anew.
    b.disable(Kind::MsiX, &[0, 1, 2, 3]);
    assert!(!b.is_on(Kind::MsiX));
    enable(&mut b, Kind::MsiX, &vectors(0..8), 8).unwrap();
}

#[test]
fn a_fixed_table_backs_the_part_below_its_size_when_min_allows() {
    let mut kernel = FakeKernel::new(64, 100);
    kernel.noresize = true;
    let mut b = VfioBackend::new(kernel, IommuKind::IntelVtd);
    enable(&mut b, Kind::MsiX, &vectors([5]), 1).unwrap();
    b.disable(Kind::MsiX, &[]);
    let out = enable(&mut b, Kind::MsiX, &vectors([3, 4, 5, 6]), 2);
    // 5 is taken: the request is refused as a whole before any call.
    assert!(matches!(
        out,
        Err(BackendError::Errno {
            errno: libc::EBUSY,
            ..
        })
    ));
    let out = enable(&mut b, Kind::MsiX, &vectors([3, 4, 6]), 2).unwrap();
    assert_eq!(
        out.len(),
        2,
        "6 is past the 6 vectors the first enable allocated"
    );
}

#[test]
fn disable_detaches_runs_and_the_last_one_disables_the_kind() {
    let mut b = backend(64, 100);
    enable(&mut b, Kind::MsiX, &vectors(0..6), 6).unwrap();
    b.host_mut().calls.clear();
    b.disable(Kind::MsiX, &[1, 2, 4, 99]);
    assert_eq!(b.host().calls, [(2, 1, 2, false), (2, 4, 1, false)]);
    let kernel: Vec<u32> = b.host().triggers.keys().copied().collect();
    assert_eq!(kernel, [0, 3, 5]);
    assert_eq!(b.host().cpu_vectors, 97);
    b.host_mut().calls.clear();
    b.disable(Kind::MsiX, &[0, 3, 5]);
    assert_eq!(b.host().calls, [(2, 0, 0, true)]);
    assert_eq!(b.host().on, None);
    assert!(b.host().allocated.is_empty(), "cached host IRQs freed");
    assert_eq!(b.host().irtes, 65_536);
}

#[test]
fn a_refused_full_disable_falls_back_to_detaching_and_is_counted() {
    let mut b = VfioBackend::new(FailNth::new(FakeKernel::new(64, 100)), IommuKind::IntelVtd);
    let mut out = Vec::new();
    b.enable(&request(Kind::MsiX, &vectors(0..3), 3), &mut out)
        .unwrap();
    b.host_mut().arm(1, libc::EIO);
    b.disable(Kind::MsiX, &[0, 1, 2]);
    assert_eq!(b.disable_failures(), 1);
    assert!(b.host().inner().triggers.is_empty());
    assert!(b.enabled(Kind::MsiX).is_empty());
}

#[test]
fn an_msi_block_halves_in_powers_of_two_down_to_min() {
    let mut b = backend(64, 5);
    let out = enable(&mut b, Kind::Msi, &vectors(0..8), 2).unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(b.host().calls, [(1, 0, 8, false), (1, 0, 4, false)]);
    // MSI cannot grow while enabled.
    let e = enable(&mut b, Kind::Msi, &vectors([4]), 1).unwrap_err();
    assert_eq!(e, BackendError::NoResize { kind: Kind::Msi });
    // Nor can MSI-X be enabled while MSI is: the kernel says EINVAL.
    let e = enable(&mut b, Kind::MsiX, &vectors([0]), 1).unwrap_err();
    assert_eq!(
        e,
        BackendError::Errno {
            errno: libc::EINVAL,
            resource: Resource::DeviceSlots
        }
    );
}

#[test]
fn an_msi_block_shorter_than_min_is_refused_with_nothing_held() {
    let mut b = backend(64, 3);
    let e = enable(&mut b, Kind::Msi, &vectors(0..8), 4).unwrap_err();
    assert!(matches!(e, BackendError::Exhausted { supplied: 0, .. }));
    assert_eq!(b.host().on, None);
    assert_eq!(b.host().calls.len(), 2, "8 then 4, never below min");
}

#[test]
fn a_first_enable_that_finds_fewer_vectors_is_a_shortage() {
    let mut kernel = FakeKernel::new(64, 100);
    kernel.irtes = 6;
    let mut b = VfioBackend::new(kernel, IommuKind::IntelVtd);
    let out = enable(&mut b, Kind::MsiX, &vectors(0..10), 1).unwrap();
    // 10 is refused as "fewer" (6 IRTEs), 5 fit, then dynamic MSI-X takes the sixth
    // IRTE at index 5 and the last attempts fail.
    assert_eq!(out.len(), 6);
    assert_eq!(b.host().triggers.len(), 6);
    assert_eq!(b.host().irtes, 0);
}

#[test]
fn enomem_on_vtd_names_irtes() {
    let mut kernel = FakeKernel::new(64, 100);
    kernel.irtes = 2;
    let mut b = VfioBackend::new(kernel, IommuKind::IntelVtd);
    enable(&mut b, Kind::MsiX, &vectors([0]), 1).unwrap();
    enable(&mut b, Kind::MsiX, &vectors([1]), 1).unwrap();
    let e = enable(&mut b, Kind::MsiX, &vectors([2]), 1).unwrap_err();
    assert_eq!(
        e,
        BackendError::Exhausted {
            resource: Resource::Irte,
            supplied: 0
        }
    );
}

#[derive(Debug)]
struct Recorder;

impl Signal for Recorder {
    fn raise(&self) -> io::Result<()> {
        Ok(())
    }
    fn eventfd(&self) -> Option<RawFd> {
        None
    }
}

#[test]
fn refusals_without_a_call() {
    let mut b = backend(64, 100);
    let mut v = vectors(0..3);
    if let Some(second) = v.get_mut(1) {
        second.trigger = Arc::new(Recorder);
    }
    let e = enable(&mut b, Kind::MsiX, &v, 1).unwrap_err();
    assert_eq!(e, BackendError::NotAnEventFd { index: 1 });
    let e = enable(&mut b, Kind::Ims, &vectors([0]), 1).unwrap_err();
    assert_eq!(e, BackendError::Unsupported(Kind::Ims));
    let e = enable(&mut b, Kind::MsiX, &vectors([4, 4]), 1).unwrap_err();
    assert!(matches!(
        e,
        BackendError::Errno {
            errno: libc::EBUSY,
            ..
        }
    ));
    assert!(b.host().calls.is_empty());

    let mut odd = FakeKernel::new(64, 100);
    odd.msi_count = 12;
    assert_eq!(VfioBackend::new(odd, IommuKind::Unknown).max_msi_block(), 8);
    let mut kernel = FakeKernel::new(0, 100);
    kernel.msi_count = 0;
    let mut b = VfioBackend::new(kernel, IommuKind::Unknown);
    let e = enable(&mut b, Kind::MsiX, &vectors([0]), 1).unwrap_err();
    assert_eq!(e, BackendError::Unsupported(Kind::MsiX));
    assert_eq!(b.table_size(Kind::MsiX), 0);
}

#[test]
fn a_regranted_index_has_a_new_generation_and_the_old_token_is_stale() {
    let mut b = backend(64, 100);
    let first = enable(&mut b, Kind::MsiX, &vectors([7]), 1).unwrap();
    b.disable(Kind::MsiX, &[7]);
    assert_eq!(b.recognise(first[0].message), None, "freed");
    let second = enable(&mut b, Kind::MsiX, &vectors([7]), 1).unwrap();
    assert_ne!(first[0].message, second[0].message);
    assert_eq!(b.recognise(first[0].message), None, "stale");
    assert!(b.recognise(second[0].message).is_some());
}

#[test]
fn dropping_the_backend_disables_everything() {
    let kernel = Shared(Arc::new(Mutex::new(FakeKernel::new(64, 100))));
    let mut b = VfioBackend::new(kernel.clone(), IommuKind::IntelVtd);
    let mut out = Vec::new();
    b.enable(&request(Kind::MsiX, &vectors(0..4), 4), &mut out)
        .unwrap();
    assert_eq!(kernel.0.lock().unwrap().triggers.len(), 4);
    drop(b);
    let k = kernel.0.lock().unwrap();
    assert_eq!(k.on, None);
    assert!(k.triggers.is_empty() && k.allocated.is_empty());
    assert_eq!(k.calls.last(), Some(&(2, 0, 0, true)));
}

#[test]
fn a_restored_grant_keeps_its_previous_token() {
    let mut b = backend(64, 100);
    let first = enable(&mut b, Kind::MsiX, &vectors([9]), 1).unwrap();
    let old = first[0].message;
    // The VM moves: a new backend (generation 0 everywhere) restores index 9 with the
    // message the guest already programmed, and an unrelated message is not reused.
    let mut b = backend(64, 100);
    let mut v = vectors([9, 10]);
    v[0].previous = Some(old);
    v[1].previous = Some(old);
    let out = enable(&mut b, Kind::MsiX, &v, 2).unwrap();
    assert_eq!(out[0].message, old);
    assert_ne!(out[1].message, old, "index 10 cannot carry index 9's token");
    assert!(b.recognise(old).is_some());
}

#[test]
fn a_vmm_sharing_the_backend_recognises_what_the_core_granted() {
    // The VMM hands the core a clone and keeps one for its MSI-X table emulation.
    let shared = Arc::new(Mutex::new(backend(64, 100)));
    let mut core: Box<dyn InterruptBackend> = Box::new(Arc::clone(&shared));
    let v = vectors([3, 4]);
    let mut out = Vec::new();
    core.enable(&request(Kind::MsiX, &v, 2), &mut out).unwrap();
    let vmm = shared.lock().unwrap();
    assert_eq!(vmm.enabled(Kind::MsiX), [3, 4]);
    let token = vmm.recognise(out[1].message).expect("a live grant");
    assert_eq!((token.kind, token.index), (Kind::MsiX, 4));
    drop(vmm);
    core.disable(Kind::MsiX, &[4]);
    assert_eq!(shared.lock().unwrap().recognise(out[1].message), None);
}
