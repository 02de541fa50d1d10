//! The kernel heap: a first-fit free-list allocator over one contiguous
//! region, and [`LockedHeap`], its `#[global_allocator]` wrapper.
//!
//! Every block is a multiple of [`GRANULE`] (16) bytes at a 16-byte aligned
//! address, so the piece cut off in front of an aligned allocation, or left
//! behind it, is either empty or big enough to hold a free-block header:
//! splitting never fails and never wastes bytes. The free list is sorted by
//! address and neighbours merge on free.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use crate::{Error, Result};

/// Allocation granule and smallest block: a free-block header (size and
/// next pointer) fits in it.
pub const GRANULE: usize = 16;

/// The header written at the start of every free block.
#[repr(C)]
struct FreeBlock {
    size: usize,
    next: Option<NonNull<FreeBlock>>,
}

const _: () = assert!(core::mem::size_of::<FreeBlock>() <= GRANULE);

/// Counters of a [`Heap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeapStats {
    /// Bytes managed.
    pub total: usize,
    /// Bytes in live allocations (rounded up to the granule).
    pub used: usize,
    /// Number of blocks on the free list.
    pub free_blocks: usize,
}

/// A first-fit free-list heap over the region given to [`Heap::init`].
#[derive(Debug)]
pub struct Heap {
    head: Option<NonNull<FreeBlock>>,
    start: usize,
    end: usize,
    used: usize,
}

// SAFETY: the heap owns its region exclusively (the `init` contract); the
// raw pointers only ever point into it, so moving the heap to another CPU
// moves that ownership with it.
unsafe impl Send for Heap {}

/// The block size an allocation of `layout` takes, or `None` on overflow.
fn block_size(layout: &Layout) -> Option<usize> {
    layout.size().max(GRANULE).checked_next_multiple_of(GRANULE)
}

impl Heap {
    /// A heap with no memory: every allocation fails until [`Heap::init`].
    pub const fn empty() -> Self {
        Self {
            head: None,
            start: 0,
            end: 0,
            used: 0,
        }
    }

    /// Gives the heap the `size` bytes at `start` (trimmed to whole
    /// 16-byte granules). Fails with [`Error::HeapAlreadyInitialized`] the
    /// second time and [`Error::HeapTooSmall`] if no granule is left.
    ///
    /// # Safety
    ///
    /// The region is valid for reads and writes, belongs to nothing else,
    /// and outlives the heap.
    pub unsafe fn init(&mut self, start: usize, size: usize) -> Result {
        if self.end != 0 {
            return Err(Error::HeapAlreadyInitialized);
        }
        let too_small = || Error::HeapTooSmall { size };
        let first = start
            .checked_next_multiple_of(GRANULE)
            .ok_or_else(too_small)?;
        let end = start.checked_add(size).ok_or_else(too_small)? & !(GRANULE - 1);
        if end <= first {
            return Err(too_small());
        }
        let block = first as *mut FreeBlock;
        // SAFETY: `block` is 16-byte aligned and the whole granule-sized
        // header lies in the region the caller gave us.
        unsafe {
            block.write(FreeBlock {
                size: end - first,
                next: None,
            })
        };
        self.head = NonNull::new(block);
        self.start = first;
        self.end = end;
        Ok(())
    }

    /// The counters.
    pub fn stats(&self) -> HeapStats {
        let mut free_blocks = 0;
        let mut cur = self.head;
        while let Some(b) = cur {
            free_blocks += 1;
            // SAFETY: every list node is a header we wrote inside the region.
            cur = unsafe { b.as_ref().next };
        }
        HeapStats {
            total: self.end - self.start,
            used: self.used,
            free_blocks,
        }
    }

    /// Allocates a block for `layout`; `None` if no free block fits.
    pub fn alloc(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let size = block_size(&layout)?;
        let align = layout.align().max(GRANULE);
        let mut prev: Option<NonNull<FreeBlock>> = None;
        let mut cur = self.head;
        while let Some(block) = cur {
            let b_start = block.as_ptr() as usize;
            // SAFETY: list nodes are headers we wrote inside the region.
            let (b_size, next) = unsafe { ((*block.as_ptr()).size, (*block.as_ptr()).next) };
            let b_end = b_start + b_size;
            let fit = b_start
                .checked_next_multiple_of(align)
                .and_then(|a| Some((a, a.checked_add(size)?)))
                .filter(|&(_, a_end)| a_end <= b_end);
            if let Some((a_start, a_end)) = fit {
                // Both gaps are multiples of GRANULE: empty or a block.
                let mut link = next;
                if a_end < b_end {
                    let back = a_end as *mut FreeBlock;
                    // SAFETY: `back` is granule aligned, inside this free
                    // block, with at least GRANULE bytes after it.
                    unsafe {
                        back.write(FreeBlock {
                            size: b_end - a_end,
                            next: link,
                        })
                    };
                    link = NonNull::new(back);
                }
                if a_start > b_start {
                    // SAFETY: `block` is a valid header; keep it as the
                    // front remainder.
                    unsafe {
                        (*block.as_ptr()).size = a_start - b_start;
                        (*block.as_ptr()).next = link;
                    }
                    link = Some(block);
                }
                self.set_next(prev, link);
                self.used += size;
                return NonNull::new(a_start as *mut u8);
            }
            prev = cur;
            cur = next;
        }
        None
    }

    fn set_next(&mut self, prev: Option<NonNull<FreeBlock>>, link: Option<NonNull<FreeBlock>>) {
        match prev {
            // SAFETY: `p` is a header we wrote inside the region.
            Some(p) => unsafe { (*p.as_ptr()).next = link },
            None => self.head = link,
        }
    }

    /// Returns the block at `ptr` allocated for `layout` to the free list,
    /// merging it with free neighbours. Fails with [`Error::BadFree`] (and
    /// changes nothing) if the block is not inside the heap, not aligned,
    /// or overlaps a free block (a double free).
    ///
    /// # Safety
    ///
    /// `ptr` came from [`Heap::alloc`] of this heap with the same `layout`
    /// and is not used afterwards.
    pub unsafe fn dealloc(&mut self, ptr: NonNull<u8>, layout: Layout) -> Result {
        let addr = ptr.as_ptr() as usize;
        let bad = || Error::BadFree { addr };
        let size = block_size(&layout).ok_or_else(bad)?;
        let end = addr.checked_add(size).ok_or_else(bad)?;
        if addr % GRANULE != 0 || addr < self.start || end > self.end {
            return Err(bad());
        }
        // Find the free blocks around `addr`.
        let mut prev: Option<NonNull<FreeBlock>> = None;
        let mut next = self.head;
        while let Some(n) = next {
            if n.as_ptr() as usize >= addr {
                break;
            }
            prev = next;
            // SAFETY: list nodes are headers we wrote inside the region.
            next = unsafe { (*n.as_ptr()).next };
        }
        // SAFETY (both reads): list nodes are headers inside the region.
        let prev_end = prev.map(|p| p.as_ptr() as usize + unsafe { (*p.as_ptr()).size });
        if prev_end.is_some_and(|e| e > addr) || next.is_some_and(|n| (n.as_ptr() as usize) < end) {
            return Err(bad());
        }
        let block = ptr.cast::<FreeBlock>();
        let mut block_size = size;
        let mut link = next;
        if let Some(n) = next.filter(|n| n.as_ptr() as usize == end) {
            // SAFETY: `n` is a header inside the region; merge it.
            unsafe {
                block_size += (*n.as_ptr()).size;
                link = (*n.as_ptr()).next;
            }
        }
        if let (Some(p), Some(true)) = (prev, prev_end.map(|e| e == addr)) {
            // SAFETY: `p` is a header inside the region; it absorbs the
            // freed block (and its merged successor).
            unsafe {
                (*p.as_ptr()).size += block_size;
                (*p.as_ptr()).next = link;
            }
        } else {
            // SAFETY: the freed block is granule aligned, at least GRANULE
            // long, inside the region and no longer used by the caller.
            unsafe {
                block.as_ptr().write(FreeBlock {
                    size: block_size,
                    next: link,
                })
            };
            self.set_next(prev, Some(block));
        }
        self.used -= size;
        Ok(())
    }
}

/// A [`Heap`] behind a spin lock, usable as `#[global_allocator]`.
#[derive(Debug)]
pub struct LockedHeap(spin::Mutex<Heap>);

impl LockedHeap {
    /// An empty heap; [`LockedHeap::init`] gives it memory.
    pub const fn empty() -> Self {
        Self(spin::Mutex::new(Heap::empty()))
    }

    /// Gives the heap its region; see [`Heap::init`].
    ///
    /// # Safety
    ///
    /// As for [`Heap::init`].
    pub unsafe fn init(&self, start: usize, size: usize) -> Result {
        // SAFETY: forwarded contract.
        unsafe { self.0.lock().init(start, size) }
    }

    /// The counters.
    pub fn stats(&self) -> HeapStats {
        self.0.lock().stats()
    }
}

// SAFETY: `Heap::alloc` returns blocks of at least `layout.size()` bytes
// aligned to `layout.align()`, inside the region and disjoint from every
// live block; the lock serialises access.
unsafe impl GlobalAlloc for LockedHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0
            .lock()
            .alloc(layout)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(p) = NonNull::new(ptr) else { return };
        // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with
        // `layout`.
        let result = unsafe { self.0.lock().dealloc(p, layout) };
        if let Err(e) = result {
            // Heap corruption by unsafe code: nothing sane to go on with.
            panic!("heap: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heap over a fresh 16-byte aligned buffer of `len` bytes, with
    /// its start address.
    fn heap(len: usize) -> (Heap, Vec<u128>, usize) {
        let mut buf = vec![0u128; len / 16];
        let start = buf.as_mut_ptr() as usize;
        let mut h = Heap::empty();
        // SAFETY: the buffer outlives the heap in every test (returned
        // together, dropped after it).
        unsafe { h.init(start, len).unwrap() };
        (h, buf, start)
    }

    fn l(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn init_trims_to_granules_and_only_once() {
        let mut buf = vec![0u128; 8];
        let start = buf.as_mut_ptr() as usize;
        let mut h = Heap::empty();
        // SAFETY: in-bounds region of `buf`.
        unsafe { h.init(start + 1, 100).unwrap() };
        // [start + 16, start + 96): 80 bytes.
        assert_eq!(
            h.stats(),
            HeapStats {
                total: 80,
                used: 0,
                free_blocks: 1
            }
        );
        // SAFETY: never reached: refused before use.
        assert_res_eq!(
            unsafe { h.init(start, 128) },
            Err(Error::HeapAlreadyInitialized)
        );
        let mut e = Heap::empty();
        // SAFETY: refused before use.
        assert_res_eq!(
            unsafe { e.init(start + 1, 20) },
            Err(Error::HeapTooSmall { size: 20 })
        );
        assert_eq!(Heap::empty().alloc(l(8, 8)), None);
    }

    #[test]
    fn allocations_are_aligned_disjoint_and_inside() {
        let (mut h, _buf, start) = heap(4096);
        let a = h.alloc(l(1, 1)).unwrap().as_ptr() as usize;
        let b = h.alloc(l(24, 8)).unwrap().as_ptr() as usize;
        let c = h.alloc(l(64, 64)).unwrap().as_ptr() as usize;
        // First fit: a at the start, b right after a's 16-byte block.
        assert_eq!(a, start);
        assert_eq!(b, start + 16);
        assert_eq!(c % 64, 0);
        assert!(c >= b + 32);
        assert_eq!(h.stats().used, 16 + 32 + 64);
        // The gap in front of c (if any) is a free block that serves the
        // next small allocation.
        if c > b + 32 {
            let d = h.alloc(l(16, 16)).unwrap().as_ptr() as usize;
            assert_eq!(d, b + 32);
        }
    }

    #[test]
    fn free_then_reuse_and_merge() {
        let (mut h, _buf, start) = heap(256);
        let a = h.alloc(l(64, 16)).unwrap();
        let b = h.alloc(l(64, 16)).unwrap();
        let c = h.alloc(l(128, 16)).unwrap();
        assert_eq!(c.as_ptr() as usize, start + 128);
        // Full.
        assert_eq!(h.alloc(l(16, 16)), None);
        // SAFETY: a, b, c come from this heap with these layouts.
        unsafe {
            h.dealloc(b, l(64, 16)).unwrap();
            assert_eq!(h.alloc(l(64, 8)), Some(b), "first fit reuses b");
            h.dealloc(b, l(64, 8)).unwrap();
            // Free a then c: a merges with b, c with the pair.
            h.dealloc(a, l(64, 16)).unwrap();
            assert_eq!(h.stats().free_blocks, 1);
            h.dealloc(c, l(128, 16)).unwrap();
        }
        assert_eq!(
            h.stats(),
            HeapStats {
                total: 256,
                used: 0,
                free_blocks: 1
            }
        );
        // The whole heap is one block again.
        assert_eq!(
            h.alloc(l(256, 16)).map(|p| p.as_ptr() as usize),
            Some(start)
        );
    }

    #[test]
    fn large_alignment_splits_the_front() {
        let (mut h, _buf, start) = heap(3 * 4096);
        let p = h.alloc(l(4096, 4096)).unwrap().as_ptr() as usize;
        assert_eq!(p % 4096, 0);
        assert!(p >= start && p + 4096 <= start + 3 * 4096);
        let front = p - start;
        let blocks = usize::from(front > 0) + usize::from(p + 4096 < start + 3 * 4096);
        assert_eq!(h.stats().free_blocks, blocks);
        // SAFETY: from this heap with this layout.
        unsafe { h.dealloc(NonNull::new(p as *mut u8).unwrap(), l(4096, 4096)) }.unwrap();
        assert_eq!(h.stats().free_blocks, 1);
        assert_eq!(h.stats().used, 0);
    }

    #[test]
    fn exhaustion_and_oversized_requests_return_none() {
        let (mut h, _buf, _) = heap(1024);
        assert_eq!(h.alloc(l(1025, 1)), None);
        assert!(h.alloc(l(1024, 1)).is_some());
        assert_eq!(h.alloc(l(1, 1)), None);
        let huge = Layout::from_size_align(isize::MAX as usize - 64, 16).unwrap();
        assert_eq!(h.alloc(huge), None);
    }

    #[test]
    fn bad_frees_are_detected() {
        let (mut h, _buf, start) = heap(1024);
        let a = h.alloc(l(32, 16)).unwrap();
        let _b = h.alloc(l(32, 16)).unwrap();
        let addr = a.as_ptr() as usize;
        // SAFETY: these calls are refused before anything is touched, or
        // are genuine frees of `a`.
        unsafe {
            h.dealloc(a, l(32, 16)).unwrap();
            // Double free.
            assert_res_eq!(h.dealloc(a, l(32, 16)), Err(Error::BadFree { addr }));
            // Outside the heap, unaligned.
            let outside = NonNull::new((start + 4096) as *mut u8).unwrap();
            assert!(h.dealloc(outside, l(16, 16)).is_err());
            let odd = NonNull::new((start + 8) as *mut u8).unwrap();
            assert!(h.dealloc(odd, l(16, 16)).is_err());
        }
        assert_eq!(h.stats().used, 32);
    }

    #[test]
    fn random_workload_keeps_blocks_disjoint_and_intact() {
        let (mut h, _buf, start) = heap(64 * 1024);
        let total = h.stats().total;
        let mut seed = 0xdead_beef_u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        let mut live: Vec<(NonNull<u8>, Layout, u8)> = Vec::new();
        for round in 0..5000 {
            if next() % 5 < 3 || live.is_empty() {
                let layout = l(next() % 700 + 1, 1 << (next() % 8));
                if let Some(p) = h.alloc(layout) {
                    let a = p.as_ptr() as usize;
                    assert_eq!(a % layout.align(), 0);
                    assert!(a >= start && a + layout.size() <= start + total);
                    for (q, ql, _) in &live {
                        let b = q.as_ptr() as usize;
                        assert!(a + layout.size() <= b || b + ql.size() <= a, "overlap");
                    }
                    let tag = round as u8;
                    // SAFETY: `p` is a fresh block of `layout.size()` bytes.
                    unsafe { ptr::write_bytes(p.as_ptr(), tag, layout.size()) };
                    live.push((p, layout, tag));
                }
            } else {
                let (p, layout, tag) = live.swap_remove(next() % live.len());
                // SAFETY: a live block of ours: check the fill, then free.
                unsafe {
                    let bytes = core::slice::from_raw_parts(p.as_ptr(), layout.size());
                    assert!(bytes.iter().all(|&x| x == tag), "block was overwritten");
                    h.dealloc(p, layout).unwrap();
                }
            }
            let used: usize = live.iter().map(|(_, ly, _)| block_size(ly).unwrap()).sum();
            assert_eq!(h.stats().used, used);
        }
        for (p, layout, _) in live {
            // SAFETY: live blocks of ours.
            unsafe { h.dealloc(p, layout).unwrap() };
        }
        assert_eq!(h.stats().free_blocks, 1);
        assert!(h.alloc(l(total, 16)).is_some());
    }

    #[test]
    fn locked_heap_is_a_global_alloc() {
        let mut buf = vec![0u128; 64];
        let heap = LockedHeap::empty();
        // SAFETY: `buf` outlives `heap`.
        unsafe { heap.init(buf.as_mut_ptr() as usize, 1024).unwrap() };
        let layout = l(100, 8);
        // SAFETY: GlobalAlloc use with a non-zero layout; freed once.
        unsafe {
            let p = GlobalAlloc::alloc(&heap, layout);
            assert!(!p.is_null());
            assert_eq!(heap.stats().used, 112);
            GlobalAlloc::dealloc(&heap, p, layout);
            assert!(GlobalAlloc::alloc(&heap, l(2048, 8)).is_null());
        }
        assert_eq!(heap.stats().used, 0);
    }
}
