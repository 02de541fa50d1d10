//! Physical memory: the frame allocator built from the Multiboot memory
//! map, and the global heap carved from it.

use hv_app::frame::FrameAllocator;
use hv_app::heap::{HeapStats, LockedHeap};
use hv_app::memory::{
    FRAME_SIZE, MAX_RANGES, PhysRange, RangeSet, boot_info_ranges, usable_ranges,
};
use hv_app::multiboot::{BootInfo, MemoryKind, MemoryRegion};
use hv_app::{Error, Result};
use spin::Mutex;

use crate::phys::{IDENTITY_MAP_END, IdentityMapped};

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// The frame allocator, once [`init`] has run.
static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);

/// Largest heap: 16 MiB, or an eighth of the usable memory if less.
const HEAP_MAX: u64 = 16 << 20;

unsafe extern "C" {
    /// First byte of the image (linker.ld).
    static __image_start: u8;
    /// End of the image including .bss (linker.ld).
    static __image_end: u8;
}

/// What [`init`] set up, for the log.
#[derive(Debug, Clone, Copy)]
pub struct MemorySetup {
    /// Usable ranges managed by the frame allocator.
    pub ranges: usize,
    /// Where the allocator's bitmap is, and its size in bytes.
    pub bitmap: PhysRange,
    /// The heap's physical range.
    pub heap: PhysRange,
}

/// Builds the frame allocator over the usable memory below
/// [`IDENTITY_MAP_END`] (all of it is identity mapped), minus the first
/// MiB, the image and the loader's data; places its bitmap in that memory;
/// then gives the heap min(16 MiB, 1/8 of the frames). Call once.
pub fn init(boot: &BootInfo, mem: &IdentityMapped) -> Result<MemorySetup> {
    let image = PhysRange::new(
        (&raw const __image_start) as u64,
        (&raw const __image_end) as u64,
    )?;
    let mut reserved: RangeSet<MAX_RANGES> = boot_info_ranges(boot, mem)?;
    reserved.insert(image)?;
    for r in reserved.as_slice() {
        log::debug!("  reserved [{:#x}, {:#x})", r.start, r.end);
    }
    let usable: RangeSet<MAX_RANGES> = if boot.memory_map.is_some() {
        usable_ranges(boot.memory_map(mem), reserved.as_slice(), IDENTITY_MAP_END)?
    } else {
        // No map: the loader's mem_upper, contiguous from 1 MiB.
        let upper = boot.memory.map_or(0, |m| u64::from(m.upper_kib) << 10);
        let region = MemoryRegion {
            base: 1 << 20,
            length: upper,
            kind: MemoryKind::Available,
        };
        usable_ranges([Ok(region)], reserved.as_slice(), IDENTITY_MAP_END)?
    };
    for r in usable.as_slice() {
        log::debug!("  usable [{:#x}, {:#x})", r.start, r.end);
    }
    let above: u64 = boot
        .memory_map(mem)
        .filter_map(|r| r.ok().filter(|r| r.kind == MemoryKind::Available))
        .map(|r| {
            r.end()
                .unwrap_or(u64::MAX)
                .saturating_sub(r.base.max(IDENTITY_MAP_END))
        })
        .sum();
    if above > 0 {
        log::warn!(
            "ignoring {} MiB of RAM above 4 GiB (not identity mapped yet)",
            above >> 20
        );
    }

    install(usable)
}

/// Puts the allocator's bitmap in `usable` (identity mapped memory that
/// nobody else owns), builds the allocator over the rest and gives the heap
/// min(16 MiB, 1/8 of the frames).
fn install(mut usable: RangeSet<MAX_RANGES>) -> Result<MemorySetup> {
    let words = FrameAllocator::bitmap_words(&usable);
    let bitmap_bytes = (words as u64 * 8).next_multiple_of(FRAME_SIZE);
    let bitmap_addr = usable.take(bitmap_bytes, FRAME_SIZE)?;
    // SAFETY: `take` removed these whole frames from the usable memory
    // (identity mapped RAM owned by nobody else), so the bitmap is
    // exclusively ours for ever; any bit pattern is a valid u64 and
    // FrameAllocator::new initialises all of it.
    let bitmap = unsafe { core::slice::from_raw_parts_mut(bitmap_addr as *mut u64, words) };
    let ranges = usable.len();
    let mut frames = FrameAllocator::new(bitmap, usable)?;

    let heap_frames = (HEAP_MAX / FRAME_SIZE).min(frames.total_frames() / 8);
    let heap_addr = frames
        .alloc(heap_frames as usize, 1)
        .ok_or(Error::OutOfMemory {
            bytes: heap_frames * FRAME_SIZE,
        })?;
    let heap = PhysRange::with_len(heap_addr, heap_frames * FRAME_SIZE)?;
    // SAFETY: the frames were just allocated for the heap and are never
    // freed; identity mapped, so the physical address is the pointer.
    unsafe { HEAP.init(heap.start as usize, heap.len() as usize)? };
    *FRAMES.lock() = Some(frames);
    Ok(MemorySetup {
        ranges,
        bitmap: PhysRange::with_len(bitmap_addr, bitmap_bytes)?,
        heap,
    })
}

/// Builds the frame allocator over one range `[start, end)` of memory that
/// is the hypervisor's alone (Type-1.5: the region Linux reserved, after
/// the image), places its bitmap there and gives the heap min(16 MiB, 1/8
/// of the frames). Call once per load of the image.
pub fn init_region(start: u64, end: u64) -> Result<MemorySetup> {
    let mut usable: RangeSet<MAX_RANGES> = RangeSet::default();
    usable.insert(PhysRange::new(start, end)?)?;
    usable.align_inward(FRAME_SIZE)?;
    install(usable)
}

/// Allocates `count` contiguous frames aligned to `align` frames; `None`
/// when out of memory or before [`init`].
pub fn alloc_frames(count: usize, align: usize) -> Option<u64> {
    FRAMES.lock().as_mut()?.alloc(count, align)
}

/// Frees frames from [`alloc_frames`].
pub fn dealloc_frames(addr: u64, count: usize) -> Result {
    match FRAMES.lock().as_mut() {
        Some(f) => f.dealloc(addr, count),
        None => Err(Error::FrameOutOfRange { addr, count }),
    }
}

/// `(free, total)` frames.
pub fn frame_counts() -> (u64, u64) {
    FRAMES
        .lock()
        .as_ref()
        .map_or((0, 0), |f| (f.free_frames(), f.total_frames()))
}

/// The heap's counters.
pub fn heap_stats() -> HeapStats {
    HEAP.stats()
}
