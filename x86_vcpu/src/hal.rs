//! The host services this crate needs, and page-sized memory built on them.

use core::marker::PhantomData;

use axaddrspace::{HostPhysAddr, HostVirtAddr};

use crate::{Error, Result};

/// Size of one page frame.
pub const PAGE_SIZE: usize = 4096;

/// Host memory services, implemented by the hypervisor (or a test harness).
///
/// VMX and SVM structures live in physical memory the processor reads
/// directly: the VMXON region, the VMCS, the VMCB, the host save area, and
/// the I/O and MSR permission maps (the SVM ones are 12 KiB and 8 KiB and
/// must be physically contiguous).
pub trait Hal {
    /// Allocates `count` physically contiguous 4 KiB frames, aligned to
    /// 4 KiB, or `None` when memory is exhausted. The content is arbitrary.
    fn alloc_frames(count: usize) -> Option<HostPhysAddr>;
    /// Frees frames obtained from [`Hal::alloc_frames`] with the same `count`.
    fn dealloc_frames(paddr: HostPhysAddr, count: usize);
    /// Host virtual address through which `paddr` can be read and written.
    fn phys_to_virt(paddr: HostPhysAddr) -> HostVirtAddr;
}

/// `N` physically contiguous, zeroed 4 KiB frames, freed on drop.
/// Readable and writable as bytes (`AsRef<[u8]>`/`AsMut<[u8]>`).
pub struct PhysFrames<H: Hal> {
    paddr: HostPhysAddr,
    count: usize,
    _hal: PhantomData<H>,
}

impl<H: Hal> core::fmt::Debug for PhysFrames<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PhysFrames")
            .field("paddr", &self.paddr)
            .field("count", &self.count)
            .finish()
    }
}

impl<H: Hal> PhysFrames<H> {
    /// Allocates and zeroes `count` contiguous frames; `what` names the
    /// structure in the [`Error::NoMemory`] it may return.
    pub fn alloc_zeroed(count: usize, what: &'static str) -> Result<Self> {
        if count == 0 {
            return Err(Error::InvalidArgument("zero frames requested"));
        }
        let paddr = H::alloc_frames(count).ok_or(Error::NoMemory(what))?;
        if paddr.as_usize() % PAGE_SIZE != 0 {
            H::dealloc_frames(paddr, count);
            return Err(Error::InvalidArgument(
                "Hal::alloc_frames returned an unaligned frame",
            ));
        }
        let mut frames = Self {
            paddr,
            count,
            _hal: PhantomData,
        };
        frames.as_mut().fill(0);
        Ok(frames)
    }

    /// Allocates `count` frames with every byte set to `byte`.
    pub fn alloc_filled(count: usize, byte: u8, what: &'static str) -> Result<Self> {
        let mut f = Self::alloc_zeroed(count, what)?;
        f.as_mut().fill(byte);
        Ok(f)
    }

    /// Physical address of the first frame.
    pub fn paddr(&self) -> HostPhysAddr {
        self.paddr
    }

    /// Number of frames.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Host pointer to the first byte.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        H::phys_to_virt(self.paddr).as_mut_ptr()
    }
}

impl<H: Hal> AsRef<[u8]> for PhysFrames<H> {
    fn as_ref(&self) -> &[u8] {
        let ptr = H::phys_to_virt(self.paddr).as_ptr();
        // SAFETY: `Hal` guarantees `count` contiguous frames readable through
        // `phys_to_virt`; we own them until drop, and the borrow of `self`
        // keeps them alive and unaliased by writers.
        unsafe { core::slice::from_raw_parts(ptr, self.count * PAGE_SIZE) }
    }
}

impl<H: Hal> AsMut<[u8]> for PhysFrames<H> {
    fn as_mut(&mut self) -> &mut [u8] {
        let ptr = H::phys_to_virt(self.paddr).as_mut_ptr();
        // SAFETY: as in `as_ref`, and `&mut self` makes the access exclusive.
        unsafe { core::slice::from_raw_parts_mut(ptr, self.count * PAGE_SIZE) }
    }
}

impl<H: Hal> Drop for PhysFrames<H> {
    fn drop(&mut self) {
        H::dealloc_frames(self.paddr, self.count);
    }
}

/// A [`Hal`] over the test process's heap (physical = virtual address).
#[cfg(test)]
pub(crate) mod test_hal {
    use super::*;
    use std::alloc::{Layout, alloc, dealloc};

    pub(crate) struct TestHal;

    impl Hal for TestHal {
        fn alloc_frames(count: usize) -> Option<HostPhysAddr> {
            let layout = Layout::from_size_align(count * PAGE_SIZE, PAGE_SIZE).ok()?;
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { alloc(layout) };
            if p.is_null() {
                return None;
            }
            Some(HostPhysAddr::from(p as usize))
        }

        fn dealloc_frames(paddr: HostPhysAddr, count: usize) {
            let layout = Layout::from_size_align(count * PAGE_SIZE, PAGE_SIZE).unwrap();
            // SAFETY: `paddr` came from `alloc_frames` with the same layout.
            unsafe { dealloc(paddr.as_usize() as *mut u8, layout) }
        }

        fn phys_to_virt(paddr: HostPhysAddr) -> HostVirtAddr {
            HostVirtAddr::from(paddr.as_usize())
        }
    }

    #[test]
    fn frames_are_zeroed_aligned_and_freed() {
        let f = PhysFrames::<TestHal>::alloc_filled(3, 0xff, "test").unwrap();
        assert_eq!(f.paddr().as_usize() % PAGE_SIZE, 0);
        assert_eq!(f.as_ref().len(), 3 * PAGE_SIZE);
        assert!(f.as_ref().iter().all(|&b| b == 0xff));
        let g = PhysFrames::<TestHal>::alloc_zeroed(1, "test").unwrap();
        assert!(g.as_ref().iter().all(|&b| b == 0));
        assert!(matches!(
            PhysFrames::<TestHal>::alloc_zeroed(0, "x"),
            Err(Error::InvalidArgument(_))
        ));
    }
}
