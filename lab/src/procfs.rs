//! What the guest kernel says it holds: the IRQs VFIO requested for the device, one line
//! each in /proc/interrupts (named `vfio-msix[i](BDF)` by `vfio_msi_set_vector_signal`;
//! IRQs the kernel only keeps cached have no handler and no line).

/// Lines of /proc/interrupts with a VFIO MSI-X handler, and how many of them are on the
/// remapping chip (`IR-PCI-MSIX`).
pub fn vfio_msix_lines() -> (u32, u32) {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    count_lines(&text)
}

/// The number of VFIO MSI-X handlers the kernel holds.
pub fn lines() -> u32 {
    vfio_msix_lines().0
}

/// [`vfio_msix_lines`] over a given text.
pub fn count_lines(text: &str) -> (u32, u32) {
    let mut all = 0;
    let mut remapped = 0;
    for line in text.lines().filter(|l| l.contains("vfio-msix[")) {
        all += 1;
        if line.contains("IR-PCI-MSIX") {
            remapped += 1;
        }
    }
    (all, remapped)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_only_vfio_handlers() {
        let text = " 40:   0   0  IR-PCI-MSIX-0000:00:03.0    0-edge      vfio-msix[0](0000:00:03.0)\n \
                    41:   0   0  PCI-MSIX-0000:00:03.0    1-edge      vfio-msix[1](0000:00:03.0)\n \
                    42:   0   0  IR-PCI-MSIX-0000:00:04.0    0-edge      virtio0\n";
        assert_eq!(super::count_lines(text), (2, 1));
    }
}
