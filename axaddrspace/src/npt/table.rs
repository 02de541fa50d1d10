//! The 4-level nested page table, generic over the entry format.

use core::{fmt, marker::PhantomData};

use memory_addr::PAGE_SIZE_4K;
use page_table_entry::MappingFlags;

use super::{NestedPagingFormat, PageSize};
use crate::{AxMmHal, Error, GuestPhysAddr, HostPhysAddr, Result};

/// Entries per table (4 KiB / 8 bytes).
const ENTRY_COUNT: usize = 512;

/// The first guest physical address a 4-level nested table cannot translate
/// (2^48).
pub const GPA_LIMIT: usize = 1 << 48;

/// Bytes translated by one entry at `level` (1 = PTE ... 4 = PML4E).
const fn span(level: usize) -> usize {
    1 << (12 + 9 * (level - 1))
}

/// Index of `gpa` in the table at `level`.
const fn index(gpa: usize, level: usize) -> usize {
    (gpa >> (12 + 9 * (level - 1))) & (ENTRY_COUNT - 1)
}

/// Whether an entry at `level` maps a page (rather than pointing to a table).
fn is_leaf<E: NestedPagingFormat>(e: &E, level: usize) -> bool {
    level == 1 || (level <= 3 && e.is_huge())
}

fn page_size(level: usize) -> PageSize {
    match PageSize::from_level(level) {
        Some(s) => s,
        None => PageSize::Size1G,
    }
}

/// A 4-level nested page table (PML4 -> PDPT -> PD -> PT) translating guest
/// physical addresses below 2^48 to host physical addresses, with 4 KiB,
/// 2 MiB and 1 GiB pages.
///
/// `E` is the entry format ([`EPTEntry`](super::EPTEntry) or
/// [`NPTEntry`](super::NPTEntry)), `H` gives the table frames. Every table
/// frame is released when the table is dropped; the mapped host frames are
/// not owned by the table.
pub struct NestedPageTable<E: NestedPagingFormat, H: AxMmHal> {
    root: HostPhysAddr,
    _marker: PhantomData<(E, fn() -> H)>,
}

impl<E: NestedPagingFormat, H: AxMmHal> NestedPageTable<E, H> {
    const ENTRY_SIZE_OK: () = assert!(
        core::mem::size_of::<E>() == 8,
        "a nested page table entry must be 8 bytes"
    );

    /// Creates an empty table (allocates the root frame).
    pub fn new() -> Result<Self> {
        #[allow(clippy::let_unit_value)]
        let () = Self::ENTRY_SIZE_OK;
        Ok(Self {
            root: Self::alloc_table()?,
            _marker: PhantomData,
        })
    }

    /// Host physical address of the root table (PML4), to put in the EPTP
    /// (bits 51:12) or the VMCB `N_CR3` field.
    pub fn root_paddr(&self) -> HostPhysAddr {
        self.root
    }

    /// Maps one page of `size` at `gpa` to `hpa`.
    ///
    /// Errors: `Misaligned` if `gpa` or `hpa` is not aligned to `size`,
    /// `OutOfRange` above [`GPA_LIMIT`], `InvalidFlags`, `AlreadyMapped` if any
    /// part of the page is mapped, `NoMemory` for a table frame.
    pub fn map(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        size: PageSize,
        flags: MappingFlags,
    ) -> Result {
        if !E::flags_valid(flags) {
            return Err(Error::InvalidFlags(flags));
        }
        let (g, h) = (gpa.as_usize(), hpa.as_usize());
        check_aligned(g, size.size())?;
        check_aligned(h, size.size())?;
        check_range(g, size.size())?;
        let target = size.level();
        let mut table = self.root;
        for level in (target + 1..=4).rev() {
            let idx = index(g, level);
            let e = Self::read(table, idx);
            table = if e.is_unused() {
                let child = Self::alloc_table()?;
                Self::write(table, idx, E::new_table(child));
                child
            } else if is_leaf(&e, level) {
                return Err(Error::AlreadyMapped {
                    gpa: GuestPhysAddr::from_usize(g & !(span(level) - 1)),
                });
            } else {
                e.paddr()
            };
        }
        let idx = index(g, target);
        let e = Self::read(table, idx);
        if !e.is_unused() {
            // An empty table left behind (e.g. by a failed map) may be
            // replaced by a huge page.
            if is_leaf(&e, target) || !Self::subtree_empty(e.paddr(), target - 1) {
                return Err(Error::AlreadyMapped { gpa });
            }
            Self::free_subtree(e.paddr(), target - 1);
        }
        Self::write(table, idx, E::new_page(hpa, flags, size.is_huge()));
        Ok(())
    }

    /// Maps `size` bytes at `gpa` to `hpa`, with the largest pages that fit:
    /// 1 GiB and 2 MiB pages where `allow_huge` and both addresses are
    /// aligned, 4 KiB pages elsewhere.
    ///
    /// All of `gpa`, `hpa` and `size` must be 4 KiB aligned. On error nothing
    /// new stays mapped.
    pub fn map_region(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        size: usize,
        flags: MappingFlags,
        allow_huge: bool,
    ) -> Result {
        let (g, h) = (gpa.as_usize(), hpa.as_usize());
        check_aligned(g, PAGE_SIZE_4K)?;
        check_aligned(h, PAGE_SIZE_4K)?;
        check_aligned(size, PAGE_SIZE_4K)?;
        if size == 0 {
            return Err(Error::InvalidInput("empty region"));
        }
        check_range(g, size)?;
        h.checked_add(size)
            .ok_or(Error::InvalidInput("host range overflows"))?;
        if !E::flags_valid(flags) {
            return Err(Error::InvalidFlags(flags));
        }
        let mut off = 0;
        while off < size {
            let (pg, ph, rest) = (g + off, h + off, size - off);
            let page = [PageSize::Size1G, PageSize::Size2M]
                .into_iter()
                .find(|s| {
                    allow_huge && rest >= s.size() && pg % s.size() == 0 && ph % s.size() == 0
                })
                .unwrap_or(PageSize::Size4K);
            let res = self.map(
                GuestPhysAddr::from_usize(pg),
                HostPhysAddr::from_usize(ph),
                page,
                flags,
            );
            if let Err(e) = res {
                if off > 0 {
                    // Only whole pages we just mapped: no split, cannot fail.
                    let _ = Self::unmap_range(self.root, 4, g, g + off, &mut |_, _, _, _| {});
                }
                return Err(e);
            }
            off += page.size();
        }
        Ok(())
    }

    /// Unmaps the page that starts at `gpa` and returns its host address,
    /// flags and size.
    ///
    /// Errors: `NotMapped`, or `Misaligned` if `gpa` is inside a page but not
    /// at its start (use [`Self::unmap_region`] to cut a huge page).
    pub fn unmap(&mut self, gpa: GuestPhysAddr) -> Result<(HostPhysAddr, MappingFlags, PageSize)> {
        let g = gpa.as_usize();
        check_range(g, 1)?;
        let mut path = [(self.root, 0usize); 4];
        let mut table = self.root;
        let mut level = 4;
        loop {
            let idx = index(g, level);
            path[4 - level] = (table, idx);
            let e = Self::read(table, idx);
            if !e.is_present() {
                return Err(Error::NotMapped { gpa });
            }
            if is_leaf(&e, level) {
                let size = page_size(level);
                check_aligned(g, size.size())?;
                Self::write(table, idx, E::empty_entry());
                // Release tables that became empty, bottom up.
                let mut l = level;
                while l < 4 {
                    let (t, _) = path[4 - l];
                    if !Self::subtree_empty(t, l) {
                        break;
                    }
                    let (parent, pidx) = path[4 - (l + 1)];
                    Self::write(parent, pidx, E::empty_entry());
                    Self::free_subtree(t, l);
                    l += 1;
                }
                return Ok((e.paddr(), e.flags(), size));
            }
            table = e.paddr();
            level -= 1;
        }
    }

    /// Unmaps everything mapped in `[gpa, gpa + size)`; unmapped holes are
    /// skipped. A huge page only partly inside the range is split first.
    pub fn unmap_region(&mut self, gpa: GuestPhysAddr, size: usize) -> Result {
        self.unmap_region_with(gpa, size, |_, _, _, _| {})
    }

    /// Like [`Self::unmap_region`], calling `f(gpa, hpa, flags, size)` for
    /// every page removed (after splits, so only pages inside the range).
    pub fn unmap_region_with(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        mut f: impl FnMut(GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize),
    ) -> Result {
        let g = gpa.as_usize();
        check_aligned(g, PAGE_SIZE_4K)?;
        check_aligned(size, PAGE_SIZE_4K)?;
        check_range(g, size)?;
        Self::unmap_range(self.root, 4, g, g + size, &mut f)
    }

    /// Changes the flags of the page that starts at `gpa`; returns its size.
    pub fn protect(&mut self, gpa: GuestPhysAddr, flags: MappingFlags) -> Result<PageSize> {
        if !E::flags_valid(flags) {
            return Err(Error::InvalidFlags(flags));
        }
        let (table, idx, level, mut e) = self.walk(gpa)?;
        let size = page_size(level);
        check_aligned(gpa.as_usize(), size.size())?;
        e.set_flags(flags, size.is_huge());
        Self::write(table, idx, e);
        Ok(size)
    }

    /// Changes the flags of every page mapped in `[gpa, gpa + size)`; holes
    /// are skipped, huge pages partly inside the range are split.
    pub fn protect_region(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        flags: MappingFlags,
    ) -> Result {
        if !E::flags_valid(flags) {
            return Err(Error::InvalidFlags(flags));
        }
        let g = gpa.as_usize();
        check_aligned(g, PAGE_SIZE_4K)?;
        check_aligned(size, PAGE_SIZE_4K)?;
        check_range(g, size)?;
        Self::protect_range(self.root, 4, g, g + size, flags)
    }

    /// Translates `gpa`: the host physical address of that very byte, the
    /// flags and the size of the page that maps it.
    pub fn query(&self, gpa: GuestPhysAddr) -> Result<(HostPhysAddr, MappingFlags, PageSize)> {
        let (_, _, level, e) = self.walk(gpa)?;
        let size = page_size(level);
        let off = gpa.as_usize() & (size.size() - 1);
        Ok((e.paddr() + off, e.flags(), size))
    }

    /// The raw leaf entry that maps `gpa` and its page size.
    pub fn leaf_entry(&self, gpa: GuestPhysAddr) -> Result<(E, PageSize)> {
        let (_, _, level, e) = self.walk(gpa)?;
        Ok((e, page_size(level)))
    }

    /// Calls `f(gpa, hpa, flags, size)` for every mapped page, in address
    /// order.
    pub fn for_each_mapping(
        &self,
        mut f: impl FnMut(GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize),
    ) {
        Self::visit(self.root, 4, 0, &mut f);
    }

    // ---- internals ----

    fn walk(&self, gpa: GuestPhysAddr) -> Result<(HostPhysAddr, usize, usize, E)> {
        let g = gpa.as_usize();
        check_range(g, 1)?;
        let mut table = self.root;
        for level in (1..=4).rev() {
            let idx = index(g, level);
            let e = Self::read(table, idx);
            if !e.is_present() {
                return Err(Error::NotMapped { gpa });
            }
            if is_leaf(&e, level) {
                return Ok((table, idx, level, e));
            }
            table = e.paddr();
        }
        Err(Error::NotMapped { gpa })
    }

    fn visit(
        table: HostPhysAddr,
        level: usize,
        base: usize,
        f: &mut impl FnMut(GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize),
    ) {
        for idx in 0..ENTRY_COUNT {
            let e = Self::read(table, idx);
            if !e.is_present() {
                continue;
            }
            let g = base + idx * span(level);
            if is_leaf(&e, level) {
                f(
                    GuestPhysAddr::from_usize(g),
                    e.paddr(),
                    e.flags(),
                    page_size(level),
                );
            } else {
                Self::visit(e.paddr(), level - 1, g, f);
            }
        }
    }

    fn unmap_range(
        table: HostPhysAddr,
        level: usize,
        start: usize,
        end: usize,
        f: &mut impl FnMut(GuestPhysAddr, HostPhysAddr, MappingFlags, PageSize),
    ) -> Result {
        let mut cur = start;
        while cur < end {
            let sz = span(level);
            let ebase = cur & !(sz - 1);
            let eend = ebase + sz;
            let part_end = end.min(eend);
            let idx = index(cur, level);
            let e = Self::read(table, idx);
            if !e.is_unused() {
                let leaf = is_leaf(&e, level);
                if leaf && cur == ebase && part_end == eend {
                    Self::write(table, idx, E::empty_entry());
                    if e.is_present() {
                        f(
                            GuestPhysAddr::from_usize(ebase),
                            e.paddr(),
                            e.flags(),
                            page_size(level),
                        );
                    }
                } else {
                    let child = if leaf {
                        Self::split(table, idx, level)?
                    } else {
                        e.paddr()
                    };
                    Self::unmap_range(child, level - 1, cur, part_end, f)?;
                    if Self::subtree_empty(child, level - 1) {
                        Self::write(table, idx, E::empty_entry());
                        Self::free_subtree(child, level - 1);
                    }
                }
            }
            cur = part_end;
        }
        Ok(())
    }

    fn protect_range(
        table: HostPhysAddr,
        level: usize,
        start: usize,
        end: usize,
        flags: MappingFlags,
    ) -> Result {
        let mut cur = start;
        while cur < end {
            let sz = span(level);
            let ebase = cur & !(sz - 1);
            let eend = ebase + sz;
            let part_end = end.min(eend);
            let idx = index(cur, level);
            let mut e = Self::read(table, idx);
            if e.is_present() {
                let leaf = is_leaf(&e, level);
                if leaf && cur == ebase && part_end == eend {
                    e.set_flags(flags, level > 1);
                    Self::write(table, idx, e);
                } else {
                    let child = if leaf {
                        Self::split(table, idx, level)?
                    } else {
                        e.paddr()
                    };
                    Self::protect_range(child, level - 1, cur, part_end, flags)?;
                }
            }
            cur = part_end;
        }
        Ok(())
    }

    /// Replaces the huge leaf at `table[idx]` (at `level` 2 or 3) by a table
    /// of 512 pages of the next smaller size; returns the new table.
    fn split(table: HostPhysAddr, idx: usize, level: usize) -> Result<HostPhysAddr> {
        let e = Self::read(table, idx);
        let child = Self::alloc_table()?;
        let part = span(level - 1);
        for i in 0..ENTRY_COUNT {
            Self::write(child, i, e.split_part(e.paddr() + i * part, level - 1 > 1));
        }
        Self::write(table, idx, E::new_table(child));
        Ok(child)
    }

    /// Whether nothing is mapped below `table` (whose entries are at `level`).
    fn subtree_empty(table: HostPhysAddr, level: usize) -> bool {
        (0..ENTRY_COUNT).all(|idx| {
            let e = Self::read(table, idx);
            e.is_unused() || (!is_leaf(&e, level) && Self::subtree_empty(e.paddr(), level - 1))
        })
    }

    /// Frees `table` (entries at `level`) and all tables below it.
    fn free_subtree(table: HostPhysAddr, level: usize) {
        if level > 1 {
            for idx in 0..ENTRY_COUNT {
                let e = Self::read(table, idx);
                if !e.is_unused() && !is_leaf(&e, level) {
                    Self::free_subtree(e.paddr(), level - 1);
                }
            }
        }
        H::dealloc_frame(table);
    }

    fn alloc_table() -> Result<HostPhysAddr> {
        let paddr = H::alloc_frame().ok_or(Error::NoMemory)?;
        // SAFETY: the frame was just handed to us by the HAL, and
        // `phys_to_virt` gives a writable mapping of the whole 4 KiB frame.
        unsafe { core::ptr::write_bytes(H::phys_to_virt(paddr).as_mut_ptr(), 0, PAGE_SIZE_4K) };
        Ok(paddr)
    }

    fn read(table: HostPhysAddr, idx: usize) -> E {
        debug_assert!(idx < ENTRY_COUNT);
        // SAFETY: `table` is a table frame owned by this page table, mapped
        // by `phys_to_virt`, holding 512 8-byte entries; `idx < 512`.
        unsafe { H::phys_to_virt(table).as_ptr_of::<E>().add(idx).read() }
    }

    fn write(table: HostPhysAddr, idx: usize, e: E) {
        debug_assert!(idx < ENTRY_COUNT);
        // SAFETY: as in `read`; we hold `&mut self` (or are building the
        // table), so no other writer of this table frame exists.
        unsafe {
            H::phys_to_virt(table)
                .as_mut_ptr_of::<E>()
                .add(idx)
                .write(e)
        }
    }
}

/// A zero entry of any format.
trait EmptyEntry {
    fn empty_entry() -> Self;
}

impl<E: NestedPagingFormat> EmptyEntry for E {
    fn empty_entry() -> Self {
        let mut e = E::new_table(HostPhysAddr::from_usize(0));
        e.clear();
        e
    }
}

fn check_aligned(addr: usize, align: usize) -> Result {
    if addr % align == 0 {
        Ok(())
    } else {
        Err(Error::Misaligned { addr, align })
    }
}

/// `[gpa, gpa + size)` must lie below [`GPA_LIMIT`].
fn check_range(gpa: usize, size: usize) -> Result {
    match gpa.checked_add(size) {
        Some(end) if end <= GPA_LIMIT => Ok(()),
        _ => Err(Error::OutOfRange {
            gpa: GuestPhysAddr::from_usize(gpa),
        }),
    }
}

impl<E: NestedPagingFormat, H: AxMmHal> Drop for NestedPageTable<E, H> {
    fn drop(&mut self) {
        Self::free_subtree(self.root, 4);
    }
}

impl<E: NestedPagingFormat, H: AxMmHal> fmt::Debug for NestedPageTable<E, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NestedPageTable")
            .field("kind", &E::KIND)
            .field("root", &self.root)
            .finish()
    }
}
