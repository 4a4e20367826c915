//! The guest image: built by `build.rs` for `x86_64-unknown-none`, embedded here, loaded
//! with rust-vmm's `linux-loader` (ELF) into guest memory.

use linux_loader::loader::{Elf, KernelLoader};
use pvirq_guest_image_abi::layout::{BOOT_HEADER_SIZE, BOOT_MAGIC, BootHeader, IMAGE_BASE};
use std::io::Cursor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::VmmError;

/// The image's ELF bytes.
pub static GUEST_IMAGE: &[u8] = include_bytes!(env!("PVIRQ_GUEST_IMAGE"));

/// Loads the image into `mem` and returns its boot header.
pub fn load(mem: &GuestMemoryMmap) -> Result<BootHeader, VmmError> {
    let mut elf = Cursor::new(GUEST_IMAGE);
    let loaded = Elf::load(mem, None, &mut elf, None).map_err(VmmError::LoadImage)?;
    let mut raw = [0u8; BOOT_HEADER_SIZE];
    mem.read_slice(&mut raw, GuestAddress(IMAGE_BASE))
        .map_err(VmmError::MemoryAccess)?;
    let header = BootHeader::decode(&raw);
    if header.magic != BOOT_MAGIC || header.bsp_entry != loaded.kernel_load.0 {
        return Err(VmmError::BadImage {
            magic: header.magic,
            entry: loaded.kernel_load.0,
        });
    }
    Ok(header)
}
