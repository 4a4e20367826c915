//! Unit tests against a fake device, and the ring agreement test against rust-vmm's queue.

mod double_fetch;
mod driver;
mod fake;
mod faults;
mod ring;
