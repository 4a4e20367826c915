//! Unit tests against a fake device, and the ring agreement test against rust-vmm's queue.

mod double_fetch;
mod driver;
mod events;
mod extensions;
mod fake;
mod faults;
mod hostile;
mod ring;
mod v1_bytes;
mod vectors;
