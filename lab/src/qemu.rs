//! Booting the lab guest: QEMU with TCG, q35 with a split irqchip, an emulated VT-d with
//! interrupt remapping (x2APIC, EIM) and an NVMe controller with 2048 MSI-X vectors on a
//! null drive, always under `timeout`.

use crate::initramfs::EXIT_MARKER;
use crate::lab_env::LabEnv;
use crate::report::{LabReport, REPORT_PREFIX};
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One boot's console and what it carried.
#[derive(Debug)]
pub struct Boot {
    /// Everything the guest printed.
    pub console: String,
    /// The report line, parsed.
    pub report: Option<LabReport>,
    /// The program's exit status, from `/init`.
    pub exit: Option<i32>,
    /// Wall time of the boot.
    pub wall: Duration,
}

/// Boots `initramfs` with `cpus` vCPUs; kills QEMU after `limit`.
pub fn boot(env: &LabEnv, initramfs: &Path, cpus: u32, limit: Duration) -> io::Result<Boot> {
    let t0 = Instant::now();
    let output = Command::new("timeout")
        .args(["-k", "5", &format!("{}", limit.as_secs())])
        .arg(&env.qemu)
        .args([
            "-accel",
            "tcg",
            "-machine",
            "q35,kernel-irqchip=split",
            "-cpu",
            "max",
        ])
        .args(["-device", "intel-iommu,intremap=on,caching-mode=on,eim=on"])
        .args(["-smp", &cpus.to_string(), "-m", "1G"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args(["-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(env.kernel())
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            "console=ttyS0 intel_iommu=on quiet loglevel=4 panic=-1",
        ])
        .args([
            "-drive",
            "driver=null-co,read-zeroes=on,size=4M,if=none,id=nvm",
        ])
        .args([
            "-device",
            "nvme,serial=pvirq,drive=nvm,msix_qsize=2048,max_ioqpairs=64",
        ])
        .stdin(Stdio::null())
        .output()?;
    let console = String::from_utf8_lossy(&output.stdout).into_owned();
    Ok(Boot {
        report: parse_report(&console),
        exit: parse_exit(&console),
        wall: t0.elapsed(),
        console,
    })
}

/// The report line in a console.
pub fn parse_report(console: &str) -> Option<LabReport> {
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').split_once(REPORT_PREFIX))
        .and_then(|(_, json)| serde_json::from_str(json).ok())
}

/// The exit status `/init` printed.
pub fn parse_exit(console: &str) -> Option<i32> {
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').split_once(EXIT_MARKER))
        .and_then(|(_, n)| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_report_and_exit_are_read_back_from_a_noisy_console() {
        let console = "[    1.0] random kernel line\r\n\
                       PVIRQ-LAB-REPORT {\"table_size\":2048,\"dynamic_msix\":true,\"iommu\":\"IntelVtd\",\"cpus\":2,\
                       \"one_by_one\":{\"granted\":395,\"refusal\":null,\"lines_after_refusal\":395,\"retry_refused\":true,\
                       \"lines_after_retry\":395,\"remapped_lines\":395,\"mean_us\":1.0},\
                       \"free_regrant\":{\"freed\":0,\"lines_after_free\":0,\"regranted\":0,\"refused_index_granted\":false,\"lines_at_end\":0},\
                       \"batch\":{\"asked\":0,\"granted\":0,\"calls\":0,\"lines\":0,\"below_min\":null,\"lines_after_below_min\":0,\"below_min_calls\":0},\
                       \"faults\":[],\"delivery\":{\"model\":\"\",\"admin_vector0_fired\":false,\"io_vector\":0,\"io_fired\":false,\
                       \"freed_stayed_silent\":false,\"regranted_fired\":false},\"lines_at_exit\":0,\"disable_failures\":0,\"setup_error\":null}\r\n\
                       PVIRQ-LAB-EXIT 0\r\n";
        let report = super::parse_report(console).unwrap();
        assert_eq!(report.one_by_one.granted, 395);
        assert_eq!(super::parse_exit(console), Some(0));
        assert!(super::parse_report("PVIRQ-LAB-REPORT {broken").is_none());
    }
}
