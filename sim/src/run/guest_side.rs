//! `--kvm`: a scenario VM whose every step is done by the guest image in a KVM VM. Each
//! step becomes a mailbox command; its result is what the guest reported.

use super::outcome::{AllocOutcome, EventView, GrantView, QueryView, StepError};
use crate::SimError;
use crate::report::FireCounts;
use crate::scenario::{AllocStep, Fallback, VmDecl};
use crate::vmm::bar::{BarConfig, Flow, TableMode};
use crate::vmm::{Command, GUEST_VM_MEM, GuestVm, GuestVmConfig, Report, VmmError};
use pvirq_guest_image_abi::mailbox::{DriverError, Op, Status};
use pvirq_host::model::ModelHost;
use pvirq_host::snapshot::RestoredGrant;
use pvirq_host::{DeviceSpec, Vm};
use pvirq_proto::{GrantMode, IndexRange, IndexSpec, Kind, MsiMessage, Refusal, Target};
use std::time::Duration;

/// How long one command may take (a fire step waits up to 1 s per missing interrupt).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A kind as the mailbox spells it.
pub(crate) fn kind_word(kind: Kind) -> u32 {
    match kind {
        Kind::Msi => 0,
        Kind::MsiX => 1,
        Kind::Ims => 2,
    }
}

/// One scenario VM in KVM.
pub struct GuestSide {
    vm: GuestVm,
}

impl GuestSide {
    /// Builds VM `decl` on `host` (untrapped MSI-X tables: pvirq's grants carry everything,
    /// so the VMM traps no table write) and brings its channel up from inside the guest.
    pub fn new(host: &ModelHost, decl: &VmDecl) -> Result<GuestSide, SimError> {
        let config = decl.config();
        let bars = config
            .devices
            .iter()
            .map(|d| BarConfig {
                requester_id: d.requester_id,
                msix_entries: u32::from(d.msix_table_size),
                ims_slots: d.ims_slots,
                table: TableMode::Memory,
                flow: Flow::Pvirq,
            })
            .collect();
        let vm = GuestVm::new(
            host,
            GuestVmConfig {
                vcpus: usize::try_from(decl.vcpus).unwrap_or(usize::MAX),
                mem_size: GUEST_VM_MEM,
                vm: config,
                bars,
            },
        )?;
        let mut side = GuestSide { vm };
        side.init()?;
        Ok(side)
    }

    /// The host's view of the VM.
    pub fn vm(&self) -> &Vm {
        self.vm.vm()
    }

    /// The KVM VM.
    pub fn guest(&self) -> &GuestVm {
        &self.vm
    }

    fn run(&mut self, command: Command) -> Result<Report, StepError> {
        let report = self
            .vm
            .command(&command, COMMAND_TIMEOUT)
            .map_err(|e| StepError::Failed(e.into()))?;
        match report.status {
            Status::Ok => Ok(report),
            Status::Refused => match refusal_of(&report) {
                Some(r) => Err(StepError::Refused(r)),
                None => Err(StepError::Failed(SimError::GuestReport(
                    "a refusal with an invalid wire status",
                ))),
            },
            Status::DriverError => Err(StepError::Failed(SimError::GuestDriver(
                DriverError::from_word(report.r(pvirq_guest_image_abi::mailbox::RESULT_WORDS - 1)),
            ))),
            Status::BadCommand => Err(StepError::Failed(SimError::GuestReport(
                "the guest refused the command as malformed",
            ))),
            Status::NotReady => Err(StepError::Failed(SimError::GuestReport(
                "the guest's channel is not up",
            ))),
        }
    }

    fn init(&mut self) -> Result<(), SimError> {
        match self.run(Command::new(Op::Init, &[])) {
            Ok(_) => Ok(()),
            Err(StepError::Failed(e)) => Err(e),
            Err(StepError::Refused(_)) => Err(SimError::GuestReport("init refused")),
        }
    }

    /// ALLOC with the guest's own fallback.
    pub fn alloc(&mut self, a: &AllocStep) -> Result<AllocOutcome, SimError> {
        let (at, index) = match a.index {
            IndexSpec::Any => (0, 0),
            IndexSpec::At(i) => (1, i),
            // Scenarios cannot ask for it yet, and the guest image's mailbox has no word
            // for it (issue 13).
            IndexSpec::AnyContiguous => {
                return Err(SimError::GuestReport(
                    "any-contiguous is not in the mailbox",
                ));
            }
        };
        let list: Vec<u32> = a
            .targets
            .iter()
            .flat_map(|d| [d.vcpu, u32::from(d.vector)])
            .collect();
        let args = [
            a.device as u32,
            kind_word(a.kind),
            at,
            index,
            u32::from(a.min),
            u32::from(a.max),
            u32::from(a.pasid.is_some()),
            a.pasid.unwrap_or(0),
            u32::from(a.fallback == Fallback::Linux),
            a.targets.len() as u32,
        ];
        let report = match self.run(Command::new(Op::Alloc, &args).with_list(list)) {
            Ok(report) => report,
            Err(StepError::Failed(e)) => return Err(e),
            Err(StepError::Refused(r)) => {
                return Ok(AllocOutcome {
                    attempts: self.last_attempts(),
                    refused: Some(r),
                    ..AllocOutcome::default()
                });
            }
        };
        let first_refusal = u8::try_from(report.r(2))
            .ok()
            .zip(u8::try_from(report.r(3)).ok())
            .and_then(|(s, d)| Refusal::from_wire(s, d, report.r(4)));
        let grants = report
            .list
            .chunks_exact(4)
            .map(|w| {
                let message = MsiMessage {
                    address: u64::from(w[1]) | u64::from(w[2]) << 32,
                    data: w[3],
                };
                GrantView {
                    index: w[0],
                    message,
                    mode: GrantMode::Remapped,
                    parked: false,
                    pasid: None,
                }
            })
            .collect();
        Ok(AllocOutcome {
            grants,
            attempts: report.r(1),
            first_refusal,
            refused: None,
        })
    }

    /// Attempts the last ALLOC made, as the guest reported them.
    fn last_attempts(&self) -> u32 {
        self.vm.last_report().map_or(1, |r| r.r(1))
    }

    fn range_args(device: usize, range: IndexRange) -> [u32; 4] {
        [
            device as u32,
            kind_word(range.kind),
            range.first,
            u32::from(range.count),
        ]
    }

    /// FREE (a careful guest: masks first).
    pub fn free(&mut self, device: usize, range: IndexRange) -> Result<u32, StepError> {
        let args = Self::range_args(device, range);
        Ok(self.run(Command::new(Op::Free, &args))?.r(0))
    }

    /// RETARGET.
    pub fn retarget(
        &mut self,
        device: usize,
        range: IndexRange,
        targets: &[Target],
    ) -> Result<u32, StepError> {
        let [d, k, f, _] = Self::range_args(device, range);
        let list = targets
            .iter()
            .flat_map(|t| [t.vcpu(), u32::from(t.vector())])
            .collect();
        let args = [d, k, f, targets.len() as u32];
        Ok(self
            .run(Command::new(Op::Retarget, &args).with_list(list))?
            .r(0))
    }

    /// QUERY.
    pub fn query(&mut self, device: usize) -> Result<(u32, u32), StepError> {
        let r = self.run(Command::new(Op::Query, &[device as u32]))?;
        Ok((r.r(0), r.r(1)))
    }

    /// Device RESET.
    pub fn reset_device(&mut self, device: usize) -> Result<u32, StepError> {
        Ok(self
            .run(Command::new(Op::ResetDevice, &[device as u32]))?
            .r(0))
    }

    /// virtio reset from inside the guest.
    pub fn reset_virtio(&mut self) -> Result<u32, SimError> {
        match self.run(Command::new(Op::ResetVirtio, &[])) {
            Ok(r) => Ok(r.r(0)),
            Err(StepError::Failed(e)) => Err(e),
            Err(StepError::Refused(_)) => Err(SimError::GuestReport("virtio reset refused")),
        }
    }

    /// The guest rings every doorbell and reports what arrived: `delivered` is what its
    /// handler counted, `misrouted` what arrived where it expected nothing, `blocked` every
    /// doorbell that produced no interrupt.
    pub fn fire(&mut self, device: usize, include_freed: bool) -> Result<FireCounts, StepError> {
        let r = self.run(Command::new(
            Op::Fire,
            &[device as u32, u32::from(include_freed)],
        ))?;
        let (rung, arrived, unexpected) = (u64::from(r.r(0)), u64::from(r.r(1)), u64::from(r.r(2)));
        let seen = arrived + unexpected;
        Ok(FireCounts {
            fired: rung,
            delivered: seen,
            blocked: rung.saturating_sub(seen),
            misrouted: unexpected,
            observed: Some(seen),
        })
    }
}

/// Issue 13's steps, which the guest image cannot do yet (`--kvm` refuses such scenarios
/// before it starts: [`super::backend::guest_image_lacks`]).
impl GuestSide {
    /// FREE of an index list (not in the mailbox yet).
    pub fn free_list(&mut self, _: usize, _: Kind, _: &[u32]) -> Result<u32, StepError> {
        Err(StepError::Failed(SimError::GuestReport(
            "the guest image cannot do free by index list yet",
        )))
    }

    /// RETARGET of an index list, or PARK (not in the mailbox yet).
    pub fn retarget_list(
        &mut self,
        _: usize,
        _: Kind,
        _: &[u32],
        _: Option<&[Target]>,
    ) -> Result<u32, StepError> {
        Err(StepError::Failed(SimError::GuestReport(
            "the guest image cannot do retarget by index list, activate or park yet",
        )))
    }

    /// QUERY with `INFO` (not in the mailbox yet).
    pub fn query_ext(&mut self, _: usize) -> Result<QueryView, StepError> {
        Err(StepError::Failed(SimError::GuestReport(
            "the guest image cannot do QUERY with INFO yet",
        )))
    }

    /// The event queue (not in the guest image yet).
    pub fn events(&mut self) -> Result<Vec<EventView>, StepError> {
        Err(StepError::Failed(SimError::GuestReport(
            "the guest image cannot do events yet",
        )))
    }

    /// The VMM sets the quota (not wired to the small VMM yet; refused up front).
    pub fn set_quota(&mut self, _: u32) {}

    /// The VMM sets a share (not wired to the small VMM yet).
    pub fn set_device_share(&mut self, _: usize, _: Option<u32>) -> Result<(), SimError> {
        Err(SimError::GuestReport(
            "the guest image cannot do set_share yet",
        ))
    }

    /// The VMM plugs a device (not wired to the small VMM yet).
    pub fn add_device(&mut self, _: &ModelHost, _: DeviceSpec) -> Result<u32, SimError> {
        Err(SimError::GuestReport(
            "the guest image cannot do add_device yet",
        ))
    }

    /// The VMM unplugs a device (not wired to the small VMM yet).
    pub fn remove_device(&mut self, _: usize) -> Result<(), SimError> {
        Err(SimError::GuestReport(
            "the guest image cannot do remove_device yet",
        ))
    }

    /// The VMM says shared resources came back (not wired to the small VMM yet; refused
    /// up front).
    pub fn resources_changed(&mut self) {}

    /// Migration (not wired to the small VMM yet).
    pub fn migrate(&mut self, _: &ModelHost) -> Result<Vec<RestoredGrant>, SimError> {
        Err(SimError::GuestReport(
            "the guest image cannot do migrate yet",
        ))
    }
}

/// The refusal a report carries in its last three result words.
fn refusal_of(report: &Report) -> Option<Refusal> {
    use pvirq_guest_image_abi::mailbox::RESULT_WORDS;
    let (s, d, i) = (
        report.r(RESULT_WORDS - 3),
        report.r(RESULT_WORDS - 2),
        report.r(RESULT_WORDS - 1),
    );
    Refusal::from_wire(u8::try_from(s).ok()?, u8::try_from(d).ok()?, i)
}

impl From<VmmError> for SimError {
    fn from(e: VmmError) -> Self {
        SimError::Vmm(Box::new(e))
    }
}
