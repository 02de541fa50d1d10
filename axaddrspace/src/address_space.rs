//! The guest physical address space of one VM.

use alloc::{collections::BTreeMap, vec::Vec};
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use memory_addr::{MemoryAddr, PAGE_SIZE_4K};
use page_table_entry::MappingFlags;

use crate::npt::{
    EPTEntry, GPA_LIMIT, NPTEntry, NestedPageTable, NestedPagingFormat, NestedPagingKind, PageSize,
};
use crate::{
    AxMmHal, Error, GuestMemoryReader, GuestMemoryWriter, GuestPhysAddr, GuestPhysAddrRange,
    HostPhysAddr, Result,
};

/// How the guest physical pages of a [`MemoryArea`] are backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// A fixed host range: `hpa = gpa + hpa_offset`. Mapped entirely when
    /// the area is created, with huge pages where aligned. The host memory is
    /// not owned by the address space.
    Linear {
        /// Host physical address minus guest physical address.
        hpa_offset: isize,
    },
    /// 4 KiB frames from [`AxMmHal::alloc_frame`], owned by the address
    /// space and released on unmap and drop.
    Alloc {
        /// `true`: all frames are allocated when the area is mapped;
        /// `false`: a frame is allocated on the first fault on its page
        /// (see [`AddrSpace::handle_page_fault`]).
        populate: bool,
    },
}

/// A contiguous range of guest physical memory with one set of flags and
/// one backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryArea {
    /// The guest physical range, 4 KiB aligned.
    pub range: GuestPhysAddrRange,
    /// Access rights and attributes of the whole area.
    pub flags: MappingFlags,
    /// How the area is backed.
    pub backend: Backend,
}

impl MemoryArea {
    /// The first guest physical address of the area.
    pub fn start(&self) -> GuestPhysAddr {
        self.range.start
    }

    /// The first guest physical address after the area.
    pub fn end(&self) -> GuestPhysAddr {
        self.range.end
    }

    /// The size in bytes.
    pub fn size(&self) -> usize {
        self.range.size()
    }

    /// For a linear area, the host address backing `gpa`.
    fn linear_hpa(&self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        match self.backend {
            Backend::Linear { hpa_offset } => gpa
                .as_usize()
                .checked_add_signed(hpa_offset)
                .map(HostPhysAddr::from_usize),
            Backend::Alloc { .. } => None,
        }
    }

    fn with_range(&self, start: usize, end: usize) -> Self {
        Self {
            range: GuestPhysAddrRange::new(start.into(), end.into()),
            ..*self
        }
    }
}

/// The guest physical address space of one VM: non-overlapping memory areas
/// and the nested page table that maps them.
///
/// `E` is the nested paging format ([`EPTEntry`] or [`NPTEntry`]); see
/// [`DynAddrSpace`] to choose it at run time.
pub struct AddrSpace<E: NestedPagingFormat, H: AxMmHal> {
    range: GuestPhysAddrRange,
    areas: BTreeMap<usize, MemoryArea>,
    pt: NestedPageTable<E, H>,
    /// See [`AddrSpace::mapping_epoch`].
    epoch: u64,
}

/// Source of [`AddrSpace::mapping_epoch`] values: unique across all address
/// spaces of the process, never 0.
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

fn new_epoch() -> u64 {
    NEXT_EPOCH.fetch_add(1, Ordering::Relaxed)
}

impl<E: NestedPagingFormat, H: AxMmHal> AddrSpace<E, H> {
    /// An empty address space allowing areas inside `range` (4 KiB aligned,
    /// below 2^48).
    pub fn new(range: GuestPhysAddrRange) -> Result<Self> {
        check_aligned(range.start.as_usize())?;
        check_aligned(range.end.as_usize())?;
        if range.end.as_usize() > GPA_LIMIT {
            return Err(Error::OutOfRange { gpa: range.end });
        }
        Ok(Self {
            range,
            areas: BTreeMap::new(),
            pt: NestedPageTable::new()?,
            epoch: new_epoch(),
        })
    }

    /// A value that changes whenever a guest physical page may stop being
    /// backed by the host page it had: it is new for every address space
    /// and after every [`unmap`](Self::unmap) and [`clear`](Self::clear).
    /// Adding areas and populating pages keep it (they only back pages that
    /// had no host page). A [`crate::TranslationCache`] keyed by it is never
    /// stale.
    pub fn mapping_epoch(&self) -> u64 {
        self.epoch
    }

    /// The guest physical range areas may occupy.
    pub fn range(&self) -> GuestPhysAddrRange {
        self.range
    }

    /// Host physical address of the nested page table root (for the EPTP or
    /// the VMCB `N_CR3`).
    pub fn page_table_root(&self) -> HostPhysAddr {
        self.pt.root_paddr()
    }

    /// The nested page table.
    pub fn page_table(&self) -> &NestedPageTable<E, H> {
        &self.pt
    }

    /// The memory areas, in address order.
    pub fn areas(&self) -> alloc::collections::btree_map::Values<'_, usize, MemoryArea> {
        self.areas.values()
    }

    /// The area containing `gpa`.
    pub fn find_area(&self, gpa: GuestPhysAddr) -> Option<&MemoryArea> {
        self.areas
            .range(..=gpa.as_usize())
            .next_back()
            .map(|(_, a)| a)
            .filter(|a| a.range.contains(gpa))
    }

    /// Whether every byte of `[gpa, gpa + size)` belongs to some area.
    pub fn contains_range(&self, gpa: GuestPhysAddr, size: usize) -> bool {
        let Some(end) = gpa.as_usize().checked_add(size) else {
            return false;
        };
        let mut cur = gpa.as_usize();
        while cur < end {
            match self.find_area(cur.into()) {
                Some(a) => cur = a.end().as_usize(),
                None => return false,
            }
        }
        true
    }

    /// Maps `[gpa, gpa + size)` to the host range starting at `hpa`, with huge
    /// pages where both addresses are aligned.
    ///
    /// # Safety
    ///
    /// The host range must be memory (or device MMIO, with
    /// [`MappingFlags::DEVICE`]) that this VM may own: the guest gets direct
    /// access to it, and [`Self::read`] / [`Self::write`] access non-device
    /// ranges through [`AxMmHal::phys_to_virt`].
    pub unsafe fn map_linear(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        size: usize,
        flags: MappingFlags,
    ) -> Result {
        check_aligned(hpa.as_usize())?;
        hpa.as_usize()
            .checked_add(size)
            .ok_or(Error::InvalidInput("host range overflows"))?;
        self.check_new_area(gpa, size, flags)?;
        let hpa_offset = (hpa.as_usize() as isize).wrapping_sub(gpa.as_usize() as isize);
        self.pt.map_region(gpa, hpa, size, flags, true)?;
        self.insert_area(MemoryArea {
            range: GuestPhysAddrRange::from_start_size(gpa, size),
            flags,
            backend: Backend::Linear { hpa_offset },
        });
        Ok(())
    }

    /// Maps `[gpa, gpa + size)` to frames allocated from the HAL: all at once
    /// if `populate`, otherwise page by page on faults.
    pub fn map_alloc(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        flags: MappingFlags,
        populate: bool,
    ) -> Result {
        self.check_new_area(gpa, size, flags)?;
        if populate {
            for off in (0..size).step_by(PAGE_SIZE_4K) {
                if let Err(e) = self.populate_page(gpa + off, flags) {
                    let _ = self
                        .pt
                        .unmap_region_with(gpa, off, |_, hpa, _, _| H::dealloc_frame(hpa));
                    return Err(e);
                }
            }
        }
        self.insert_area(MemoryArea {
            range: GuestPhysAddrRange::from_start_size(gpa, size),
            flags,
            backend: Backend::Alloc { populate },
        });
        Ok(())
    }

    /// Removes `[gpa, gpa + size)` from the address space: areas inside are
    /// removed, areas partly inside are cut, allocated frames are released.
    /// Parts of the range without an area are ignored.
    pub fn unmap(&mut self, gpa: GuestPhysAddr, size: usize) -> Result {
        self.epoch = new_epoch();
        check_aligned(gpa.as_usize())?;
        check_aligned(size)?;
        let end = gpa
            .as_usize()
            .checked_add(size)
            .ok_or(Error::InvalidInput("range overflows"))?;
        if !self
            .range
            .contains_range(GuestPhysAddrRange::new(gpa, end.into()))
        {
            return Err(Error::OutOfRange { gpa });
        }
        let keys: Vec<usize> = self
            .areas
            .range(..end)
            .filter(|(_, a)| a.end().as_usize() > gpa.as_usize())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(area) = self.areas.remove(&key) else {
                continue;
            };
            let (s, e) = (area.start().as_usize(), area.end().as_usize());
            let (cs, ce) = (s.max(gpa.as_usize()), e.min(end));
            if let Err(err) = self.unmap_pages(&area, cs, ce) {
                // Keep the area; pages already removed are re-created on
                // fault (see `handle_page_fault`).
                self.areas.insert(key, area);
                return Err(err);
            }
            if s < cs {
                self.insert_area(area.with_range(s, cs));
            }
            if ce < e {
                self.insert_area(area.with_range(ce, e));
            }
        }
        Ok(())
    }

    /// Removes every area.
    pub fn clear(&mut self) {
        self.epoch = new_epoch();
        let areas = core::mem::take(&mut self.areas);
        for area in areas.values() {
            // Cannot fail: the range is aligned, in range, and the cut covers
            // whole pages.
            let _ = self.unmap_pages(area, area.start().as_usize(), area.end().as_usize());
        }
    }

    /// Settles a nested page fault (EPT violation / #NPF) at `gpa` for an
    /// access needing `access_flags` (`READ`, `WRITE` and/or `EXECUTE`).
    ///
    /// Returns `Ok(true)` if the page was mapped now (the guest may retry),
    /// `Ok(false)` if the fault is not ours to fix: no area, an access the
    /// area forbids, or a page that is already mapped. `Err(NoMemory)` if a
    /// frame could not be allocated.
    pub fn handle_page_fault(
        &mut self,
        gpa: GuestPhysAddr,
        access_flags: MappingFlags,
    ) -> Result<bool> {
        let Some(area) = self.find_area(gpa).copied() else {
            return Ok(false);
        };
        let access =
            access_flags & (MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE);
        if !area.flags.contains(access) {
            return Ok(false);
        }
        let page = gpa.align_down_4k();
        if self.pt.query(page).is_ok() {
            return Ok(false);
        }
        self.populate_area_page(&area, page)?;
        Ok(true)
    }

    /// The host physical address backing `gpa`, if mapped.
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        self.pt.query(gpa).ok().map(|(hpa, _, _)| hpa)
    }

    /// The host address, flags and page size of the mapping of `gpa`.
    pub fn query(&self, gpa: GuestPhysAddr) -> Result<(HostPhysAddr, MappingFlags, PageSize)> {
        self.pt.query(gpa)
    }

    /// Reads guest memory at `gpa` into `buf`, page by page (guest-contiguous
    /// pages need not be host-contiguous). Pages of a lazy area that are not
    /// populated yet read as zeros. Errors: `NotMapped` for a byte outside
    /// every area, `Unsupported` for a device area.
    pub fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result {
        self.for_each_chunk(gpa, buf.len(), |area, cur, off, len| {
            match self.pt.query(cur) {
                Ok((hpa, _, _)) => {
                    let src = H::phys_to_virt(hpa).as_ptr();
                    // SAFETY: `hpa..hpa+len` is inside one mapped 4 KiB page
                    // of a non-device area, which is memory the address
                    // space owns (Alloc) or was promised (map_linear);
                    // `phys_to_virt` maps it. `buf[off..off+len]` is in
                    // bounds and does not overlap guest memory.
                    unsafe {
                        core::ptr::copy_nonoverlapping(src, buf[off..off + len].as_mut_ptr(), len)
                    };
                }
                // A lazy page nobody touched yet.
                Err(Error::NotMapped { .. }) if matches!(area.backend, Backend::Alloc { .. }) => {
                    buf[off..off + len].fill(0)
                }
                Err(e) => return Err(e),
            }
            Ok(())
        })
    }

    /// Writes `buf` to guest memory at `gpa`, page by page, populating pages
    /// of lazy areas as needed. Errors as for [`Self::read`], plus
    /// `NoMemory`; on error the bytes before the failing page are written.
    pub fn write(&mut self, gpa: GuestPhysAddr, buf: &[u8]) -> Result {
        // First check every byte is in a non-device area, so that a bad
        // range writes nothing.
        self.for_each_chunk(gpa, buf.len(), |_, _, _, _| Ok(()))?;
        let mut done = 0;
        while done < buf.len() {
            let cur = gpa + done;
            let len = (buf.len() - done).min(PAGE_SIZE_4K - cur.align_offset_4k());
            let hpa = match self.pt.query(cur) {
                Ok((hpa, _, _)) => hpa,
                Err(Error::NotMapped { .. }) => {
                    let area = self
                        .find_area(cur)
                        .copied()
                        .ok_or(Error::NotMapped { gpa: cur })?;
                    self.populate_area_page(&area, cur.align_down_4k())?;
                    self.pt.query(cur)?.0
                }
                Err(e) => return Err(e),
            };
            let dst = H::phys_to_virt(hpa).as_mut_ptr();
            // SAFETY: as in `read`; `hpa..hpa+len` is in one mapped page.
            unsafe { core::ptr::copy_nonoverlapping(buf[done..done + len].as_ptr(), dst, len) };
            done += len;
        }
        Ok(())
    }

    /// Reads a plain-data value (see [`GuestMemoryReader::read_obj`]).
    pub fn read_obj<T: crate::GuestPod>(&self, gpa: GuestPhysAddr) -> Result<T> {
        GuestMemoryReader::read_obj(self, gpa)
    }

    /// Writes a plain-data value (see [`GuestMemoryWriter::write_obj`]).
    pub fn write_obj<T: crate::GuestPod>(&mut self, gpa: GuestPhysAddr, val: &T) -> Result {
        GuestMemoryWriter::write_obj(self, gpa, val)
    }

    // ---- internals ----

    /// Splits `[gpa, gpa + len)` at 4 KiB boundaries and calls
    /// `f(area, chunk_gpa, offset_in_buffer, chunk_len)`, after checking that
    /// each chunk is in a non-device area.
    fn for_each_chunk(
        &self,
        gpa: GuestPhysAddr,
        len: usize,
        mut f: impl FnMut(&MemoryArea, GuestPhysAddr, usize, usize) -> Result,
    ) -> Result {
        if gpa.as_usize().checked_add(len).is_none() {
            return Err(Error::OutOfRange { gpa });
        }
        let mut done = 0;
        while done < len {
            let cur = gpa + done;
            let chunk = (len - done).min(PAGE_SIZE_4K - cur.align_offset_4k());
            let area = self.find_area(cur).ok_or(Error::NotMapped { gpa: cur })?;
            if area.flags.contains(MappingFlags::DEVICE) {
                return Err(Error::Unsupported(
                    "hypervisor access to a device area of guest memory",
                ));
            }
            f(area, cur, done, chunk)?;
            done += chunk;
        }
        Ok(())
    }

    fn check_new_area(&self, gpa: GuestPhysAddr, size: usize, flags: MappingFlags) -> Result {
        check_aligned(gpa.as_usize())?;
        check_aligned(size)?;
        if size == 0 {
            return Err(Error::InvalidInput("empty area"));
        }
        if !E::flags_valid(flags) {
            return Err(Error::InvalidFlags(flags));
        }
        let end = gpa
            .as_usize()
            .checked_add(size)
            .ok_or(Error::OutOfRange { gpa })?;
        if !self
            .range
            .contains_range(GuestPhysAddrRange::new(gpa, end.into()))
        {
            return Err(Error::OutOfRange { gpa });
        }
        if let Some((_, prev)) = self.areas.range(..end).next_back() {
            if prev.end().as_usize() > gpa.as_usize() {
                return Err(Error::AlreadyMapped {
                    gpa: prev.start().max(gpa),
                });
            }
        }
        Ok(())
    }

    fn insert_area(&mut self, area: MemoryArea) {
        self.areas.insert(area.start().as_usize(), area);
    }

    /// Allocates a frame and maps it at `page`.
    fn populate_page(&mut self, page: GuestPhysAddr, flags: MappingFlags) -> Result {
        let frame = H::alloc_frame().ok_or(Error::NoMemory)?;
        if let Err(e) = self.pt.map(page, frame, PageSize::Size4K, flags) {
            H::dealloc_frame(frame);
            return Err(e);
        }
        Ok(())
    }

    /// Maps the (unmapped) 4 KiB `page` of `area`.
    fn populate_area_page(&mut self, area: &MemoryArea, page: GuestPhysAddr) -> Result {
        match area.backend {
            Backend::Alloc { .. } => self.populate_page(page, area.flags),
            Backend::Linear { .. } => {
                let hpa = area
                    .linear_hpa(page)
                    .ok_or(Error::NotMapped { gpa: page })?;
                self.pt.map(page, hpa, PageSize::Size4K, area.flags)
            }
        }
    }

    /// Unmaps `[start, end)` of `area`, releasing allocated frames.
    fn unmap_pages(&mut self, area: &MemoryArea, start: usize, end: usize) -> Result {
        let owned = matches!(area.backend, Backend::Alloc { .. });
        self.pt
            .unmap_region_with(start.into(), end - start, |_, hpa, _, _| {
                if owned {
                    H::dealloc_frame(hpa);
                }
            })
    }
}

impl<E: NestedPagingFormat, H: AxMmHal> GuestMemoryReader for AddrSpace<E, H> {
    fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result {
        self.read(gpa, buf)
    }
}

impl<E: NestedPagingFormat, H: AxMmHal> GuestMemoryWriter for AddrSpace<E, H> {
    fn write_bytes(&mut self, gpa: GuestPhysAddr, buf: &[u8]) -> Result {
        self.write(gpa, buf)
    }
}

impl<E: NestedPagingFormat, H: AxMmHal> Drop for AddrSpace<E, H> {
    fn drop(&mut self) {
        self.clear();
    }
}

impl<E: NestedPagingFormat, H: AxMmHal> fmt::Debug for AddrSpace<E, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddrSpace")
            .field("range", &self.range)
            .field("page_table", &self.pt)
            .field("areas", &self.areas.values())
            .finish()
    }
}

fn check_aligned(addr: usize) -> Result {
    if addr % PAGE_SIZE_4K == 0 {
        Ok(())
    } else {
        Err(Error::Misaligned {
            addr,
            align: PAGE_SIZE_4K,
        })
    }
}

/// An address space whose nested paging format is chosen at run time (Intel
/// EPT or AMD NPT, from CPUID), with the same methods as [`AddrSpace`].
#[derive(Debug)]
pub enum DynAddrSpace<H: AxMmHal> {
    /// Intel EPT.
    Ept(AddrSpace<EPTEntry, H>),
    /// AMD NPT.
    Npt(AddrSpace<NPTEntry, H>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            DynAddrSpace::Ept($s) => $e,
            DynAddrSpace::Npt($s) => $e,
        }
    };
}

impl<H: AxMmHal> DynAddrSpace<H> {
    /// An empty address space of format `kind` (see [`AddrSpace::new`]).
    pub fn new(kind: NestedPagingKind, range: GuestPhysAddrRange) -> Result<Self> {
        Ok(match kind {
            NestedPagingKind::Ept => Self::Ept(AddrSpace::new(range)?),
            NestedPagingKind::Npt => Self::Npt(AddrSpace::new(range)?),
        })
    }

    /// The nested paging format.
    pub fn kind(&self) -> NestedPagingKind {
        match self {
            Self::Ept(_) => NestedPagingKind::Ept,
            Self::Npt(_) => NestedPagingKind::Npt,
        }
    }

    /// See [`AddrSpace::range`].
    pub fn range(&self) -> GuestPhysAddrRange {
        delegate!(self, a => a.range())
    }

    /// See [`AddrSpace::page_table_root`].
    pub fn page_table_root(&self) -> HostPhysAddr {
        delegate!(self, a => a.page_table_root())
    }

    /// See [`AddrSpace::areas`].
    pub fn areas(&self) -> alloc::collections::btree_map::Values<'_, usize, MemoryArea> {
        delegate!(self, a => a.areas())
    }

    /// See [`AddrSpace::find_area`].
    pub fn find_area(&self, gpa: GuestPhysAddr) -> Option<&MemoryArea> {
        delegate!(self, a => a.find_area(gpa))
    }

    /// See [`AddrSpace::mapping_epoch`].
    #[inline]
    pub fn mapping_epoch(&self) -> u64 {
        delegate!(self, a => a.mapping_epoch())
    }

    /// See [`AddrSpace::contains_range`].
    pub fn contains_range(&self, gpa: GuestPhysAddr, size: usize) -> bool {
        delegate!(self, a => a.contains_range(gpa, size))
    }

    /// See [`AddrSpace::map_linear`].
    ///
    /// # Safety
    ///
    /// As for [`AddrSpace::map_linear`].
    pub unsafe fn map_linear(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        size: usize,
        flags: MappingFlags,
    ) -> Result {
        // SAFETY: the caller upholds the contract of `AddrSpace::map_linear`.
        delegate!(self, a => unsafe { a.map_linear(gpa, hpa, size, flags) })
    }

    /// See [`AddrSpace::map_alloc`].
    pub fn map_alloc(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        flags: MappingFlags,
        populate: bool,
    ) -> Result {
        delegate!(self, a => a.map_alloc(gpa, size, flags, populate))
    }

    /// See [`AddrSpace::unmap`].
    pub fn unmap(&mut self, gpa: GuestPhysAddr, size: usize) -> Result {
        delegate!(self, a => a.unmap(gpa, size))
    }

    /// See [`AddrSpace::clear`].
    pub fn clear(&mut self) {
        delegate!(self, a => a.clear())
    }

    /// See [`AddrSpace::handle_page_fault`].
    pub fn handle_page_fault(
        &mut self,
        gpa: GuestPhysAddr,
        access_flags: MappingFlags,
    ) -> Result<bool> {
        delegate!(self, a => a.handle_page_fault(gpa, access_flags))
    }

    /// See [`AddrSpace::translate`].
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        delegate!(self, a => a.translate(gpa))
    }

    /// See [`AddrSpace::query`].
    pub fn query(&self, gpa: GuestPhysAddr) -> Result<(HostPhysAddr, MappingFlags, PageSize)> {
        delegate!(self, a => a.query(gpa))
    }

    /// See [`AddrSpace::read`].
    pub fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result {
        delegate!(self, a => a.read(gpa, buf))
    }

    /// See [`AddrSpace::write`].
    pub fn write(&mut self, gpa: GuestPhysAddr, buf: &[u8]) -> Result {
        delegate!(self, a => a.write(gpa, buf))
    }

    /// See [`AddrSpace::read_obj`].
    pub fn read_obj<T: crate::GuestPod>(&self, gpa: GuestPhysAddr) -> Result<T> {
        delegate!(self, a => a.read_obj(gpa))
    }

    /// See [`AddrSpace::write_obj`].
    pub fn write_obj<T: crate::GuestPod>(&mut self, gpa: GuestPhysAddr, val: &T) -> Result {
        delegate!(self, a => a.write_obj(gpa, val))
    }
}

impl<H: AxMmHal> GuestMemoryReader for DynAddrSpace<H> {
    fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result {
        self.read(gpa, buf)
    }
}

impl<H: AxMmHal> GuestMemoryWriter for DynAddrSpace<H> {
    fn write_bytes(&mut self, gpa: GuestPhysAddr, buf: &[u8]) -> Result {
        self.write(gpa, buf)
    }
}

#[cfg(test)]
#[path = "address_space_tests.rs"]
mod tests;
