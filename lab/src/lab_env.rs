//! Where the lab's kernel and QEMU are, and what to do when they are missing.

use std::path::{Path, PathBuf};

/// Set (to 1) where the lab must run: a missing QEMU or kernel is then a failure.
pub const REQUIRE_QEMU_ENV: &str = "PVIRQ_REQUIRE_QEMU";
/// The cache `.ci/vfio-lab-setup.sh` fills (default [`DEFAULT_CACHE`]).
pub const CACHE_ENV: &str = "PVIRQ_VFIO_LAB";
/// The default cache.
pub const DEFAULT_CACHE: &str = "/var/cache/pvirq/vfio-lab";

/// What the lab needs from the machine.
#[derive(Clone, Debug)]
pub struct LabEnv {
    /// The cache directory.
    pub cache: PathBuf,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// busybox (static).
    pub busybox: PathBuf,
}

impl LabEnv {
    /// The guest kernel.
    pub fn kernel(&self) -> PathBuf {
        self.cache.join("vmlinuz")
    }

    /// The decompressed VFIO modules and their load order.
    pub fn modules(&self) -> PathBuf {
        self.cache.join("mods")
    }
}

/// Finds everything, or says what is missing.
pub fn find() -> Result<LabEnv, String> {
    let cache =
        std::env::var_os(CACHE_ENV).map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from);
    if !cache.join("ready").is_file() {
        return Err(format!(
            "no VFIO lab cache at {} (run .ci/vfio-lab-setup.sh as root)",
            cache.display()
        ));
    }
    let qemu = which("qemu-system-x86_64").ok_or("qemu-system-x86_64 is not installed")?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("busybox is not installed (busybox-static)")?;
    which("cpio").ok_or("cpio is not installed")?;
    Ok(LabEnv {
        cache,
        qemu,
        busybox,
    })
}

/// `find`, or `None` after saying plainly that the test skipped; panics (fails the test)
/// instead when [`REQUIRE_QEMU_ENV`] is `1`.
pub fn find_or_skip(test: &str) -> Option<LabEnv> {
    match find() {
        Ok(env) => Some(env),
        Err(why) => {
            if std::env::var(REQUIRE_QEMU_ENV).as_deref() == Ok("1") {
                panic!("{test}: {why}, and {REQUIRE_QEMU_ENV}=1 requires the QEMU lab");
            }
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
