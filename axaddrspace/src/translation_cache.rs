//! Remembering where recently read guest pages are in host memory.
//!
//! The hypervisor reads guest memory on its hot paths: on an MMIO exit it
//! walks the guest's page tables (four 8-byte reads in 4-level paging) and
//! fetches the instruction. Through [`DynAddrSpace::read`] each read finds
//! its memory area in a B-tree and walks the nested page table again. A
//! [`TranslationCache`] keeps the host address of the last few guest pages
//! read, so that a repeated read is a compare and a load.
//!
//! The cache is keyed by the address space's
//! [`mapping_epoch`](DynAddrSpace::mapping_epoch), which changes whenever a
//! page may lose its host page (unmap, clear) and differs between address
//! spaces: a cache used with another address space, or after an unmap, is
//! emptied first, so it never reads a host page the guest page no longer
//! has. Only pages of RAM areas that are mapped are cached; everything else
//! (device areas, lazy pages not populated yet, holes) goes through
//! [`DynAddrSpace::read`] with its exact results.

use core::cell::Cell;

use memory_addr::PAGE_SIZE_4K;
use page_table_entry::MappingFlags;

use crate::walk_cache::{MAX_READS, Memo};
use crate::{
    AxMmHal, DynAddrSpace, GuestMemoryReader, GuestPageWalker, GuestPhysAddr, GuestTranslation,
    GuestVirtAddr, Result, WalkCache,
};

/// Number of guest pages a [`TranslationCache`] remembers.
pub const TRANSLATION_CACHE_ENTRIES: usize = SETS * WAYS;

/// The cache is 2-way set associative: a page can only be in the two slots
/// of its set, so a lookup is two compares.
const SETS: usize = 8;
const WAYS: usize = 2;

/// The set of guest page number `page`: its low bits folded with the bits
/// of its 2 MiB index, so that the pages of one page-table
/// hierarchy and of the code they map spread over the sets.
#[inline(always)]
fn set_of(page: usize) -> usize {
    (page ^ (page >> 9)) % SETS
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    /// Guest page number + 1 (0: empty).
    key: usize,
    /// Host virtual address of the page.
    hva: usize,
}

/// Remembering where recently read guest pages are in host memory.
///
/// The hypervisor reads guest memory on its hot paths: on an MMIO exit it
/// walks the guest's page tables (four 8-byte reads in 4-level paging) and
/// fetches the instruction. Through [`DynAddrSpace::read`] each read finds
/// its memory area in a B-tree and walks the nested page table again. A
/// [`TranslationCache`] keeps the host address of the last few guest pages
/// read, so that a repeated read is a compare and a load.
///
/// The cache is keyed by the address space's
/// [`mapping_epoch`](DynAddrSpace::mapping_epoch), which changes whenever a
/// page may lose its host page (unmap, clear) and differs between address
/// spaces: a cache used with another address space, or after an unmap, is
/// emptied first, so it never reads a host page the guest page no longer
/// has. Only pages of RAM areas that are mapped are cached; everything else
/// (device areas, lazy pages not populated yet, holes) goes through
/// [`DynAddrSpace::read`] with its exact results.
///
/// Keep one per vCPU and read through [`TranslationCache::reader`].
#[derive(Debug, Clone, Default)]
pub struct TranslationCache {
    epoch: u64,
    slots: [Slot; TRANSLATION_CACHE_ENTRIES],
    /// Per set: the way the next fill replaces.
    victim: [u8; SETS],
    hits: u64,
    misses: u64,
}

impl TranslationCache {
    /// An empty cache.
    pub const fn new() -> Self {
        Self {
            epoch: 0,
            slots: [Slot { key: 0, hva: 0 }; TRANSLATION_CACHE_ENTRIES],
            victim: [0; SETS],
            hits: 0,
            misses: 0,
        }
    }

    /// Forgets every page.
    pub fn clear(&mut self) {
        self.slots = [Slot::default(); TRANSLATION_CACHE_ENTRIES];
        self.victim = [0; SETS];
    }

    /// Number of pages remembered.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.key != 0).count()
    }

    /// Whether no page is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Page lookups answered by the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Page lookups that had to find the area and walk the nested page table.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// A reader of `aspace`'s memory through this cache. The cache is
    /// emptied first if it last served another address space or `aspace`
    /// unmapped something since.
    #[inline]
    pub fn reader<'a, H: AxMmHal>(
        &'a mut self,
        aspace: &'a DynAddrSpace<H>,
    ) -> CachedGuestMemory<'a, H> {
        let epoch = aspace.mapping_epoch();
        if self.epoch != epoch {
            self.clear();
            self.epoch = epoch;
        }
        CachedGuestMemory {
            aspace,
            epoch,
            slots: Cell::from_mut(&mut self.slots[..]).as_slice_of_cells(),
            victim: Cell::from_mut(&mut self.victim[..]).as_slice_of_cells(),
            hits: Cell::from_mut(&mut self.hits),
            misses: Cell::from_mut(&mut self.misses),
        }
    }
}

/// Guest memory of one address space read through a [`TranslationCache`]
/// (from [`TranslationCache::reader`]); reads give exactly what
/// [`DynAddrSpace::read`] gives.
pub struct CachedGuestMemory<'a, H: AxMmHal> {
    aspace: &'a DynAddrSpace<H>,
    /// `aspace`'s mapping epoch (it cannot change while `aspace` is borrowed).
    epoch: u64,
    slots: &'a [Cell<Slot>],
    victim: &'a [Cell<u8>],
    hits: &'a Cell<u64>,
    misses: &'a Cell<u64>,
}

impl<H: AxMmHal> core::fmt::Debug for CachedGuestMemory<'_, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CachedGuestMemory")
            .field("kind", &self.aspace.kind())
            .field("epoch", &self.aspace.mapping_epoch())
            .finish_non_exhaustive()
    }
}

impl<H: AxMmHal> CachedGuestMemory<'_, H> {
    /// [`GuestPageWalker::translate_cached`] through this reader: a walk
    /// remembered in `walks` is checked by reading its paging entries at
    /// the host addresses this reader found for them (while the address
    /// space's mapping epoch is unchanged), which is the cheapest exact
    /// check. The result is always what [`GuestPageWalker::translate`]
    /// gives now.
    #[inline]
    pub fn translate(
        &self,
        walker: &GuestPageWalker,
        walks: &mut WalkCache,
        cr3: u64,
        gva: GuestVirtAddr,
    ) -> Result<GuestTranslation> {
        let va = gva.as_usize() as u64;
        if let Some(m) = walks.find_mut(walker, cr3, va >> 12) {
            let valid = if m.host_epoch() == self.epoch {
                // SAFETY: `self.aspace` is alive (borrowed) and has epoch
                // `self.epoch`, the epoch the host addresses were found under.
                unsafe { m.host_values_match() }
            } else if m.still_valid(self) {
                self.remember_host_addrs(m);
                true
            } else {
                false
            };
            if valid {
                let t = m.result_for(va);
                walks.count_hit();
                return Ok(t);
            }
        }
        let t = walker.translate_and_remember(self, walks, cr3, gva)?;
        if let Some(m) = walks.find_mut(walker, cr3, va >> 12) {
            self.remember_host_addrs(m);
        }
        Ok(t)
    }

    /// Finds the host addresses of `m`'s paging entries (all mapped RAM, or
    /// the memo gets none).
    #[cold]
    fn remember_host_addrs(&self, m: &mut Memo) {
        let mut addrs = [0usize; MAX_READS];
        for (slot, (gpa, size)) in addrs.iter_mut().zip(m.entries()) {
            let gpa = gpa as usize;
            if gpa % PAGE_SIZE_4K + usize::from(size) > PAGE_SIZE_4K {
                return;
            }
            match self.host_addr(gpa) {
                Some(hva) => *slot = hva,
                None => return,
            }
        }
        m.set_host_addrs(self.epoch, addrs);
    }

    /// The host virtual address of the byte at `gpa`, if its page is mapped
    /// RAM (cached, or found and cached now).
    #[inline]
    fn host_addr(&self, gpa: usize) -> Option<usize> {
        let page = gpa / PAGE_SIZE_4K;
        let key = page + 1;
        let set = set_of(page) * WAYS;
        for s in self.slots.get(set..set + WAYS).unwrap_or_default() {
            let slot = s.get();
            if slot.key == key {
                self.hits.set(self.hits.get() + 1);
                return Some(slot.hva + gpa % PAGE_SIZE_4K);
            }
        }
        self.fill(gpa).map(|hva| hva + gpa % PAGE_SIZE_4K)
    }

    /// Looks the page of `gpa` up in the address space and caches it if
    /// it is mapped RAM.
    #[cold]
    #[inline(never)]
    fn fill(&self, gpa: usize) -> Option<usize> {
        self.misses.set(self.misses.get() + 1);
        let page = GuestPhysAddr::from_usize(gpa & !(PAGE_SIZE_4K - 1));
        let area = self.aspace.find_area(page)?;
        if area.flags.contains(MappingFlags::DEVICE) {
            return None;
        }
        let (hpa, _, _) = self.aspace.query(page).ok()?;
        let hva = H::phys_to_virt(hpa).as_usize();
        let n = page.as_usize() / PAGE_SIZE_4K;
        let set = set_of(n);
        let (Some(victim), Some(ways)) = (
            self.victim.get(set),
            self.slots.get(set * WAYS..(set + 1) * WAYS),
        ) else {
            return Some(hva);
        };
        let way = usize::from(victim.get()) % WAYS;
        if let Some(slot) = ways.get(way) {
            slot.set(Slot { key: n + 1, hva });
        }
        victim.set(((way + 1) % WAYS) as u8);
        Some(hva)
    }

    /// Reads `N` bytes inside one page through the cache, or through the
    /// address space when the page is not cached RAM.
    #[inline]
    fn read_array<const N: usize>(&self, gpa: GuestPhysAddr) -> Result<[u8; N]> {
        let a = gpa.as_usize();
        if a % PAGE_SIZE_4K <= PAGE_SIZE_4K - N
            && let Some(hva) = self.host_addr(a)
        {
            // SAFETY: `hva..hva + N` lies in one host page backing mapped
            // guest RAM (the page of `a`, which the cache's epoch proves is
            // still this guest page's), mapped by `phys_to_virt` as for
            // `DynAddrSpace::read`; an unaligned read of plain bytes.
            return Ok(unsafe { core::ptr::read_unaligned(hva as *const [u8; N]) });
        }
        let mut b = [0u8; N];
        self.aspace.read(gpa, &mut b)?;
        Ok(b)
    }
}

/// Copies `dst.len()` bytes from `src` into `dst`; a copy of 8 to 16 bytes
/// (an instruction fetch) is two unaligned 8-byte loads, without a call to
/// `memcpy`.
///
/// # Safety
///
/// `src..src + dst.len()` must be readable and not overlap `dst`.
#[inline(always)]
unsafe fn copy_from_host(src: *const u8, dst: &mut [u8]) {
    let n = dst.len();
    if (8..=16).contains(&n) {
        // SAFETY: both 8-byte windows, [0, 8) and [n - 8, n), lie in
        // `src..src + n` (the caller's contract).
        let (a, b) = unsafe {
            (
                core::ptr::read_unaligned(src as *const [u8; 8]),
                core::ptr::read_unaligned(src.add(n - 8) as *const [u8; 8]),
            )
        };
        if let Some(d) = dst.first_chunk_mut::<8>() {
            *d = a;
        }
        if let Some(d) = dst.last_chunk_mut::<8>() {
            *d = b;
        }
    } else {
        // SAFETY: the caller's contract.
        unsafe { core::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), n) };
    }
}

impl<H: AxMmHal> GuestMemoryReader for CachedGuestMemory<'_, H> {
    #[inline]
    fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result {
        let start = gpa.as_usize();
        // The usual case: inside one cached page.
        if start % PAGE_SIZE_4K + buf.len() <= PAGE_SIZE_4K
            && let Some(hva) = self.host_addr(start)
        {
            // SAFETY: as in `read_array`: `hva..hva + buf.len()` is inside one
            // host page backing mapped guest RAM; `buf` is ours.
            unsafe { copy_from_host(hva as *const u8, buf) };
            return Ok(());
        }
        self.read_pages(gpa, buf)
    }

    #[inline]
    fn read_u32(&self, gpa: GuestPhysAddr) -> Result<u32> {
        self.read_array(gpa).map(u32::from_le_bytes)
    }

    #[inline]
    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64> {
        self.read_array(gpa).map(u64::from_le_bytes)
    }
}

impl<H: AxMmHal> CachedGuestMemory<'_, H> {
    /// `read_bytes` of a range that is not in one cached page: page by page.
    #[inline(never)]
    fn read_pages(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result {
        let start = gpa.as_usize();
        if start.checked_add(buf.len()).is_none() {
            return self.aspace.read(gpa, buf);
        }
        let mut done = 0;
        while done < buf.len() {
            let cur = start + done;
            let n = (buf.len() - done).min(PAGE_SIZE_4K - cur % PAGE_SIZE_4K);
            let chunk = &mut buf[done..done + n];
            match self.host_addr(cur) {
                // SAFETY: as in `read_array`: `hva..hva + n` is inside one
                // host page backing mapped guest RAM; `chunk` is ours.
                Some(hva) => unsafe { copy_from_host(hva as *const u8, chunk) },
                None => self.aspace.read(GuestPhysAddr::from_usize(cur), chunk)?,
            }
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::test_util::HostHal;
    use crate::{GuestPagingMode, GuestPhysAddrRange};
    use crate::{NestedPagingKind, PageFaultReason};

    const RW: MappingFlags = MappingFlags::READ.union(MappingFlags::WRITE);

    fn gpa(a: usize) -> GuestPhysAddr {
        GuestPhysAddr::from_usize(a)
    }

    /// RAM at 0..0x4000 (allocated), lazy RAM at 0x10000..0x12000, a device
    /// page at 0xfeb0_0000.
    fn space() -> DynAddrSpace<HostHal> {
        let mut a = DynAddrSpace::new(
            NestedPagingKind::Npt,
            GuestPhysAddrRange::from_start_size(gpa(0), 1 << 32),
        )
        .unwrap();
        a.map_alloc(gpa(0), 0x4000, RW, true).unwrap();
        a.map_alloc(gpa(0x10000), 0x2000, RW, false).unwrap();
        a.map_alloc(gpa(0xfeb0_0000), 0x1000, RW | MappingFlags::DEVICE, true)
            .unwrap();
        a
    }

    #[test]
    fn repeated_reads_hit_and_read_the_same_bytes() {
        let mut a = space();
        a.write(gpa(0x1ff8), &0x1122_3344_5566_7788u64.to_le_bytes())
            .unwrap();
        a.write(gpa(0x2000), &[0xaa, 0xbb]).unwrap();
        let mut c = TranslationCache::new();
        {
            let r = c.reader(&a);
            assert_eq!(r.read_u64(gpa(0x1ff8)), Ok(0x1122_3344_5566_7788));
            assert_eq!(r.read_u32(gpa(0x1ffc)), Ok(0x1122_3344));
            // Across the page end: two pages, both cached now.
            let mut b = [0u8; 4];
            r.read_bytes(gpa(0x1ffe), &mut b).unwrap();
            assert_eq!(b, [0x22, 0x11, 0xaa, 0xbb]);
            // An 8-byte read crossing the page end takes the slow path.
            assert_eq!(
                r.read_u64(gpa(0x1ffc)),
                Ok(0x0000_bbaa_1122_3344),
                "bytes 0x1ffc..0x2004"
            );
        }
        assert_eq!(c.misses(), 2, "one miss per page");
        assert_eq!(c.len(), 2);
        assert_eq!(c.hits(), 2);
        // Writes by the guest (or the hypervisor) are seen: the cache holds
        // addresses, not data.
        a.write(gpa(0x1ff8), &[0x99]).unwrap();
        assert_eq!(
            c.reader(&a).read_u64(gpa(0x1ff8)),
            Ok(0x1122_3344_5566_7799)
        );
        assert_eq!(c.misses(), 2);
    }

    #[test]
    fn unmap_empties_the_cache() {
        let mut a = space();
        a.write(gpa(0x3000), &[7]).unwrap();
        let mut c = TranslationCache::new();
        assert_eq!(c.reader(&a).read_u32(gpa(0x3000)), Ok(7));
        assert_eq!(c.len(), 1);
        // The page's frame is freed: reading it must not use the old address.
        a.unmap(gpa(0x3000), 0x1000).unwrap();
        let r = c.reader(&a);
        assert_eq!(
            r.read_u32(gpa(0x3000)),
            Err(crate::Error::NotMapped { gpa: gpa(0x3000) })
        );
        assert!(c.is_empty());
        // Mapped again (a new, zeroed frame): read from the new frame.
        a.map_alloc(gpa(0x3000), 0x1000, RW, true).unwrap();
        assert_eq!(c.reader(&a).read_u32(gpa(0x3000)), Ok(0));
        a.clear();
        assert!(c.reader(&a).read_u32(gpa(0x3000)).is_err());
        assert!(c.is_empty());
    }

    #[test]
    fn another_address_space_empties_the_cache() {
        let mut a = space();
        let mut b = space();
        a.write(gpa(0x100), &[1]).unwrap();
        b.write(gpa(0x100), &[2]).unwrap();
        let mut c = TranslationCache::new();
        assert_eq!(c.reader(&a).read_u32(gpa(0x100)), Ok(1));
        assert_eq!(c.reader(&b).read_u32(gpa(0x100)), Ok(2));
        assert_eq!(c.reader(&a).read_u32(gpa(0x100)), Ok(1));
        assert_eq!(c.misses(), 3);
    }

    #[test]
    fn lazy_device_and_missing_pages_read_as_the_address_space_says() {
        let mut a = space();
        let mut c = TranslationCache::new();
        {
            let r = c.reader(&a);
            // Lazy and untouched: zeros, not cached (not mapped yet).
            assert_eq!(r.read_u64(gpa(0x10008)), Ok(0));
            // Device memory: refused, as by `DynAddrSpace::read`.
            assert_eq!(
                r.read_u32(gpa(0xfeb0_0000)),
                Err(crate::Error::Unsupported(
                    "hypervisor access to a device area of guest memory"
                ))
            );
            // A hole.
            assert_eq!(
                r.read_u32(gpa(0x8000)),
                Err(crate::Error::NotMapped { gpa: gpa(0x8000) })
            );
        }
        assert!(c.is_empty());
        // Populated by a write: now cached, and the data is there.
        a.write(gpa(0x10008), &[5]).unwrap();
        assert_eq!(c.reader(&a).read_u64(gpa(0x10008)), Ok(5));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_guest_page_walk_through_the_cache() {
        // 4-level tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD) with
        // a 2 MiB page mapping GVA 0x4000_0000 to GPA 0x20_0000.
        let mut a = space();
        let p_rw = 0x3u64;
        a.write(gpa(0x1000), &(0x2000 | p_rw).to_le_bytes())
            .unwrap();
        a.write(gpa(0x2000 + 8), &(0x3000 | p_rw).to_le_bytes())
            .unwrap();
        a.write(gpa(0x3000), &(0x20_0000 | 0x80 | p_rw).to_le_bytes())
            .unwrap();
        let w = GuestPageWalker::new(GuestPagingMode::Level4);
        let gva = GuestVirtAddr::from_usize(0x4000_0123);
        let direct = w.translate(&a, 0x1000, gva).unwrap();
        let mut c = TranslationCache::new();
        for _ in 0..3 {
            assert_eq!(w.translate(&c.reader(&a), 0x1000, gva), Ok(direct));
        }
        assert_eq!(direct.gpa, gpa(0x20_0123));
        assert_eq!((c.misses(), c.hits()), (3, 6));
        // The guest changes its PD entry: the next walk sees it.
        a.write(gpa(0x3000), &0u64.to_le_bytes()).unwrap();
        assert!(matches!(
            w.translate(&c.reader(&a), 0x1000, gva),
            Err(crate::Error::GuestPageFault {
                level: 2,
                reason: PageFaultReason::NotPresent,
                ..
            })
        ));
    }

    #[test]
    fn remembered_walks_are_checked_at_their_host_addresses() {
        // As above: PML4 0x1000, PDPT 0x2000, PD 0x3000 with a 2 MiB page
        // mapping GVA 0x4000_0000 to GPA 0x20_0000.
        let mut a = space();
        let p_rw = 0x3u64;
        a.write(gpa(0x1000), &(0x2000 | p_rw).to_le_bytes())
            .unwrap();
        a.write(gpa(0x2000 + 8), &(0x3000 | p_rw).to_le_bytes())
            .unwrap();
        a.write(gpa(0x3000), &(0x20_0000 | 0x80 | p_rw).to_le_bytes())
            .unwrap();
        let w = GuestPageWalker::new(GuestPagingMode::Level4);
        let gva = GuestVirtAddr::from_usize(0x4000_0123);
        let mut c = TranslationCache::new();
        let mut walks = WalkCache::new();
        for i in 0..3 {
            let t = c.reader(&a).translate(&w, &mut walks, 0x1000, gva).unwrap();
            assert_eq!(t.gpa, gpa(0x20_0123), "walk {i}");
        }
        assert_eq!((walks.misses(), walks.hits()), (1, 2));
        // One lookup per page for the walk, one per entry to remember its
        // host address; the two checked walks after it look nothing up.
        assert_eq!(c.misses(), 3);
        assert_eq!(c.hits(), 3);
        // The guest remaps its 2 MiB page: seen at the host address.
        a.write(gpa(0x3000), &(0x40_0000 | 0x80 | p_rw).to_le_bytes())
            .unwrap();
        let t = c.reader(&a).translate(&w, &mut walks, 0x1000, gva).unwrap();
        assert_eq!(t.gpa, gpa(0x40_0123));
        assert_eq!(walks.misses(), 2);
        // The page holding the PD is unmapped and mapped again (a new,
        // zeroed frame): the old host addresses are not used, the PD entry
        // now reads 0 and the walk faults.
        a.unmap(gpa(0x3000), 0x1000).unwrap();
        a.map_alloc(gpa(0x3000), 0x1000, RW, true).unwrap();
        assert!(matches!(
            c.reader(&a).translate(&w, &mut walks, 0x1000, gva),
            Err(crate::Error::GuestPageFault {
                level: 2,
                reason: PageFaultReason::NotPresent,
                ..
            })
        ));
        // Another reader type gives the same answers.
        a.write(gpa(0x3000), &(0x20_0000 | 0x80 | p_rw).to_le_bytes())
            .unwrap();
        let direct = w.translate_cached(&a, &mut walks, 0x1000, gva).unwrap();
        assert_eq!(
            direct,
            c.reader(&a).translate(&w, &mut walks, 0x1000, gva).unwrap()
        );
    }

    #[test]
    fn pages_of_one_set_replace_each_other_correctly() {
        // Pages 0, 8 and 16 fall in the same set (page % 8 with no bits
        // above 9): the third evicts the first, all reads stay right.
        let mut a = DynAddrSpace::<HostHal>::new(
            NestedPagingKind::Npt,
            GuestPhysAddrRange::from_start_size(gpa(0), 1 << 20),
        )
        .unwrap();
        a.map_alloc(gpa(0), 0x20000, RW, true).unwrap();
        for p in [0usize, 8, 16] {
            a.write(gpa(p * 0x1000), &[p as u8 + 1]).unwrap();
        }
        let mut c = TranslationCache::new();
        for _ in 0..2 {
            for p in [0usize, 8, 16] {
                assert_eq!(c.reader(&a).read_u32(gpa(p * 0x1000)), Ok(p as u32 + 1));
            }
        }
        assert_eq!(c.len(), 2, "a set holds two pages");
        assert_eq!(c.hits(), 0, "three pages cycling through two ways");
        assert_eq!(c.misses(), 6);
    }
}
