//! The host services this crate needs, supplied by the hypervisor.

use crate::{HostPhysAddr, HostVirtAddr};

/// Host memory access, implemented by the hypervisor (or by a test harness).
///
/// Frames are 4 KiB, 4 KiB aligned. `phys_to_virt` must give a pointer the
/// current code can dereference for the whole frame.
pub trait AxMmHal {
    /// Allocates one zeroed 4 KiB frame, or `None` when memory is exhausted.
    fn alloc_frame() -> Option<HostPhysAddr>;
    /// Returns a frame obtained from [`AxMmHal::alloc_frame`].
    fn dealloc_frame(paddr: HostPhysAddr);
    /// Host virtual address through which `paddr` is accessible.
    fn phys_to_virt(paddr: HostPhysAddr) -> HostVirtAddr;
    /// Host physical address behind `vaddr` (inverse of `phys_to_virt`).
    fn virt_to_phys(vaddr: HostVirtAddr) -> HostPhysAddr;
}
