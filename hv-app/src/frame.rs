//! The physical frame allocator: one bit per 4 KiB frame over the span of
//! the usable ranges, contiguous runs with alignment.
//!
//! A set bit is a frame that cannot be handed out (allocated, or not usable
//! memory at all); the usable ranges are kept too, so freeing a frame that
//! was never usable is an error rather than a gift of reserved memory.

use crate::memory::{FRAME_SIZE, MAX_RANGES, PhysRange, RangeSet};
use crate::{Error, Result};

/// The frame allocator. It owns its bitmap (`&mut [u64]`), which the binary
/// places in usable memory taken out of the set it manages.
#[derive(Debug)]
pub struct FrameAllocator<'a> {
    bitmap: &'a mut [u64],
    /// Frame number of bit 0.
    base_pfn: u64,
    /// Frames the bitmap covers.
    frames: u64,
    usable: RangeSet<MAX_RANGES>,
    usable_frames: u64,
    free: u64,
    /// Every frame below this index is in use.
    hint: u64,
}

impl<'a> FrameAllocator<'a> {
    /// The number of `u64` bitmap words needed for the span of `usable`.
    pub fn bitmap_words(usable: &RangeSet<MAX_RANGES>) -> usize {
        usable.span().map_or(0, |s| {
            let frames = (s.end - s.start).div_ceil(FRAME_SIZE);
            frames.div_ceil(64) as usize
        })
    }

    /// An allocator over `usable` (4 KiB aligned ranges) with `bitmap` as
    /// its storage; every usable frame starts free. Fails with
    /// [`Error::BadRange`] for an unaligned range and
    /// [`Error::BitmapTooSmall`] if `bitmap` has fewer words than
    /// [`Self::bitmap_words`].
    pub fn new(bitmap: &'a mut [u64], usable: RangeSet<MAX_RANGES>) -> Result<Self> {
        for r in usable.as_slice() {
            if r.start % FRAME_SIZE != 0 || r.end % FRAME_SIZE != 0 {
                return Err(Error::BadRange {
                    start: r.start,
                    end: r.end,
                });
            }
        }
        let needed = Self::bitmap_words(&usable);
        if bitmap.len() < needed {
            return Err(Error::BitmapTooSmall {
                needed,
                given: bitmap.len(),
            });
        }
        let span = usable.span().unwrap_or_default();
        let base_pfn = span.start / FRAME_SIZE;
        let frames = (span.end - span.start) / FRAME_SIZE;
        bitmap.fill(u64::MAX);
        let mut this = Self {
            bitmap,
            base_pfn,
            frames,
            usable,
            usable_frames: 0,
            free: 0,
            hint: 0,
        };
        for r in usable.as_slice() {
            let first = r.start / FRAME_SIZE - base_pfn;
            let count = r.len() / FRAME_SIZE;
            this.set_range(first, count, false);
            this.usable_frames += count;
        }
        this.free = this.usable_frames;
        Ok(this)
    }

    /// Frames free now.
    pub const fn free_frames(&self) -> u64 {
        self.free
    }

    /// Usable frames managed (free or allocated).
    pub const fn total_frames(&self) -> u64 {
        self.usable_frames
    }

    /// The usable ranges managed.
    pub const fn usable(&self) -> &RangeSet<MAX_RANGES> {
        &self.usable
    }

    fn is_used(&self, i: u64) -> bool {
        self.bitmap[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set_range(&mut self, first: u64, count: u64, used: bool) {
        for i in first..first + count {
            let (w, b) = ((i / 64) as usize, i % 64);
            if used {
                self.bitmap[w] |= 1 << b;
            } else {
                self.bitmap[w] &= !(1 << b);
            }
        }
    }

    /// The first free frame index at or after `from`, skipping full words.
    fn next_free(&self, from: u64) -> Option<u64> {
        let mut i = from;
        while i < self.frames {
            let w = self.bitmap[(i / 64) as usize] | ((1u64 << (i % 64)) - 1);
            if w != u64::MAX {
                let found = (i & !63) + u64::from(w.trailing_ones());
                return (found < self.frames).then_some(found);
            }
            i = (i & !63) + 64;
        }
        None
    }

    /// The first used frame in `[from, to)`, if any.
    fn first_used(&self, from: u64, to: u64) -> Option<u64> {
        (from..to).find(|&i| self.is_used(i))
    }

    /// Allocates `count` contiguous frames whose physical address is a
    /// multiple of `align` frames (a power of two), and returns the address
    /// of the first. `None` when no such run is free, `count` is 0 or
    /// `align` is not a power of two. First fit, lowest address.
    pub fn alloc(&mut self, count: usize, align: usize) -> Option<u64> {
        let (count, align) = (count as u64, align as u64);
        if count == 0 || !align.is_power_of_two() || count > self.free {
            return None;
        }
        let mut i = self.hint;
        loop {
            i = self.next_free(i)?;
            let pfn = self.base_pfn + i;
            i = pfn.checked_next_multiple_of(align)? - self.base_pfn;
            let end = i.checked_add(count)?;
            if end > self.frames {
                return None;
            }
            match self.first_used(i, end) {
                Some(used) => i = used + 1,
                None => break,
            }
        }
        self.set_range(i, count, true);
        self.free -= count;
        if i == self.hint {
            self.hint = i + count;
        }
        Some((self.base_pfn + i) * FRAME_SIZE)
    }

    /// Allocates one frame.
    pub fn alloc_frame(&mut self) -> Option<u64> {
        self.alloc(1, 1)
    }

    /// Frees the `count` frames from `addr`. Fails with
    /// [`Error::MisalignedFrame`] if `addr` is not 4 KiB aligned,
    /// [`Error::FrameOutOfRange`] if the run is not within one usable range
    /// (or `count` is 0), and [`Error::FrameNotAllocated`] (freeing
    /// nothing) if any of the frames is free already.
    pub fn dealloc(&mut self, addr: u64, count: usize) -> Result {
        if addr % FRAME_SIZE != 0 {
            return Err(Error::MisalignedFrame(addr));
        }
        let out_of_range = || Error::FrameOutOfRange { addr, count };
        let len = (count as u64)
            .checked_mul(FRAME_SIZE)
            .ok_or_else(out_of_range)?;
        let run = PhysRange::with_len(addr, len).map_err(|_| out_of_range())?;
        if count == 0 || !self.usable.contains(&run) {
            return Err(out_of_range());
        }
        let first = addr / FRAME_SIZE - self.base_pfn;
        let count = count as u64;
        if let Some(free) = (first..first + count).find(|&i| !self.is_used(i)) {
            return Err(Error::FrameNotAllocated(
                (self.base_pfn + free) * FRAME_SIZE,
            ));
        }
        self.set_range(first, count, false);
        self.free += count;
        self.hint = self.hint.min(first);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ranges(list: &[(u64, u64)]) -> RangeSet<MAX_RANGES> {
        let mut s = RangeSet::new();
        for &(a, b) in list {
            s.insert(PhysRange::new(a, b).unwrap()).unwrap();
        }
        s
    }

    fn with<R>(list: &[(u64, u64)], f: impl FnOnce(&mut FrameAllocator<'_>) -> R) -> R {
        let usable = ranges(list);
        let mut bitmap = vec![0u64; FrameAllocator::bitmap_words(&usable)];
        let mut fa = FrameAllocator::new(&mut bitmap, usable).unwrap();
        f(&mut fa)
    }

    #[test]
    fn counts_only_usable_frames() {
        // Two ranges with a 1 MiB hole: 256 + 512 frames.
        with(&[(MIB, 2 * MIB), (3 * MIB, 5 * MIB)], |fa| {
            assert_eq!(fa.total_frames(), 768);
            assert_eq!(fa.free_frames(), 768);
        });
        let usable = ranges(&[(MIB, 2 * MIB), (3 * MIB, 5 * MIB)]);
        // Span 4 MiB = 1024 frames = 16 words.
        assert_eq!(FrameAllocator::bitmap_words(&usable), 16);
        let mut small = [0u64; 15];
        assert_res_eq!(
            FrameAllocator::new(&mut small, usable).err(),
            Some(Error::BitmapTooSmall {
                needed: 16,
                given: 15
            })
        );
        let mut bm = [0u64; 1];
        let bad = ranges(&[(0x1800, 0x3000)]);
        assert_res_eq!(
            FrameAllocator::new(&mut bm, bad).err(),
            Some(Error::BadRange {
                start: 0x1800,
                end: 0x3000
            })
        );
    }

    #[test]
    fn never_hands_out_a_frame_outside_the_ranges_or_twice() {
        with(&[(0x10_0000, 0x10_3000), (0x20_0000, 0x20_2000)], |fa| {
            let mut got = Vec::new();
            while let Some(a) = fa.alloc_frame() {
                got.push(a);
            }
            assert_eq!(got, [0x10_0000, 0x10_1000, 0x10_2000, 0x20_0000, 0x20_1000]);
            assert_eq!(fa.free_frames(), 0);
            // Exhausted: None, also for a run.
            assert_eq!(fa.alloc(1, 1), None);
            assert_eq!(fa.alloc(2, 1), None);
        });
    }

    #[test]
    fn free_then_reuse() {
        with(&[(MIB, 2 * MIB)], |fa| {
            let a = fa.alloc_frame().unwrap();
            let b = fa.alloc_frame().unwrap();
            let c = fa.alloc_frame().unwrap();
            assert_eq!((a, b, c), (MIB, MIB + 0x1000, MIB + 0x2000));
            fa.dealloc(b, 1).unwrap();
            assert_eq!(fa.free_frames(), 254);
            // The lowest free frame comes back first.
            assert_eq!(fa.alloc_frame(), Some(b));
            fa.dealloc(a, 1).unwrap();
            fa.dealloc(b, 1).unwrap();
            // A 2-frame run now fits where a and b were.
            assert_eq!(fa.alloc(2, 1), Some(a));
        });
    }

    #[test]
    fn contiguous_runs_respect_alignment_and_holes() {
        // Ranges [1 MiB, 1 MiB + 12 KiB) and [2 MiB, 6 MiB).
        with(&[(MIB, MIB + 0x3000), (2 * MIB, 6 * MIB)], |fa| {
            // 4 frames do not fit the first range.
            assert_eq!(fa.alloc(4, 1), Some(2 * MIB));
            // IOPM: 3 frames (12 KiB) fit the first range.
            assert_eq!(fa.alloc(3, 1), Some(MIB));
            // MSRPM: 2 frames, 8 KiB aligned.
            let msrpm = fa.alloc(2, 2).unwrap();
            assert_eq!(msrpm, 2 * MIB + 0x4000);
            // 2 MiB aligned run of 512 frames: the only 2 MiB boundary with
            // room is 4 MiB.
            let big = fa.alloc(512, 512).unwrap();
            assert_eq!(big, 4 * MIB);
            assert_eq!(big % (2 * MIB), 0);
            // No second aligned 2 MiB run below 6 MiB.
            assert_eq!(fa.alloc(512, 512), None);
            // A single frame still comes from the lowest free spot.
            assert_eq!(fa.alloc_frame(), Some(2 * MIB + 0x6000));
            // Bad requests.
            assert_eq!(fa.alloc(0, 1), None);
            assert_eq!(fa.alloc(1, 3), None);
            assert_eq!(fa.alloc(1, 0), None);
        });
    }

    #[test]
    fn alignment_is_physical_not_relative_to_the_span() {
        // The span starts at an odd frame: 16 KiB alignment means physical
        // multiples of 0x4000.
        with(&[(0x10_1000, 0x11_0000)], |fa| {
            assert_eq!(fa.alloc(1, 4), Some(0x10_4000));
            assert_eq!(fa.alloc_frame(), Some(0x10_1000));
        });
    }

    #[test]
    fn bad_frees_are_errors_and_change_nothing() {
        with(&[(MIB, 2 * MIB), (3 * MIB, 4 * MIB)], |fa| {
            let a = fa.alloc(2, 1).unwrap();
            assert_res_eq!(fa.dealloc(a + 1, 1), Err(Error::MisalignedFrame(a + 1)));
            // In the hole between the ranges (marked used, never usable).
            assert_res_eq!(
                fa.dealloc(2 * MIB, 1),
                Err(Error::FrameOutOfRange {
                    addr: 2 * MIB,
                    count: 1
                })
            );
            // Straddling the end of a range.
            assert_res_eq!(
                fa.dealloc(2 * MIB - 0x1000, 2),
                Err(Error::FrameOutOfRange {
                    addr: 2 * MIB - 0x1000,
                    count: 2
                })
            );
            assert_res_eq!(
                fa.dealloc(a, 0),
                Err(Error::FrameOutOfRange { addr: a, count: 0 })
            );
            // Double free, also partially: nothing is freed.
            assert_res_eq!(fa.dealloc(a, 3), Err(Error::FrameNotAllocated(a + 0x2000)));
            assert_eq!(fa.free_frames(), 510);
            fa.dealloc(a, 2).unwrap();
            assert_res_eq!(fa.dealloc(a, 1), Err(Error::FrameNotAllocated(a)));
            assert_eq!(fa.free_frames(), 512);
            assert!(fa.dealloc(!0xfff, usize::MAX).is_err());
        });
    }

    #[test]
    fn random_alloc_free_keeps_runs_disjoint() {
        // A small LCG drives allocations of 1-8 frames with alignments of
        // 1-8 frames and random frees; an independent map checks that no
        // frame is handed out twice and the free count stays exact.
        with(
            &[(MIB, MIB + 0x40000), (2 * MIB, 2 * MIB + 0x80000)],
            |fa| {
                let total = fa.total_frames();
                assert_eq!(total, 64 + 128);
                let mut seed = 0x1234_5678_u64;
                let mut next = move || {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    seed >> 33
                };
                let mut owned = std::collections::BTreeMap::new(); // frame -> run
                let mut live: Vec<(u64, usize)> = Vec::new();
                for _ in 0..4000 {
                    if next() % 3 != 0 || live.is_empty() {
                        let count = (next() % 8 + 1) as usize;
                        let align = 1usize << (next() % 4);
                        if let Some(a) = fa.alloc(count, align) {
                            assert_eq!(a % (align as u64 * FRAME_SIZE), 0);
                            for k in 0..count as u64 {
                                let f = a + k * FRAME_SIZE;
                                assert!(fa.usable().contains(&PhysRange::with_len(f, 1).unwrap()));
                                assert!(owned.insert(f, a).is_none(), "frame {f:#x} twice");
                            }
                            live.push((a, count));
                        }
                    } else {
                        let (a, count) = live.swap_remove((next() as usize) % live.len());
                        fa.dealloc(a, count).unwrap();
                        for k in 0..count as u64 {
                            owned.remove(&(a + k * FRAME_SIZE));
                        }
                    }
                    assert_eq!(fa.free_frames(), total - owned.len() as u64);
                }
                for (a, count) in live {
                    fa.dealloc(a, count).unwrap();
                }
                assert_eq!(fa.free_frames(), total);
                // Everything merged back: the whole second range is one run.
                assert_eq!(fa.alloc(128, 128), Some(2 * MIB));
            },
        );
    }

    #[test]
    fn empty_allocator_gives_nothing() {
        let mut bm: [u64; 0] = [];
        let mut fa = FrameAllocator::new(&mut bm, RangeSet::new()).unwrap();
        assert_eq!(fa.total_frames(), 0);
        assert_eq!(fa.alloc_frame(), None);
    }
}
