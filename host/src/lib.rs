//! pvirq host backend: the part of a VMM that answers a guest's interrupt-allocation
//! requests, reserving everything delivery needs before it acknowledges.
//!
//! - [`layers`]: the host resources, each behind a trait with the implementation we ship:
//!   interrupt remapping ([`layers::RemapLayer`], [`layers::RemapUnits`]), host vectors
//!   ([`layers::VectorLayer`], [`layers::VectorMatrix`]) and per-VM guest routes
//!   ([`layers::RouteLayer`], [`layers::MemoryRoutes`]); fault injection
//!   ([`layers::Faulty`]).
//! - [`Host`]: the pool shared by every VM (thread-safe), [`Host::fire`] for end-to-end
//!   delivery, [`Host::check_invariants`].
//! - [`Vm`]: one VM's devices, quota and grants; [`Vm::handle`] runs one request as a
//!   transaction ([`transaction`]).
//! - [`device`]: the virtio device, its event handler and its virtio-mmio front.
//! - [`kvm`]: real KVM delivery: [`kvm::KvmRoutes`] is the [`layers::RouteLayer`] that
//!   gives each granted vector a GSI route and an irqfd, committed once per request.
//!
//! ```
//! use pvirq_host::{DeviceSpec, Host, HostConfig, VmConfig, layers::MemoryRoutes};
//! use pvirq_proto::{Alloc, IndexSpec, Kind, Operation, Outcome, Request, Response, Target};
//!
//! let host = Host::new(&HostConfig::default()).unwrap();
//! let vm = host
//!     .create_vm(
//!         VmConfig {
//!             quota: 32,
//!             num_vcpus: 2,
//!             max_batch: 64,
//!             devices: vec![DeviceSpec {
//!                 requester_id: 0x0100,
//!                 unit: 0,
//!                 msi_max: 0,
//!                 msix_table_size: 16,
//!                 ims_slots: 0,
//!             }],
//!         },
//!         Box::new(MemoryRoutes::kvm_like()),
//!     )
//!     .unwrap();
//! let targets = [Target::new(1, 0x40)];
//! let reply = vm.call(&Request {
//!     device: 0,
//!     tag: 1,
//!     op: Operation::Alloc(Alloc {
//!         kind: Kind::MsiX,
//!         index: IndexSpec::Any,
//!         min: 1,
//!         max: 1,
//!         pasid: None,
//!         targets: &targets,
//!     }),
//! });
//! let Outcome::Allocated { grants, .. } = Response::decode(&reply).unwrap().outcome else {
//!     panic!("refused");
//! };
//! // The device writes the granted message; it arrives at vCPU 1, vector 0x40.
//! let delivery = host.fire(0x0100, grants[0].message()).unwrap();
//! assert_eq!((delivery.vcpu, delivery.vector), (1, 0x40));
//! // Another device sending the same message is stopped by the remapping unit.
//! assert!(host.fire(0x0200, grants[0].message()).is_err());
//! ```
#![deny(missing_docs)]

pub mod backend;
pub mod device;
pub mod error;
pub mod grants;
pub mod invariants;
pub mod kvm;
pub mod layers;
pub mod pool;
pub mod transaction;
pub mod vm;

// The protocol types that appear in this crate's public signatures, so that a VMM needs no
// direct dependency on pvirq-proto.
pub use device::{MmioInterrupt, MmioTransport, NotifyMode, PvirqDevice, VirtioInterrupt};
pub use error::{HostError, LayerError, ReplyError};
pub use pool::{Delivery, Fault, FaultReason, FaultReport, Host, HostConfig, HostOccupancy, VmId};
pub use pvirq_proto::{
    Config, GrantMode, Kind, MessageFormat, MsiMessage, Opcode, Request, Resource, Status,
};
pub use transaction::{BufferSink, Handled, ReplySink};
pub use vm::{DeviceSpec, Vm, VmConfig, VmOccupancy};
