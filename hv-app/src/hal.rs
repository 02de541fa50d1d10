//! The host services the virtualization crates need, over hv-app's frame
//! allocator: `x86_vcpu::Hal` (VMCB, host save area, permission maps) and
//! `axaddrspace::AxMmHal` (nested page tables, guest RAM).
//!
//! All frames come from below 4 GiB, which the boot page tables identity
//! map, so a physical address is its own virtual address.

use axaddrspace::{AxMmHal, HostPhysAddr, HostVirtAddr};
use hv_app::memory::FRAME_SIZE;

use crate::mem;

/// hv-app's implementation of the crates' host services.
#[derive(Debug, Clone, Copy)]
pub struct HvHal;

fn free(paddr: HostPhysAddr, count: usize) {
    if let Err(e) = mem::dealloc_frames(paddr.as_usize() as u64, count) {
        // A crate handing back frames it does not own is a bug there; the
        // frames stay allocated rather than being reused under someone.
        log::error!(
            "HAL: freeing {count} frame(s) at {:#x} failed: {e}",
            paddr.as_usize()
        );
    }
}

impl x86_vcpu::Hal for HvHal {
    fn alloc_frames(count: usize) -> Option<HostPhysAddr> {
        mem::alloc_frames(count, 1).map(|a| HostPhysAddr::from_usize(a as usize))
    }

    fn dealloc_frames(paddr: HostPhysAddr, count: usize) {
        free(paddr, count);
    }

    fn phys_to_virt(paddr: HostPhysAddr) -> HostVirtAddr {
        HostVirtAddr::from_usize(paddr.as_usize())
    }
}

impl AxMmHal for HvHal {
    fn alloc_frame() -> Option<HostPhysAddr> {
        let addr = mem::alloc_frames(1, 1)?;
        // SAFETY: a frame just allocated for the caller, identity mapped
        // (below 4 GiB) and used by nothing else; the trait promises zeroes.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, FRAME_SIZE as usize) };
        Some(HostPhysAddr::from_usize(addr as usize))
    }

    fn dealloc_frame(paddr: HostPhysAddr) {
        free(paddr, 1);
    }

    fn phys_to_virt(paddr: HostPhysAddr) -> HostVirtAddr {
        HostVirtAddr::from_usize(paddr.as_usize())
    }

    fn virt_to_phys(vaddr: HostVirtAddr) -> HostPhysAddr {
        HostPhysAddr::from_usize(vaddr.as_usize())
    }
}
