//! The request benchmark 4 times — one ALLOC of 256 MSI-X vectors through the full path,
//! then its FREE — in a loop, for a profiler: `perf record` (time) or
//! `valgrind --tool=callgrind` (instructions, which do not move with the machine's load).
//!
//! ```sh
//! cargo build --release -p pvirq-tests --example alloc_256
//! valgrind --tool=callgrind target/release/examples/alloc_256 memory 200
//! perf record -g target/release/examples/alloc_256 kvm 3000
//! ```
//!
//! `memory` puts the VM's routes in memory (pvirq and the modelled host kernel only);
//! `kvm` puts them in a real KVM VM's routing table, as benchmark 4's (a) does (needs
//! `/dev/kvm`). The second argument is the number of rounds (default 2,000). Prints the
//! mean time of one ALLOC.

use pvirq_guest::Options;
use pvirq_host::kvm::{KvmRouteTable, KvmRoutes};
use pvirq_host::model::{ModelConfig, ModelHost};
use pvirq_host::routes::{GuestRoutes, MemoryRoutes};
use pvirq_host::{DeviceSpec, VmConfig};
use pvirq_proto::{Grant, IndexRange, Kind, MsiMessage, Target};
use pvirq_sim::Channel;
use pvirq_sim::kvm::KvmGuest;
use std::time::{Duration, Instant};

const VECTORS: u16 = 256;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kvm = match args.next().as_deref() {
        Some("kvm") => true,
        Some("memory") | None => false,
        Some(other) => return Err(format!("routes {other:?}: say memory or kvm").into()),
    };
    let rounds: u32 = args.next().map_or(Ok(2000), |n| n.parse())?;
    let config = VmConfig {
        quota: 4096,
        num_vcpus: 2,
        max_batch: 4096,
        devices: vec![DeviceSpec {
            requester_id: 0x0100,
            msi_max: 32,
            msix_table_size: 2048,
            ..DeviceSpec::default()
        }],
        ..VmConfig::default()
    };
    // Kept alive for the routes' sake; unused with routes in memory.
    let guest = if kvm {
        Some(KvmGuest::new(2, 1 << 20)?)
    } else {
        None
    };
    let routes: Box<dyn GuestRoutes> = match &guest {
        Some(guest) => Box::new(KvmRoutes::new(
            KvmRouteTable::new(guest.vm_fd()),
            guest.vm_fd(),
            u32::from(VECTORS),
        )?),
        None => Box::new(MemoryRoutes::with_range(0, 65_536)?),
    };
    let host = ModelHost::new(&ModelConfig::default())?;
    let mut channel = Channel::new(&host, config, routes, Options::default())?;
    let targets: Vec<Target> = (0..VECTORS)
        .map(|i| Target::new(u32::from(i % 2), 0x40 + (i % 0xA0) as u8))
        .collect();
    let mut grants = vec![Grant::new(0, MsiMessage::default()); usize::from(VECTORS)];
    let all = IndexRange {
        kind: Kind::MsiX,
        first: 0,
        count: VECTORS,
    };
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        let driver = channel.driver();
        let start = Instant::now();
        let granted = driver
            .alloc_irq_vectors(0, Kind::MsiX, VECTORS, &targets, &mut grants)?
            .grants
            .len();
        total += start.elapsed();
        if granted != usize::from(VECTORS) {
            return Err(format!("granted {granted} of {VECTORS}").into());
        }
        driver.free(0, all)?;
    }
    println!(
        "one ALLOC of {VECTORS} ({} routes): {:?} on average over {rounds}",
        if kvm { "KVM" } else { "in-memory" },
        total / rounds.max(1)
    );
    drop(channel);
    drop(guest);
    Ok(())
}
