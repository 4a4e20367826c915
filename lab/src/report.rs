//! What the in-guest program found, as one JSON line on the console.

use pvirq_host::backend::BackendError;
use serde::{Deserialize, Serialize};

/// The prefix of the console line that carries the report.
pub const REPORT_PREFIX: &str = "PVIRQ-LAB-REPORT ";

/// A refusal of the backend, in a form the host test can read back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Refusal {
    /// `exhausted`, `fragmented`, `errno`, `no-resize`, `unsupported` or `not-an-eventfd`.
    pub what: String,
    /// The resource named (`Resource::name`), or empty.
    pub resource: String,
    /// `Exhausted::supplied`.
    pub supplied: u32,
    /// `Errno::errno`.
    pub errno: i32,
}

impl From<&BackendError> for Refusal {
    fn from(e: &BackendError) -> Self {
        let mut r = Refusal::default();
        match e {
            BackendError::Exhausted { resource, supplied } => {
                r.what = "exhausted".into();
                r.resource = resource.name().into();
                r.supplied = *supplied;
            }
            BackendError::Fragmented { largest } => {
                r.what = "fragmented".into();
                r.supplied = *largest;
            }
            BackendError::Errno { errno, resource } => {
                r.what = "errno".into();
                r.resource = resource.name().into();
                r.errno = *errno;
            }
            BackendError::NoResize { .. } => r.what = "no-resize".into(),
            BackendError::Unsupported(_) => r.what = "unsupported".into(),
            BackendError::NotAnEventFd { .. } => r.what = "not-an-eventfd".into(),
        }
        r
    }
}

/// Vectors enabled one per request until the kernel refused.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OneByOne {
    /// How many were granted.
    pub granted: u32,
    /// The refusal that ended it.
    pub refusal: Option<Refusal>,
    /// `vfio-msix` lines in /proc/interrupts after the refusal.
    pub lines_after_refusal: u32,
    /// The same index asked again right away: refused again?
    pub retry_refused: bool,
    /// Lines after the retry.
    pub lines_after_retry: u32,
    /// Lines that also say `IR-PCI-MSIX` (interrupt remapping in the path).
    pub remapped_lines: u32,
    /// Mean microseconds per granted vector (one request each, in the guest).
    pub mean_us: f64,
}

/// Vectors freed and granted again.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FreeRegrant {
    /// How many were freed from the middle.
    pub freed: u32,
    /// Lines after freeing.
    pub lines_after_free: u32,
    /// How many of them were granted again.
    pub regranted: u32,
    /// After freeing one more, the index refused before was granted.
    pub refused_index_granted: bool,
    /// Lines at the end.
    pub lines_at_end: u32,
}

/// One request for more than the host has.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Batch {
    /// Vectors asked for.
    pub asked: u32,
    /// Granted with `min = 1`.
    pub granted: u32,
    /// `VFIO_DEVICE_SET_IRQS` calls that request made.
    pub calls: u64,
    /// Lines after it.
    pub lines: u32,
    /// With `min = asked`: the refusal.
    pub below_min: Option<Refusal>,
    /// Lines after that refusal.
    pub lines_after_below_min: u32,
    /// Calls that refused request made (including its undo).
    pub below_min_calls: u64,
}

/// One injected failure.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultCase {
    /// Which call of the request was refused (from 1).
    pub nth: u64,
    /// The errno injected.
    pub errno: i32,
    /// The request's outcome: `ok:N` or the refusal.
    pub outcome: String,
    /// Vectors the backend says are enabled afterwards.
    pub enabled_after: u32,
    /// `vfio-msix` lines afterwards.
    pub lines_after: u32,
    /// What must be left: the grants held before the request (plus, for `ok:N`, N).
    pub expected: u32,
}

/// An interrupt the device raised.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Delivery {
    /// The controller's model string (Identify), proof the admin queue worked.
    pub model: String,
    /// The Identify completion arrived on vector 0's eventfd.
    pub admin_vector0_fired: bool,
    /// The I/O completion queue's vector.
    pub io_vector: u32,
    /// A Flush completion arrived on that vector's eventfd.
    pub io_fired: bool,
    /// After the vector was freed, a Flush completion did not reach the old eventfd.
    pub freed_stayed_silent: bool,
    /// After it was granted again with a new eventfd, a Flush completion arrived there.
    pub regranted_fired: bool,
}

/// The same checks through the whole pvirq path: guest driver, virtqueue, device,
/// transaction, `VfioBackend`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PvirqPath {
    /// Vectors granted one ALLOC each until NO_SPACE.
    pub granted: u32,
    /// The refusal's resource (NO_SPACE), as the guest decoded it.
    pub refusal_resource: String,
    /// Its `available`.
    pub refusal_available: u32,
    /// `vfio-msix` lines after the refusal.
    pub lines_after_refusal: u32,
    /// Vectors the VM holds after the refusal (the core's books).
    pub held_after_refusal: u32,
    /// Lines after FREE of 10 from the middle.
    pub lines_after_free: u32,
    /// Those 10 granted again with one ALLOC at their index.
    pub regranted: u32,
    /// Lines after that.
    pub lines_after_regrant: u32,
    /// ALLOC of min 500, max 600 with nothing held: the refusal's resource.
    pub below_min_resource: String,
    /// Its `available`.
    pub below_min_available: u32,
    /// Lines after it.
    pub lines_after_below_min: u32,
    /// ALLOC of min 1, max 600: how many granted.
    pub prefix_granted: u32,
    /// Lines after it.
    pub lines_after_prefix: u32,
    /// Grants carry VmmTrapped tokens naming their index.
    pub tokens_name_indices: bool,
    /// A completion on the grant of index 300 arrived on its route's eventfd.
    pub route_fired: bool,
    /// And the admin queue's, on the grant of index 0's route eventfd.
    pub admin_route_fired: bool,
    /// Lines after RESET of the device.
    pub lines_after_reset: u32,
    /// Requests that failed where the check expected success.
    pub errors: Vec<String>,
}

/// One grant as the VM's books hold it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GrantSeen {
    /// Its MSI-X index.
    pub index: u32,
    /// Its guest route.
    pub route: u32,
    /// The data of its message (the token: kind, generation, index).
    pub data: u32,
}

/// Everything that says what is held, read at one moment: the kernel's side and the
/// VM's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeldState {
    /// `vfio-msix` lines in /proc/interrupts: the IRQ handlers the kernel holds.
    pub lines: u32,
    /// VFIO's own state: the routes whose eventfd the kernel signalled when asked to fire
    /// every vector of the table (`DATA_NONE | ACTION_TRIGGER`): the triggers it holds.
    pub attached: Vec<u32>,
    /// The errno of that call, 0 if it succeeded (`EINVAL` while MSI-X is off).
    pub fire_errno: i32,
    /// Indices the backend says are enabled.
    pub backend_enabled: Vec<u32>,
    /// Vectors the VM holds against its quota.
    pub held: u32,
    /// The VM's grants, by index.
    pub grants: Vec<GrantSeen>,
}

impl HeldState {
    /// The granted indices.
    pub fn indices(&self) -> Vec<u32> {
        self.grants.iter().map(|g| g.index).collect()
    }

    /// The granted routes, sorted.
    pub fn routes(&self) -> Vec<u32> {
        let mut routes: Vec<u32> = self.grants.iter().map(|g| g.route).collect();
        routes.sort_unstable();
        routes
    }
}

/// One failure point of the full pvirq path, failed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PathFaultCase {
    /// `alloc` (5 vectors in three runs) or `free` (2 vectors).
    pub request: String,
    /// `route-add`, `route-remove`, `route-commit`, `enable` or `reply-write`.
    pub point: String,
    /// Which call (or, for `reply-write`, which guest-memory write) failed, from 1.
    pub nth: u64,
    /// `exhausted` or `failed` (routes), the errno's name (enable), `outside` (reply).
    pub fault: String,
    /// What the guest got: `no-space RESOURCE AVAILABLE`, `device-error RESOURCE`,
    /// `no-reply`, or `ok:N`.
    pub outcome: String,
    /// What was held before the request.
    pub before: HeldState,
    /// And after it.
    pub after: HeldState,
    /// The same request without the fault: `ok:N` or what went wrong.
    pub retry: String,
    /// What was held after the retry (the probes see it change).
    pub retried: HeldState,
    /// What was held once the retry was undone (the next case starts from it).
    pub restored: HeldState,
}

/// Every failure point of the full path (guest driver, ring, device, transaction,
/// `VfioBackend`) on the real kernel.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PathFaults {
    /// The MSI-X indices held around every request.
    pub base: Vec<u32>,
    /// `VFIO_DEVICE_SET_IRQS` calls the ALLOC makes without a fault.
    pub alloc_calls: u64,
    /// The cases, in the order they ran.
    pub cases: Vec<PathFaultCase>,
    /// Steps outside the cases that failed (setting the base up, undoing a retry).
    pub errors: Vec<String>,
}

/// Cost per vector of a grant through pvirq against the bare call, same run, in the
/// guest (TCG: every instruction, user and kernel, is emulated).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Cost {
    /// Alternating rounds of each measurement.
    pub rounds: u32,
    /// Vectors per round.
    pub vectors: u32,
    /// Median µs per vector: one ALLOC per vector through pvirq.
    pub pvirq_single_us: f64,
    /// Median µs per vector: one `VFIO_DEVICE_SET_IRQS` per vector.
    pub bare_single_us: f64,
    /// `pvirq_single_us / bare_single_us`.
    pub single_ratio: f64,
    /// Median µs per vector: one ALLOC of all the round's vectors.
    pub pvirq_batch_us: f64,
    /// Median µs per vector: one `VFIO_DEVICE_SET_IRQS` of all of them.
    pub bare_batch_us: f64,
    /// `pvirq_batch_us / bare_batch_us`.
    pub batch_ratio: f64,
}

/// The backend alone (through the trait, no ring or transaction) against the bare call.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendCost {
    /// Median µs per vector, one `enable` each.
    pub backend_single_us: f64,
    /// Median µs per vector, one `VFIO_DEVICE_SET_IRQS` each.
    pub bare_single_us: f64,
    /// Their ratio.
    pub ratio: f64,
}

/// Everything the in-guest program found.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LabReport {
    /// MSI-X table size (`VFIO_DEVICE_GET_IRQ_INFO`).
    pub table_size: u32,
    /// `NORESIZE` clear.
    pub dynamic_msix: bool,
    /// The remapping driver the backend assumed.
    pub iommu: String,
    /// Online CPUs in the guest.
    pub cpus: u32,
    /// Vectors one by one.
    pub one_by_one: OneByOne,
    /// Free and re-grant.
    pub free_regrant: FreeRegrant,
    /// Batches.
    pub batch: Batch,
    /// The failure walk.
    pub faults: Vec<FaultCase>,
    /// Delivery.
    pub delivery: Delivery,
    /// The backend alone against the bare call.
    pub backend_cost: BackendCost,
    /// The full pvirq path.
    pub pvirq_path: PvirqPath,
    /// Every failure point of the full path.
    pub path_faults: PathFaults,
    /// Its cost against the bare call.
    pub cost: Cost,
    /// Lines after everything was freed.
    pub lines_at_exit: u32,
    /// Detach calls the kernel refused (the backend's counter).
    pub disable_failures: u64,
    /// What went wrong setting up, if anything.
    pub setup_error: Option<String>,
}
