//! The guest's initramfs: busybox, the VFIO modules, the in-guest program with the
//! shared libraries it links (from `ldd`), and an `/init` that binds the NVMe controller
//! to vfio-pci, runs the program and powers off.

use crate::lab_env::LabEnv;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The marker `/init` prints with the program's exit status.
pub const EXIT_MARKER: &str = "PVIRQ-LAB-EXIT ";

/// `/init`: the NVMe controller (class 0x010802) goes to vfio-pci, then the program runs
/// with its PCI address. Everything it prints goes to the serial console.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "PVIRQ-LAB-INIT $(dmesg | grep -c 'Enabled IRQ remapping') remapping"
for m in $(cat /mods/order); do insmod /mods/$m.ko || echo "PVIRQ-LAB-INIT insmod $m failed"; done
BDF=
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/class)" = 0x010802 ] && BDF=${d##*/}
done
echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override
echo $BDF > /sys/bus/pci/drivers_probe
echo "PVIRQ-LAB-INIT nvme $BDF bound to $(basename $(readlink /sys/bus/pci/devices/$BDF/driver))"
/pvirq-vfio-guest $BDF
echo "PVIRQ-LAB-EXIT $?"
poweroff -f
"#;

/// Builds the initramfs (an uncompressed newc cpio, which the kernel accepts) for
/// `program` in `work`; returns its path.
pub fn build(env: &LabEnv, program: &Path, work: &Path) -> io::Result<PathBuf> {
    let root = work.join("root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for d in ["bin", "mods", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy(&env.busybox, root.join("bin/busybox"))?;
    for entry in fs::read_dir(env.modules())? {
        let p = entry?.path();
        if let Some(name) = p.file_name() {
            fs::copy(&p, root.join("mods").join(name))?;
        }
    }
    fs::copy(program, root.join("pvirq-vfio-guest"))?;
    for lib in shared_libraries(program)? {
        let dest = root.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::copy(&lib, &dest)?;
    }
    let init = root.join("init");
    fs::write(&init, INIT)?;
    set_executable(&init)?;
    let out = work.join("initramfs.cpio");
    cpio(&root, &out)?;
    Ok(out)
}

/// The absolute paths `ldd` lists for `program` (the loader included).
pub fn shared_libraries(program: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(program).output()?;
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// The absolute paths in `ldd` output.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn set_executable(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755))
}

fn cpio(root: &Path, out: &Path) -> io::Result<()> {
    let mut names = Vec::new();
    collect(root, root, &mut names)?;
    let file = fs::File::create(out)?;
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        for n in &names {
            writeln!(stdin, "{}", n.display())?;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(io::Error::other(format!("cpio exited with {status}")));
    }
    Ok(())
}

fn collect(root: &Path, dir: &Path, names: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let p = entry?.path();
        if let Ok(rel) = p.strip_prefix(root) {
            names.push(PathBuf::from(".").join(rel));
        }
        if p.is_dir() {
            collect(root, &p, names)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn ldd_paths_include_the_loader_and_skip_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            super::parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
