//! Physical memory ranges: a fixed-capacity set of disjoint ranges, and the
//! carving of the Multiboot memory map into the frames hv-app may allocate.

use crate::multiboot::{BootInfo, MemoryKind, MemoryRegion, PhysReader, read_c_str};
use crate::{Error, Result};

/// Size of a page frame.
pub const FRAME_SIZE: u64 = 4096;

/// Memory below 1 MiB is never allocated: real-mode IVT, BIOS data,
/// EBDA, VGA, option ROMs, and the SMP trampoline later.
pub const LOW_MEMORY_END: u64 = 0x10_0000;

/// Bytes of the Multiboot v1 information structure that hv-app keeps out
/// of the allocator: up to the end of the framebuffer colour information
/// (offset 110 + 6, spec 3.3).
pub const BOOT_INFO_LEN: u64 = 116;

/// Most ranges a [`RangeSet`] of the frame allocator holds.
pub const MAX_RANGES: usize = 64;

/// A half-open physical range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PhysRange {
    /// First address.
    pub start: u64,
    /// Address just past the range.
    pub end: u64,
}

impl PhysRange {
    /// `[start, end)`; fails with [`Error::BadRange`] if `end < start`.
    pub const fn new(start: u64, end: u64) -> Result<Self> {
        if end < start {
            return Err(Error::BadRange { start, end });
        }
        Ok(Self { start, end })
    }

    /// `[start, start + len)`; fails with [`Error::BadRange`] if that
    /// overflows.
    pub const fn with_len(start: u64, len: u64) -> Result<Self> {
        match start.checked_add(len) {
            Some(end) => Ok(Self { start, end }),
            None => Err(Error::BadRange {
                start,
                end: u64::MAX,
            }),
        }
    }

    /// Length in bytes.
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range is empty.
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Whether `other` lies entirely within this range.
    pub const fn contains(&self, other: &PhysRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}

/// `value` rounded up to a multiple of `align` (a power of two), or `None`
/// on overflow.
pub const fn align_up(value: u64, align: u64) -> Option<u64> {
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// `value` rounded down to a multiple of `align` (a power of two).
pub const fn align_down(value: u64, align: u64) -> u64 {
    value & !(align - 1)
}

/// A set of disjoint, non-adjacent, sorted physical ranges with room for
/// `N` of them. Inserting merges, removing may split; running out of room
/// is [`Error::TooManyRanges`], never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeSet<const N: usize> {
    ranges: [PhysRange; N],
    len: usize,
}

impl<const N: usize> Default for RangeSet<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> RangeSet<N> {
    /// The empty set.
    pub const fn new() -> Self {
        Self {
            ranges: [PhysRange { start: 0, end: 0 }; N],
            len: 0,
        }
    }

    /// The ranges, sorted by address.
    pub fn as_slice(&self) -> &[PhysRange] {
        &self.ranges[..self.len]
    }

    /// Number of ranges.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the set is empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sum of the range lengths.
    pub fn total_bytes(&self) -> u64 {
        self.as_slice().iter().map(PhysRange::len).sum()
    }

    /// From the first range's start to the last range's end, if any.
    pub fn span(&self) -> Option<PhysRange> {
        let s = self.as_slice();
        Some(PhysRange {
            start: s.first()?.start,
            end: s.last()?.end,
        })
    }

    /// Whether `r` lies entirely within one range of the set.
    pub fn contains(&self, r: &PhysRange) -> bool {
        self.as_slice().iter().any(|x| x.contains(r))
    }

    fn rebuild(&mut self, parts: impl IntoIterator<Item = PhysRange>) -> Result {
        let mut out = [PhysRange::default(); N];
        let mut len = 0;
        for p in parts.into_iter().filter(|p| !p.is_empty()) {
            let slot = out
                .get_mut(len)
                .ok_or(Error::TooManyRanges { capacity: N })?;
            *slot = p;
            len += 1;
        }
        self.ranges = out;
        self.len = len;
        Ok(())
    }

    /// Adds `r`, merging it with every range it overlaps or touches. On
    /// error the set is unchanged.
    pub fn insert(&mut self, r: PhysRange) -> Result {
        if r.end < r.start {
            return Err(Error::BadRange {
                start: r.start,
                end: r.end,
            });
        }
        if r.is_empty() {
            return Ok(());
        }
        let mut merged = r;
        for x in self.as_slice() {
            if x.end >= r.start && x.start <= r.end {
                merged.start = merged.start.min(x.start);
                merged.end = merged.end.max(x.end);
            }
        }
        let old = *self;
        let before = old
            .as_slice()
            .iter()
            .copied()
            .filter(|x| x.end < merged.start);
        let after = old
            .as_slice()
            .iter()
            .copied()
            .filter(|x| x.start > merged.end);
        self.rebuild(before.chain(Some(merged)).chain(after))
    }

    /// Removes `r` from the set (a range may split in two). On error the
    /// set is unchanged.
    pub fn remove(&mut self, r: PhysRange) -> Result {
        if r.end < r.start {
            return Err(Error::BadRange {
                start: r.start,
                end: r.end,
            });
        }
        if r.is_empty() {
            return Ok(());
        }
        let old = *self;
        let parts = old.as_slice().iter().flat_map(|x| {
            if x.end <= r.start || x.start >= r.end {
                [*x, PhysRange::default()]
            } else {
                [
                    PhysRange {
                        start: x.start,
                        end: r.start.max(x.start),
                    },
                    PhysRange {
                        start: r.end.min(x.end),
                        end: x.end,
                    },
                ]
            }
        });
        self.rebuild(parts)
    }

    /// Shrinks every range to whole `granule`-aligned blocks (start rounded
    /// up, end rounded down) and drops those that vanish. `granule` must
    /// be a power of two ([`Error::BadAlignment`] otherwise).
    pub fn align_inward(&mut self, granule: u64) -> Result {
        if !granule.is_power_of_two() {
            return Err(Error::BadAlignment(granule));
        }
        let old = *self;
        let parts = old.as_slice().iter().map(|x| {
            let start = align_up(x.start, granule).unwrap_or(u64::MAX);
            let end = align_down(x.end, granule);
            PhysRange {
                start,
                end: end.max(start),
            }
        });
        self.rebuild(parts)
    }

    /// Takes `size` bytes aligned to `align` (a power of two) from the
    /// lowest range that has room, removes them from the set and returns
    /// their address. Fails with [`Error::OutOfMemory`] if no range has
    /// room.
    pub fn take(&mut self, size: u64, align: u64) -> Result<u64> {
        if !align.is_power_of_two() {
            return Err(Error::BadAlignment(align));
        }
        let found = self.as_slice().iter().find_map(|x| {
            let start = align_up(x.start, align)?;
            let end = start.checked_add(size)?;
            (end <= x.end).then_some(PhysRange { start, end })
        });
        let r = found.ok_or(Error::OutOfMemory { bytes: size })?;
        self.remove(r)?;
        Ok(r.start)
    }
}

/// The frames hv-app may allocate: the [`MemoryKind::Available`] regions of
/// the memory map, minus every region of another kind (a map may overlap;
/// reserved wins), minus `[0, LOW_MEMORY_END)`, minus `reserved`, minus
/// everything from `limit` up, each range shrunk to whole 4 KiB frames.
/// Stops at the first error of the memory map.
pub fn usable_ranges<I, const N: usize>(
    regions: I,
    reserved: &[PhysRange],
    limit: u64,
) -> Result<RangeSet<N>>
where
    I: IntoIterator<Item = Result<MemoryRegion>>,
{
    let mut set = RangeSet::<N>::new();
    let mut unusable = RangeSet::<N>::new();
    for region in regions {
        let region = region?;
        let end = region.end().ok_or(Error::RegionOverflow {
            base: region.base,
            length: region.length,
        })?;
        let r = PhysRange {
            start: region.base,
            end,
        };
        if region.kind == MemoryKind::Available {
            set.insert(r)?;
        } else {
            unusable.insert(r)?;
        }
    }
    for r in unusable.as_slice() {
        set.remove(*r)?;
    }
    set.remove(PhysRange {
        start: 0,
        end: LOW_MEMORY_END,
    })?;
    for r in reserved {
        set.remove(*r)?;
    }
    set.remove(PhysRange {
        start: limit,
        end: u64::MAX,
    })?;
    set.align_inward(FRAME_SIZE)?;
    Ok(set)
}

/// Where the loader's data lives, to keep it out of the allocator: the
/// information structure ([`BOOT_INFO_LEN`] bytes), the memory map, the
/// module table, every module, and the command line, loader name and
/// module strings (each with its NUL).
pub fn boot_info_ranges<R: PhysReader + ?Sized, const N: usize>(
    info: &BootInfo,
    reader: &R,
) -> Result<RangeSet<N>> {
    let mut set = RangeSet::<N>::new();
    let mut buf = [0u8; 4096];
    let mut add_str = |set: &mut RangeSet<N>, addr: u32| -> Result {
        let len = read_c_str(reader, u64::from(addr), &mut buf)?.len() as u64;
        set.insert(PhysRange::with_len(u64::from(addr), len + 1)?)
    };
    set.insert(PhysRange::with_len(info.info_addr, BOOT_INFO_LEN)?)?;
    if let Some(m) = info.memory_map {
        set.insert(PhysRange::with_len(u64::from(m.addr), u64::from(m.length))?)?;
    }
    if let Some(t) = info.modules {
        set.insert(PhysRange::with_len(
            u64::from(t.addr),
            16 * u64::from(t.count),
        )?)?;
    }
    for module in info.modules(reader) {
        let m = module?;
        set.insert(PhysRange::new(u64::from(m.start), u64::from(m.end))?)?;
        if m.string_addr != 0 {
            add_str(&mut set, m.string_addr)?;
        }
    }
    if let Some(a) = info.cmdline_addr {
        add_str(&mut set, a)?;
    }
    if let Some(a) = info.boot_loader_name_addr {
        add_str(&mut set, a)?;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multiboot::{BOOTLOADER_MAGIC, InfoFlags, SliceReader};

    fn r(start: u64, end: u64) -> PhysRange {
        PhysRange::new(start, end).unwrap()
    }

    fn set<const N: usize>(ranges: &[(u64, u64)]) -> RangeSet<N> {
        let mut s = RangeSet::new();
        for &(a, b) in ranges {
            s.insert(r(a, b)).unwrap();
        }
        s
    }

    fn pairs<const N: usize>(s: &RangeSet<N>) -> Vec<(u64, u64)> {
        s.as_slice().iter().map(|x| (x.start, x.end)).collect()
    }

    #[test]
    fn insert_merges_overlapping_and_adjacent_ranges() {
        let mut s = set::<8>(&[(0x3000, 0x4000), (0x1000, 0x2000), (0x8000, 0x9000)]);
        assert_eq!(
            pairs(&s),
            [(0x1000, 0x2000), (0x3000, 0x4000), (0x8000, 0x9000)]
        );
        // Touches the first, overlaps the second.
        s.insert(r(0x2000, 0x3800)).unwrap();
        assert_eq!(pairs(&s), [(0x1000, 0x4000), (0x8000, 0x9000)]);
        // Covers everything.
        s.insert(r(0, 0x10000)).unwrap();
        assert_eq!(pairs(&s), [(0, 0x10000)]);
        assert_eq!(s.total_bytes(), 0x10000);
        // Empty ranges change nothing; reversed ones are errors.
        s.insert(r(0x20000, 0x20000)).unwrap();
        assert_eq!(s.len(), 1);
        assert_res_eq!(
            s.insert(PhysRange { start: 2, end: 1 }),
            Err(Error::BadRange { start: 2, end: 1 })
        );
    }

    #[test]
    fn remove_trims_and_splits() {
        let mut s = set::<8>(&[(0x1000, 0x9000), (0x10000, 0x20000)]);
        s.remove(r(0x3000, 0x4000)).unwrap();
        assert_eq!(
            pairs(&s),
            [(0x1000, 0x3000), (0x4000, 0x9000), (0x10000, 0x20000)]
        );
        // Across a gap: trims the end of one and the start of the next.
        s.remove(r(0x8000, 0x11000)).unwrap();
        assert_eq!(
            pairs(&s),
            [(0x1000, 0x3000), (0x4000, 0x8000), (0x11000, 0x20000)]
        );
        // Whole ranges vanish.
        s.remove(r(0, 0x8000)).unwrap();
        assert_eq!(pairs(&s), [(0x11000, 0x20000)]);
        // Disjoint removal: nothing happens.
        s.remove(r(0x30000, 0x40000)).unwrap();
        assert_eq!(pairs(&s), [(0x11000, 0x20000)]);
    }

    #[test]
    fn capacity_overflow_is_an_error_and_keeps_the_set() {
        let mut s = set::<2>(&[(0x1000, 0x2000), (0x4000, 0x8000)]);
        assert_res_eq!(
            s.insert(r(0x10000, 0x11000)),
            Err(Error::TooManyRanges { capacity: 2 })
        );
        assert_res_eq!(
            s.remove(r(0x5000, 0x6000)),
            Err(Error::TooManyRanges { capacity: 2 })
        );
        assert_eq!(pairs(&s), [(0x1000, 0x2000), (0x4000, 0x8000)]);
        // A merge needs no extra room.
        s.insert(r(0x2000, 0x4000)).unwrap();
        assert_eq!(pairs(&s), [(0x1000, 0x8000)]);
    }

    #[test]
    fn align_inward_keeps_whole_frames() {
        let mut s = set::<8>(&[(0x1001, 0x3fff), (0x5000, 0x5800), (0x8800, 0xa000)]);
        s.align_inward(FRAME_SIZE).unwrap();
        assert_eq!(pairs(&s), [(0x2000, 0x3000), (0x9000, 0xa000)]);
        assert_res_eq!(s.align_inward(3), Err(Error::BadAlignment(3)));
        let mut top = set::<2>(&[(u64::MAX - 10, u64::MAX)]);
        top.align_inward(FRAME_SIZE).unwrap();
        assert!(top.is_empty());
    }

    #[test]
    fn take_finds_the_lowest_aligned_room() {
        let mut s = set::<8>(&[(0x1000, 0x3000), (0x5000, 0x20000)]);
        // 0x3000 bytes do not fit the first range.
        assert_res_eq!(s.take(0x3000, 0x1000), Ok(0x5000));
        assert_eq!(pairs(&s), [(0x1000, 0x3000), (0x8000, 0x20000)]);
        // 64 KiB alignment: 0x10000 in the second range, splitting it.
        assert_res_eq!(s.take(0x1000, 0x10000), Ok(0x10000));
        assert_eq!(
            pairs(&s),
            [(0x1000, 0x3000), (0x8000, 0x10000), (0x11000, 0x20000)]
        );
        assert_res_eq!(
            s.take(0x100000, 0x1000),
            Err(Error::OutOfMemory { bytes: 0x100000 })
        );
        assert_res_eq!(s.take(0x1000, 0x3000), Err(Error::BadAlignment(0x3000)));
    }

    fn region(base: u64, length: u64, kind: u32) -> Result<MemoryRegion> {
        Ok(MemoryRegion {
            base,
            length,
            kind: MemoryKind::from_raw(kind),
        })
    }

    /// QEMU's map for `-m 256M` (seen on its console).
    fn qemu_256m() -> Vec<Result<MemoryRegion>> {
        vec![
            region(0, 0x9_fc00, 1),
            region(0x9_fc00, 0x400, 2),
            region(0xf_0000, 0x1_0000, 2),
            region(0x10_0000, 0xfee_0000, 1),
            region(0xffe_0000, 0x2_0000, 2),
            region(0xfffc_0000, 0x4_0000, 2),
            region(0xfd_0000_0000, 0x3_0000_0000, 2),
        ]
    }

    #[test]
    fn usable_ranges_carve_low_memory_image_and_limit() {
        // Image [1 MiB, 1 MiB + 0x2_3456), a module at 0x20_0000, and an
        // unaligned reserved byte range that costs its whole frame.
        let reserved = [
            r(0x10_0000, 0x12_3456),
            r(0x20_0000, 0x20_1800),
            r(0x30_0010, 0x30_0020),
        ];
        let s: RangeSet<16> = usable_ranges(qemu_256m(), &reserved, 4 << 30).unwrap();
        assert_eq!(
            pairs(&s),
            [
                (0x12_4000, 0x20_0000),
                (0x20_2000, 0x30_0000),
                (0x30_1000, 0xffe_0000)
            ]
        );
        // Everything is frame aligned and below the top of RAM.
        for x in s.as_slice() {
            assert_eq!(x.start % FRAME_SIZE, 0);
            assert_eq!(x.end % FRAME_SIZE, 0);
        }
        // A limit of 128 MiB cuts the last range.
        let s: RangeSet<16> = usable_ranges(qemu_256m(), &[], 128 << 20).unwrap();
        assert_eq!(pairs(&s), [(0x10_0000, 0x800_0000)]);
    }

    #[test]
    fn reserved_regions_win_over_overlapping_available_ones() {
        let map = vec![
            region(0x10_0000, 0x100_0000, 1),
            region(0x80_0000, 0x1000, 2),
            region(0x90_0000, 0x800, 3), // ACPI reclaimable: not ours yet
        ];
        let s: RangeSet<8> = usable_ranges(map, &[], u64::MAX).unwrap();
        assert_eq!(
            pairs(&s),
            [
                (0x10_0000, 0x80_0000),
                (0x80_1000, 0x90_0000),
                (0x90_1000, 0x110_0000)
            ]
        );
    }

    #[test]
    fn usable_ranges_stop_at_a_map_error() {
        let map = vec![
            region(0x10_0000, 0x1000, 1),
            Err(Error::BadMemoryMapEntry {
                addr: 0x9000,
                size: 0,
            }),
        ];
        assert_res_eq!(
            usable_ranges::<_, 8>(map, &[], u64::MAX),
            Err(Error::BadMemoryMapEntry {
                addr: 0x9000,
                size: 0
            })
        );
        let map = vec![region(u64::MAX, 2, 1)];
        assert!(matches!(
            usable_ranges::<_, 8>(map, &[], u64::MAX),
            Err(Error::RegionOverflow { .. })
        ));
    }

    #[test]
    fn boot_info_ranges_cover_the_loader_data() {
        // Info at 0x9000, cmdline at 0x9200, mmap (2 entries) at 0x9300,
        // one module [0x20_0000, 0x20_1234) named at 0x9400, module table
        // at 0x9500, loader name at 0x9600.
        const BASE: u64 = 0x9000;
        let mut mem = vec![0u8; 0x800];
        let mut put = |addr: u64, bytes: &[u8]| {
            let i = (addr - BASE) as usize;
            mem[i..i + bytes.len()].copy_from_slice(bytes);
        };
        let flags = InfoFlags::CMDLINE
            | InfoFlags::MODULES
            | InfoFlags::MEMORY_MAP
            | InfoFlags::BOOT_LOADER_NAME;
        put(BASE, &flags.bits().to_le_bytes());
        put(BASE + 16, &0x9200u32.to_le_bytes());
        put(BASE + 20, &1u32.to_le_bytes());
        put(BASE + 24, &0x9500u32.to_le_bytes());
        put(BASE + 44, &48u32.to_le_bytes());
        put(BASE + 48, &0x9300u32.to_le_bytes());
        put(BASE + 64, &0x9600u32.to_le_bytes());
        put(0x9200, b"hv log=debug\0");
        put(0x9300, &20u32.to_le_bytes());
        put(0x9318, &20u32.to_le_bytes());
        put(0x9400, b"guest.elf\0");
        put(0x9500, &0x20_0000u32.to_le_bytes());
        put(0x9504, &0x20_1234u32.to_le_bytes());
        put(0x9508, &0x9400u32.to_le_bytes());
        put(0x9600, b"qemu\0");
        let reader = SliceReader::new(BASE, &mem);
        let info = BootInfo::parse(&reader, BOOTLOADER_MAGIC, BASE).unwrap();
        let s: RangeSet<16> = boot_info_ranges(&info, &reader).unwrap();
        assert_eq!(
            pairs(&s),
            [
                (0x9000, 0x9000 + 116),
                (0x9200, 0x9200 + 13),
                (0x9300, 0x9330),
                (0x9400, 0x9400 + 10),
                (0x9500, 0x9510),
                (0x9600, 0x9605),
                (0x20_0000, 0x20_1234),
            ]
        );
        // A string without a NUL in memory is an error.
        let mut bad = mem.clone();
        let end = bad.len();
        bad[end - 4..].copy_from_slice(b"abcd");
        let mut bad_info = info;
        bad_info.cmdline_addr = Some((BASE as u32) + end as u32 - 4);
        let reader = SliceReader::new(BASE, &bad);
        assert!(matches!(
            boot_info_ranges::<_, 16>(&bad_info, &reader),
            Err(Error::OutOfBounds { .. })
        ));
    }
}
