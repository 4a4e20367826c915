//! pvirq host backend: the part of a VMM that answers a guest's interrupt-allocation
//! requests, reserving everything delivery needs before it acknowledges.
//!
//! The design is in `docs/architecture.md`. The pieces:
//! - [`Vm`]: the VM core — one VM's assigned devices, quota and grants; [`Vm::handle`] runs
//!   one request as a transaction ([`transaction`]).
//! - [`backend`]: the seam to the host that owns IRTEs and host vectors, one
//!   [`backend::InterruptBackend`] per assigned device: [`vfio::VfioBackend`] for a real
//!   host (feature `vfio`), [`model::ModelBackend`] on the modelled host kernel.
//! - [`routes`]: the VM's guest routes, [`routes::GuestRoutes`]: [`kvm::KvmRoutes`] over the
//!   VMM's own routing table ([`kvm::RouteOwner`]), or [`routes::MemoryRoutes`].
//! - [`model`]: the modelled host kernel ([`model::ModelHost`]) for the simulator, tests,
//!   fuzzing and benchmarks: VT-d remapping, the vector matrix, posted interrupts, faults.
//! - [`device`]: the virtio device (request queue and event queue), its event handler and
//!   its virtio-mmio front.
//!
//! ```
//! use pvirq_host::model::{ModelConfig, ModelHost};
//! use pvirq_host::routes::MemoryRoutes;
//! use pvirq_host::{DeviceSpec, VmConfig};
//! use pvirq_proto::{Alloc, Kind, Operation, Outcome, Request, Response, Target, feature};
//!
//! let host = ModelHost::new(&ModelConfig::default()).unwrap();
//! let config = VmConfig {
//!     quota: 32,
//!     num_vcpus: 2,
//!     max_batch: 64,
//!     devices: vec![DeviceSpec {
//!         requester_id: 0x0100,
//!         msi_max: 0,
//!         msix_table_size: 16,
//!         ims_slots: 0,
//!         ..DeviceSpec::default()
//!     }],
//!     ..VmConfig::default()
//! };
//! let routes = MemoryRoutes::kvm_like();
//! let book = routes.book();
//! let vm = host.create_vm(config, Box::new(routes)).unwrap();
//! let targets = [Target::new(1, 0x40)];
//! let mut reply = [0u8; 64];
//! let request = Request { device: 0, tag: 1, op: Operation::Alloc(Alloc::any(Kind::MsiX, 1, &targets)) };
//! let mut bytes = [0u8; 64];
//! let len = request.encode(&mut bytes).unwrap();
//! let mut sink = pvirq_host::BufferSink::new(reply.len());
//! vm.handle(&bytes[..len], &mut sink);
//! reply[..sink.bytes().len()].copy_from_slice(sink.bytes());
//! // A version-1 driver: no extension negotiated (spec §2.2).
//! let Outcome::Allocated { grants, .. } = Response::decode(sink.bytes(), feature::V1).unwrap().outcome else {
//!     panic!("refused");
//! };
//! // The device writes the granted message; the remapping unit resolves it and the route
//! // delivers it to vCPU 1 (APIC ID 1), vector 0x40.
//! let message = grants.get(0).unwrap().message();
//! host.fire(0x0100, message).unwrap();
//! assert_eq!(book.lock().unwrap().delivered(), 1);
//! // Another device sending the same message is stopped by the remapping unit.
//! assert!(host.fire(0x0200, message).is_err());
//! ```
#![deny(missing_docs)]
// No panic reachable from guest bytes, by construction (issue 11): no indexing, no unwrap.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

pub mod backend;
mod bitmap;
#[cfg(any(test, feature = "test-utils"))]
mod check_set;
pub mod config;
pub mod device;
pub mod error;
#[cfg(any(test, feature = "test-utils"))]
pub mod fault;
pub mod grants;
pub mod kvm;
pub mod model;
mod paged;
pub mod routes;
pub mod snapshot;
mod state;
mod sync;
pub mod transaction;
#[cfg(feature = "vfio")]
pub mod vfio;
pub mod vm;

pub use backend::{GuestDest, InterruptBackend};
pub use config::{ApicIds, DeviceSpec, VmConfig};
pub use device::{MmioInterrupt, MmioTransport, NotifyMode, PvirqDevice, VirtioInterrupt};
pub use error::{ConfigError, HostError, ReplyError};
// The protocol types that appear in this crate's public signatures, so that a VMM needs no
// direct dependency on pvirq-proto.
pub use pvirq_proto::{
    Config, GrantMode, Kind, MessageFormat, MsiMessage, Opcode, Request, Resource, Status,
};
pub use transaction::{BufferSink, Handled, ReplySink};
pub use vm::{Vm, VmOccupancy};
