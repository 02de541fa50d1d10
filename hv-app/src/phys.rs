//! Reading physical memory through the boot identity map.

use hv_app::multiboot::PhysReader;
use hv_app::{Error, Result};

/// End of the identity map the boot code builds (4 GiB, 2 MiB pages).
pub const IDENTITY_MAP_END: u64 = 4 << 30;

/// A [`PhysReader`] over the boot identity map: physical address `p` is
/// virtual address `p` for every `p` below [`IDENTITY_MAP_END`]. Address 0
/// is refused (a null pointer).
#[derive(Debug, Clone, Copy)]
pub struct IdentityMapped;

impl PhysReader for IdentityMapped {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        let oob = Error::OutOfBounds { addr: paddr, len };
        match paddr.checked_add(len) {
            Some(end) if paddr != 0 && end <= IDENTITY_MAP_END => {}
            _ => return Err(oob),
        }
        for (i, byte) in buf.iter_mut().enumerate() {
            let p = (paddr + i as u64) as *const u8;
            // SAFETY: `p` is non-null and below 4 GiB, which the boot page
            // tables map (present, 2 MiB pages) to the same physical
            // address. A byte read has no alignment needs; volatile keeps
            // the compiler from assuming anything about memory it does not
            // own (it may be firmware data or even part of this image).
            *byte = unsafe { core::ptr::read_volatile(p) };
        }
        Ok(())
    }
}
