//! Benchmark 5: bytes of host state per granted vector, counted by a counting allocator.
//!
//! Two figures. The incremental heap a grant costs: grant records, route entries and map
//! growth, measured as live bytes after granting N vectors minus live bytes before. And the
//! fixed tables the host allocates up front (IRTE tables, the vector matrix), per entry.
//! Target: ≤ 64 bytes per granted vector.

mod common;

use common::{big_routes, host, report, vm_config};
use pvirq_proto::{Alloc, Kind, Operation, Outcome, Request, Response, Target, feature};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: the caller's contract is passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: the caller's contract is passed through.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::SeqCst);
        // SAFETY: the caller's contract is passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

const GRANTS: u32 = 32_768;

fn main() {
    let before_host = live();
    let host = host(256);
    let host_bytes = live() - before_host;
    let occupancy = host.occupancy();
    let entries = occupancy.units[0].capacity + occupancy.vectors_free;

    let before_vm = live();
    let vm = host
        .create_vm(vm_config(GRANTS, GRANTS, 0x0100), big_routes())
        .expect("VM");
    let targets = vec![Target::new(1, 0x40); 4096];
    let before = live();
    let mut granted = 0;
    while granted < GRANTS {
        let request = Request {
            device: 0,
            tag: 0,
            op: Operation::Alloc(Alloc::any(Kind::Ims, 4096, &targets)),
        };
        let reply = vm.call(&request);
        match Response::decode(&reply, feature::V1)
            .expect("reply")
            .outcome
        {
            Outcome::Allocated { grants, .. } => granted += grants.len() as u32,
            other => panic!("refused after {granted}: {other:?}"),
        }
    }
    let per_grant = (live() - before) as f64 / f64::from(granted);
    println!(
        "bench5 fixed host tables: {host_bytes} bytes for {entries} IRTEs and host vectors \
         ({:.1} bytes each)",
        host_bytes as f64 / f64::from(entries)
    );
    println!(
        "bench5 {granted} grants added {} bytes of heap",
        live() - before
    );
    report(
        "bench5 heap per granted vector",
        per_grant,
        "bytes",
        "<= 64",
        per_grant <= 64.0,
    );
    drop(vm);
    drop(targets);
    // Everything the VM held must come back: a leak would show here.
    println!(
        "bench5 after the VM is dropped: {} bytes above the host alone",
        live() - before_vm
    );
}
