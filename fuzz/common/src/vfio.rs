//! Target `vfio_errno`: a VM whose two assigned devices are VFIO-backed
//! (`pvirq_host::vfio::VfioBackend`) over the model of the kernel's `vfio_pci_intrs.c`
//! (`vfio::fake_kernel`), with `FailNth` refusing the call the input names with the errno
//! it names, and the route layer failing on command (`backend::fault`). Requests go
//! through the transaction path (`Vm::call`).
//!
//! After every request: the VM's own invariants hold; every grant is backed by a kernel
//! trigger signalling that grant's route; the kernel has no trigger without a grant unless
//! it refused a detach (which the backend reports rather than fails); a refused request
//! changed no grant and no trigger. After the input the VM is dropped and each kernel must
//! hold nothing: no trigger, no cached host IRQ, every CPU vector and IRTE back.

use crate::wire_struct;
use pvirq_host::fault::{FaultKind, FaultPlan, Faulty};
use pvirq_host::grants::GrantRecord;
use pvirq_host::routes::{GuestRoutes, MemoryRoutes, RouteError, RouteId, RouteState, StagedRoute};
use pvirq_host::vfio::fake_kernel::{FakeKernel, Shared};
use pvirq_host::vfio::{DETACH, FailNth, IommuKind, IrqHost, IrqInfo, IrqSet, VfioBackend};
use pvirq_host::{DeviceSpec, GuestDest, InterruptBackend, Vm, VmConfig};
use pvirq_proto::{
    Alloc, IndexRange, IndexSpec, Kind, Operation, Outcome, Request, Response, Retarget, Target,
    Targeting, feature,
};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Route ids `0..ROUTES`, each with its own eventfd (VFIO signals eventfds only).
const ROUTES: u32 = 128;
/// Most steps an input may describe.
const MAX_STEPS: usize = 64;
/// The errnos `VFIO_DEVICE_SET_IRQS` returns (`errno` modulo their number picks one;
/// past them the byte itself is the errno).
const ERRNOS: [i32; 13] = [
    libc::ENOSPC,
    libc::ENOMEM,
    libc::EINVAL,
    libc::EBADF,
    libc::EBUSY,
    libc::ENOTTY,
    libc::EOPNOTSUPP,
    524, // ENOTSUPP, the kernel-internal one
    libc::EFAULT,
    libc::ENODEV,
    libc::ENXIO,
    libc::EIO,
    libc::EPERM,
];

wire_struct! {
    /// One request, and what fails while it runs.
    pub struct VfioStep {
        /// QUERY, ALLOC, FREE, RETARGET, RESET (modulo 5).
        pub op: u8,
        /// Device handle as sent.
        pub device: u8,
        /// Kind (modulo 3: MSI, MSI-X, IMS).
        pub kind: u8,
        /// Bit 0: ANY_INDEX.
        pub flags: u8,
        /// First index.
        pub first: u16,
        /// Min count (FREE/RETARGET: the count).
        pub min: u8,
        /// Max count.
        pub max: u8,
        /// The kernel call of this request (from 1, on the addressed device) that is
        /// refused; 0: none.
        pub fail_call: u8,
        /// The errno it is refused with (see [`ERRNOS`]).
        pub errno: u8,
        /// The route-layer call of this request (from 1) that fails; 0: none.
        pub fail_route: u8,
        /// Bit 0: the route layer runs out rather than fails.
        pub route_fault: u8,
        /// Targets `(vcpu, vector)`.
        pub targets: Vec<(u8, u8)>,
    }
}

wire_struct! {
    /// A whole `vfio_errno` input.
    pub struct VfioInput {
        /// The kernel's MSI-X table size (modulo 65).
        pub msix: u8,
        /// The kernel's MSI vectors: 2^(byte modulo 6).
        pub msi: u8,
        /// Bit 0: NORESIZE (no dynamic MSI-X). Bits 1–2: the IOMMU (VT-d, AMD, unknown).
        /// Bit 3: the VMM declares a larger MSI-X table than the kernel has. Bit 4: the
        /// VMM declares IMS slots, which VFIO cannot back.
        pub flags: u8,
        /// Free CPU vectors on the host (modulo 64).
        pub cpu_vectors: u8,
        /// Free IRTEs on the host (modulo 128).
        pub irtes: u8,
        /// The VM's quota (modulo 65).
        pub quota: u8,
        /// The requests.
        pub steps: Vec<VfioStep>,
    }
}

/// The kernel side of one device: the model, behind a wrapper refusing the armed call,
/// behind a probe noting refused detaches.
#[derive(Debug)]
struct Probe {
    inner: FailNth<FakeKernel>,
    /// The kernel refused a detach (fd −1) or a disable since the input began: it may
    /// keep triggers the backend counts as gone (and reports, as it must).
    detach_refused: bool,
}

impl IrqHost for Probe {
    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        self.inner.irq_info(index)
    }

    fn set_irqs(&mut self, set: &IrqSet<'_>) -> Result<u32, i32> {
        let result = self.inner.set_irqs(set);
        let detach = match set {
            IrqSet::DisableAll { .. } => true,
            IrqSet::Signal { fds, .. } => fds.iter().all(|fd| *fd == DETACH),
            // A test's probe of the kernel's triggers: the backend never issues it.
            IrqSet::Fire { .. } => false,
        };
        if detach && result.is_err() {
            self.detach_refused = true;
        }
        result
    }
}

type Kernel = Shared<Probe>;

fn lock(k: &Kernel) -> std::sync::MutexGuard<'_, Probe> {
    k.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Guest routes whose triggers are eventfds (one per route id, reused across inputs), over
/// the in-memory table behind the fault wrapper.
struct EventfdRoutes {
    inner: Faulty<MemoryRoutes>,
    fds: Arc<Vec<Arc<EventFd>>>,
}

impl GuestRoutes for EventfdRoutes {
    fn available(&self) -> u32 {
        self.inner.available()
    }
    fn stage_add(&mut self, dest: Option<GuestDest>) -> Result<StagedRoute, RouteError> {
        let staged = self.inner.stage_add(dest)?;
        let Some(fd) = self.fds.get(staged.id as usize) else {
            // Not reachable: the table's ids are the pool's.
            let _ = self.inner.stage_remove(staged.id);
            return Err(RouteError::Exhausted);
        };
        Ok(StagedRoute {
            id: staged.id,
            trigger: Arc::clone(fd) as pvirq_host::backend::Trigger,
        })
    }
    fn stage_update(&mut self, id: RouteId, dest: Option<GuestDest>) -> Result<(), RouteError> {
        self.inner.stage_update(id, dest)
    }
    fn stage_remove(&mut self, id: RouteId) -> Result<(), RouteError> {
        self.inner.stage_remove(id)
    }
    fn commit(&mut self) -> Result<(), RouteError> {
        self.inner.commit()
    }
    fn abort(&mut self) {
        self.inner.abort()
    }
    fn route(&self, id: RouteId) -> Option<RouteState> {
        self.inner.route(id)
    }
    fn live(&self) -> u32 {
        self.inner.live()
    }
    fn clear(&mut self) {
        self.inner.clear()
    }
}

thread_local! {
    /// The routes' eventfds, opened once per process.
    static EVENTFDS: Arc<Vec<Arc<EventFd>>> = Arc::new(
        (0..ROUTES)
            .map(|_| Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")))
            .collect(),
    );
}

fn kind(byte: u8) -> Kind {
    match byte % 3 {
        0 => Kind::Msi,
        1 => Kind::MsiX,
        _ => Kind::Ims,
    }
}

fn iommu(flags: u8) -> IommuKind {
    match (flags >> 1) % 4 {
        0 | 3 => IommuKind::IntelVtd,
        1 => IommuKind::Amd,
        _ => IommuKind::Unknown,
    }
}

/// What the kernel has for one device: trigger fd per index, per VFIO index.
type Triggers = (Option<u32>, BTreeMap<u32, RawFd>);

fn triggers(k: &Kernel) -> Triggers {
    let p = lock(k);
    let fake = p.inner.inner();
    (fake.on, fake.triggers.clone())
}

type Grants = Vec<(Kind, u32, GrantRecord)>;

/// Everything a refused request must leave as it was.
fn state(vm: &Vm, kernels: &[Kernel]) -> (Vec<Grants>, Vec<Triggers>) {
    (
        (0..kernels.len() as u32).map(|d| vm.grants(d)).collect(),
        kernels.iter().map(triggers).collect(),
    )
}

/// The VFIO IRQ index of `kind`.
fn vfio_index(kind: Kind) -> Option<u32> {
    pvirq_host::vfio::vfio_index(kind)
}

/// Every grant has a kernel trigger signalling its route, and (unless the kernel refused
/// a detach) the kernel has no other trigger.
/// Which step of the input a failed check is about (formatted only on failure).
struct When<'a>(usize, &'a Request<'a>);

impl std::fmt::Display for When<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "after step {} {:?}", self.0, self.1)
    }
}

fn check_backing(vm: &Vm, kernels: &[Kernel], fds: &[Arc<EventFd>], cpu: usize, when: &When) {
    if let Err(errors) = vm.check_invariants() {
        panic!("VM invariants broken {when}: {errors:#?}");
    }
    for (d, k) in kernels.iter().enumerate() {
        let grants = vm.grants(d as u32);
        let p = lock(k);
        let fake = p.inner.inner();
        for (kind, index, record) in &grants {
            let on = vfio_index(*kind) == fake.on && fake.on.is_some();
            let fd = fds.get(record.route as usize).map(|f| f.as_raw_fd());
            assert!(
                on && fake.triggers.get(index).copied() == fd && fd.is_some(),
                "{when}: dev {d} {kind} {index} (route {}) is not backed by its route's \
                 eventfd: kernel on {:?}, triggers {:?}",
                record.route,
                fake.on,
                fake.triggers
            );
        }
        if !p.detach_refused {
            assert_eq!(
                fake.triggers.len(),
                grants.len(),
                "{when}: dev {d}: the kernel has triggers {:?} for grants {grants:?}",
                fake.triggers
            );
        }
        assert_eq!(
            fake.cpu_vectors as usize + fake.triggers.len(),
            cpu,
            "{when}: dev {d}: CPU vectors not accounted for"
        );
    }
}

fn request<'a>(step: &VfioStep, targets: &'a [Target]) -> Request<'a> {
    let kind = kind(step.kind);
    let device = u32::from(step.device);
    let range = IndexRange {
        kind,
        first: u32::from(step.first),
        count: u16::from(step.min),
    };
    let op = match step.op % 5 {
        0 => Operation::Query,
        1 => Operation::Alloc(Alloc {
            kind,
            index: if step.flags & 1 == 1 {
                IndexSpec::Any
            } else {
                IndexSpec::At(u32::from(step.first))
            },
            min: u16::from(step.min),
            max: u16::from(step.max),
            pasid: None,
            targeting: Targeting::PerVector,
            targets,
        }),
        2 => Operation::Free(range.into()),
        3 => Operation::Retarget(Retarget::run(range, targets)),
        _ => Operation::Reset,
    };
    Request { device, tag: 7, op }
}

/// Runs one input; how many requests were refused while a fault was armed.
pub fn run(input: &VfioInput) -> usize {
    let fds = EVENTFDS.with(Arc::clone);
    let msix = u32::from(input.msix % 65);
    let msi = 1u32 << (input.msi % 6);
    let cpu = usize::from(input.cpu_vectors % 64);
    let kernels: Vec<Kernel> = (0..2)
        .map(|_| {
            let mut fake = FakeKernel::new(msix, cpu as u32);
            fake.msi_count = msi;
            fake.noresize = input.flags & 1 == 1;
            fake.irtes = u32::from(input.irtes % 128);
            Shared(Arc::new(Mutex::new(Probe {
                inner: FailNth::new(fake),
                detach_refused: false,
            })))
        })
        .collect();
    let irtes = kernels.first().map_or(0, |k| lock(k).inner.inner().irtes);
    let plan = FaultPlan::new();
    let declared_msix = if input.flags & 8 != 0 {
        (msix + 8).min(2048)
    } else {
        msix
    };
    let spec = |rid: u16| DeviceSpec {
        requester_id: rid,
        msi_max: msi as u16,
        msix_table_size: declared_msix as u16,
        ims_slots: if input.flags & 16 != 0 { 8 } else { 0 },
        ..DeviceSpec::default()
    };
    let backends: Vec<Box<dyn InterruptBackend>> = kernels
        .iter()
        .map(|k| Box::new(VfioBackend::new(k.clone(), iommu(input.flags))) as _)
        .collect();
    let routes = EventfdRoutes {
        inner: Faulty::new(
            MemoryRoutes::with_range(0, ROUTES).expect("route range"),
            plan.clone(),
        ),
        fds: Arc::clone(&fds),
    };
    let config = VmConfig {
        quota: u32::from(input.quota % 65),
        num_vcpus: 2,
        max_batch: 64,
        devices: vec![spec(0x100), spec(0x101)],
        ..VmConfig::default()
    };
    let Ok(vm) = Vm::new(config, backends, Box::new(routes)) else {
        return 0;
    };
    let mut refused = 0;
    for (i, step) in input.steps.iter().take(MAX_STEPS).enumerate() {
        let targets: Vec<Target> = step
            .targets
            .iter()
            .map(|(c, v)| Target::new(u32::from(*c), *v))
            .collect();
        let request = request(step, &targets);
        let addressed = usize::from(step.device) % kernels.len();
        if step.fail_call != 0
            && let Some(k) = kernels.get(addressed)
        {
            let errno = ERRNOS
                .get(usize::from(step.errno))
                .copied()
                .unwrap_or(i32::from(step.errno));
            lock(k).inner.arm(u64::from(step.fail_call), errno);
        }
        if step.fail_route != 0 {
            let fault = if step.route_fault & 1 == 1 {
                FaultKind::Exhausted
            } else {
                FaultKind::Failed
            };
            plan.fail_nth(u64::from(step.fail_route), fault);
        }
        let before = state(&vm, &kernels);
        let reply = vm.call(&request);
        for k in &kernels {
            lock(k).inner.disarm();
        }
        plan.disarm();
        let when = When(i, &request);
        check_backing(&vm, &kernels, &fds, cpu, &when);
        let was_refused = matches!(
            Response::decode(&reply, feature::V1).map(|r| r.outcome),
            Ok(Outcome::Refused(_))
        );
        if was_refused {
            if step.fail_call != 0 || step.fail_route != 0 {
                refused += 1;
            }
            let after = state(&vm, &kernels);
            assert_eq!(
                after.0, before.0,
                "{when}: a refused request changed grants"
            );
            if !kernels.iter().any(|k| lock(k).detach_refused) {
                assert_eq!(
                    after.1, before.1,
                    "{when}: a refused request changed kernel triggers"
                );
            }
        }
    }
    drop(vm);
    for (d, k) in kernels.iter().enumerate() {
        let p = lock(k);
        let fake = p.inner.inner();
        assert!(
            fake.on.is_none() && fake.triggers.is_empty() && fake.allocated.is_empty(),
            "dev {d}: the kernel still holds {:?} {:?} {:?} after the VM is gone",
            fake.on,
            fake.triggers,
            fake.allocated
        );
        assert_eq!(
            (fake.cpu_vectors as usize, fake.irtes),
            (cpu, irtes),
            "dev {d}: CPU vectors or IRTEs not given back"
        );
    }
    refused
}

/// Representative inputs: the seeds of the corpus.
pub fn seeds() -> Vec<VfioInput> {
    let step = |op, kind, flags, first, min, max, fail_call, errno, n: u8| VfioStep {
        op,
        device: 0,
        kind,
        flags,
        first,
        min,
        max,
        fail_call,
        errno,
        fail_route: 0,
        route_fault: 0,
        targets: (0..n).map(|i| (i % 2, 0x40 + i)).collect(),
    };
    let base = VfioInput {
        msix: 16,
        msi: 3,
        flags: 0,
        cpu_vectors: 40,
        irtes: 100,
        quota: 32,
        steps: vec![
            step(0, 1, 0, 0, 0, 0, 0, 0, 0),
            step(1, 1, 1, 0, 1, 4, 0, 0, 4),
            step(1, 1, 0, 8, 2, 2, 0, 0, 2),
            step(1, 0, 1, 0, 1, 4, 0, 0, 4),
            step(3, 1, 0, 0, 2, 0, 0, 0, 2),
            step(2, 1, 0, 0, 2, 0, 0, 0, 0),
            step(4, 1, 0, 0, 0, 0, 0, 0, 0),
        ],
    };
    // Every errno at the first call of an allocation, then at the second.
    let mut errnos = base.clone();
    errnos.steps = (0..ERRNOS.len() as u8)
        .flat_map(|e| {
            [
                step(1, 1, 1, 0, 1, 4, 1, e, 4),
                step(1, 1, 1, 0, 2, 8, 2, e, 8),
                step(4, 1, 0, 0, 0, 0, 0, 0, 0),
            ]
        })
        .collect();
    // Refused detaches (the undo of a failed batch, a FREE, the reset).
    let mut detach = base.clone();
    detach.steps = vec![
        step(1, 1, 1, 0, 1, 4, 0, 0, 4),
        step(2, 1, 0, 0, 2, 0, 1, 11, 0),
        step(1, 1, 1, 0, 1, 4, 2, 11, 4),
        step(4, 1, 0, 0, 0, 0, 1, 11, 0),
    ];
    // Shortages: few CPU vectors and IRTEs, no dynamic MSI-X, the AMD IOMMU, MSI blocks.
    let mut short = base.clone();
    short.flags = 0b0011;
    short.cpu_vectors = 5;
    short.irtes = 6;
    short.steps.push(step(1, 0, 1, 0, 1, 8, 0, 0, 8));
    short.steps.push(step(1, 1, 1, 0, 1, 16, 0, 0, 16));
    // Route failures at each point, a VMM that over-declares, and IMS VFIO cannot back.
    let mut routes = base.clone();
    routes.flags = 8 | 16;
    routes.steps = (1..=4)
        .map(|n| VfioStep {
            fail_route: n,
            route_fault: n,
            ..step(1, 1, 1, 0, 1, 4, 0, 0, 4)
        })
        .chain([
            step(1, 1, 0, 20, 1, 1, 0, 0, 1),
            step(1, 2, 1, 0, 1, 2, 0, 0, 2),
        ])
        .collect();
    vec![base, errnos, detach, short, routes]
}
