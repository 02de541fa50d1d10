//! A host implementation of [`AxMmHal`] for tests (feature `test-util`).
//!
//! Frames come from the host heap (`std::alloc` with 4 KiB alignment) and
//! physical == virtual. Live frames are counted per thread, so tests running
//! in parallel threads can each assert they leaked nothing; a per-thread
//! limit makes allocation fail on purpose.

extern crate std;

use std::{
    alloc::{Layout, alloc_zeroed, dealloc},
    cell::Cell,
    collections::BTreeSet,
    sync::Mutex,
};

use memory_addr::PAGE_SIZE_4K;

use crate::{AxMmHal, HostPhysAddr, HostVirtAddr};

std::thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static LIMIT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Every frame handed out and not yet returned, to catch double frees.
static OUTSTANDING: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());

fn layout() -> Layout {
    // 4096 is a power of two and the size is a multiple of it.
    Layout::from_size_align(PAGE_SIZE_4K, PAGE_SIZE_4K).expect("valid frame layout")
}

/// Host-heap frame allocator with identity physical/virtual addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostHal;

impl HostHal {
    /// Frames allocated minus frames freed by the current thread.
    pub fn live_frames() -> isize {
        LIVE.with(Cell::get)
    }

    /// Makes `alloc_frame` fail in the current thread once `limit` more
    /// frames have been allocated (`None`: no limit).
    pub fn set_frame_limit(limit: Option<usize>) {
        LIMIT.with(|l| l.set(limit));
    }
}

impl AxMmHal for HostHal {
    fn alloc_frame() -> Option<HostPhysAddr> {
        if let Some(left) = LIMIT.with(Cell::get) {
            if left == 0 {
                return None;
            }
            LIMIT.with(|l| l.set(Some(left - 1)));
        }
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout()) };
        if ptr.is_null() {
            return None;
        }
        OUTSTANDING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ptr as usize);
        LIVE.with(|c| c.set(c.get() + 1));
        Some(HostPhysAddr::from_usize(ptr as usize))
    }

    fn dealloc_frame(paddr: HostPhysAddr) {
        let known = OUTSTANDING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&paddr.as_usize());
        assert!(
            known,
            "dealloc_frame of {paddr:?}: not an allocated frame (double free?)"
        );
        // SAFETY: `paddr` was returned by `alloc_zeroed` with this layout
        // (checked above) and is freed only once.
        unsafe { dealloc(paddr.as_usize() as *mut u8, layout()) };
        LIVE.with(|c| c.set(c.get() - 1));
    }

    fn phys_to_virt(paddr: HostPhysAddr) -> HostVirtAddr {
        HostVirtAddr::from_usize(paddr.as_usize())
    }

    fn virt_to_phys(vaddr: HostVirtAddr) -> HostPhysAddr {
        HostPhysAddr::from_usize(vaddr.as_usize())
    }
}
