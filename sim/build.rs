//! Builds the bare-metal guest image (`guest/image`, target `x86_64-unknown-none`) that the
//! KVM backend loads into its VMs, in its own target directory under `OUT_DIR`, and hands
//! its path to the crate as `PVIRQ_GUEST_IMAGE`.
//!
//! Fails with a clear message when the target's standard library is not installed
//! (`rustup target add x86_64-unknown-none`, which `.ci/run` does).

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-none";

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    println!("cargo:warning={message}");
    std::process::exit(1);
}

/// Whether the active toolchain has the target's `core` (its rustlib directory).
fn target_installed(rustc: &str) -> bool {
    let out = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
            std::fs::read_dir(&dir).is_ok_and(|mut entries| {
                entries.any(|e| {
                    e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
                })
            })
        }
        _ => false,
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest.parent().unwrap_or(Path::new("..")).to_path_buf();
    let image = root.join("guest").join("image");
    for dir in [
        "guest/image/src",
        "guest/image/abi/src",
        "guest/src",
        "proto/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for file in [
        "guest/image/Cargo.toml",
        "guest/image/link.ld",
        "guest/image/build.rs",
        "guest/image/.cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| String::from("rustc"));
    if !target_installed(&rustc) {
        fail(&format!(
            "the {TARGET} target is not installed for this toolchain; the KVM guest image \
             (guest/image) needs it: run `rustup target add {TARGET}`"
        ));
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let target_dir = out_dir.join("guest-image-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| String::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&image)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    // The outer build's flags and wrappers are for the host target, not this one.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => fail(&format!("cannot run cargo to build the guest image: {e}")),
    };
    if !status.success() {
        fail(&format!(
            "building the guest image (cargo build --release --target {TARGET} in {}) failed",
            image.display()
        ));
    }
    let elf = target_dir
        .join(TARGET)
        .join("release")
        .join("pvirq-guest-image");
    if !elf.is_file() {
        fail(&format!("the guest image is missing at {}", elf.display()));
    }
    println!("cargo:rustc-env=PVIRQ_GUEST_IMAGE={}", elf.display());
}
