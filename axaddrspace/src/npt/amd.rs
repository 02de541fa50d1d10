//! AMD NPT entries: ordinary x86-64 long-mode page-table entries (AMD APM
//! Vol. 2, section 5.4 "Long-Mode Page Translation" and section 15.25
//! "Nested Paging").

use core::fmt;

use memory_addr::PhysAddr;
use page_table_entry::{GenericPTE, MappingFlags};

use super::{NestedPagingFormat, NestedPagingKind};

bitflags::bitflags! {
    /// The bits of an x86-64 page-table entry other than the address.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct NPTFlags: u64 {
        /// Bit 0: present.
        const PRESENT = 1 << 0;
        /// Bit 1: read/write.
        const WRITABLE = 1 << 1;
        /// Bit 2: user/supervisor. Must be set on every NPT entry: all guest
        /// accesses are user accesses to the nested table (APM 15.25.5).
        const USER = 1 << 2;
        /// Bit 3: page-level write-through.
        const WRITE_THROUGH = 1 << 3;
        /// Bit 4: page-level cache disable.
        const NO_CACHE = 1 << 4;
        /// Bit 5: accessed.
        const ACCESSED = 1 << 5;
        /// Bit 6: dirty (leaf entries).
        const DIRTY = 1 << 6;
        /// Bit 7 of a PDPTE/PDE: page size (1 GiB / 2 MiB page); PAT in a PTE.
        const HUGE_PAGE = 1 << 7;
        /// Bit 8: global (leaf entries).
        const GLOBAL = 1 << 8;
        /// Bit 11 (available to software): this crate's marker for
        /// [`MappingFlags::DEVICE`].
        const SW_DEVICE = 1 << 11;
        /// Bit 63: no-execute.
        const NO_EXECUTE = 1 << 63;
    }
}

/// An AMD nested page table entry (any level), 64 bits.
///
/// Mapping of [`MappingFlags`]: a non-empty set gives P and US (always, see
/// [`NPTFlags::USER`]); `WRITE` sets RW; no `EXECUTE` sets NX; `DEVICE` or
/// `UNCACHED` set PCD and PWT (UC with the default PAT). `USER` is ignored.
/// Read back, a PCD entry reports `UNCACHED`, and one made with `DEVICE` also
/// reports `DEVICE` (kept in available bit 11).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct NPTEntry(u64);

impl NPTEntry {
    /// Bits 51:12: the physical address of the next table or of the page.
    pub const PHYS_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

    /// An entry with all bits zero (not present).
    pub const fn empty() -> Self {
        Self(0)
    }

    /// An entry with the raw value `bits`.
    pub const fn from_raw(bits: u64) -> Self {
        Self(bits)
    }

    /// The raw 64-bit value.
    pub const fn raw(&self) -> u64 {
        self.0
    }

    /// The non-address bits.
    pub const fn npt_flags(&self) -> NPTFlags {
        NPTFlags::from_bits_retain(self.0 & !Self::PHYS_ADDR_MASK)
    }

    fn leaf_bits(flags: MappingFlags, is_huge: bool) -> u64 {
        if flags.is_empty() {
            return 0;
        }
        let mut f = NPTFlags::PRESENT | NPTFlags::USER;
        if flags.contains(MappingFlags::WRITE) {
            f |= NPTFlags::WRITABLE;
        }
        if !flags.contains(MappingFlags::EXECUTE) {
            f |= NPTFlags::NO_EXECUTE;
        }
        if flags.intersects(MappingFlags::DEVICE | MappingFlags::UNCACHED) {
            f |= NPTFlags::NO_CACHE | NPTFlags::WRITE_THROUGH;
        }
        if flags.contains(MappingFlags::DEVICE) {
            f |= NPTFlags::SW_DEVICE;
        }
        if is_huge {
            f |= NPTFlags::HUGE_PAGE;
        }
        f.bits()
    }
}

impl GenericPTE for NPTEntry {
    fn new_page(paddr: PhysAddr, flags: MappingFlags, is_huge: bool) -> Self {
        Self(Self::leaf_bits(flags, is_huge) | (paddr.as_usize() as u64 & Self::PHYS_ADDR_MASK))
    }

    fn new_table(paddr: PhysAddr) -> Self {
        let f = NPTFlags::PRESENT | NPTFlags::WRITABLE | NPTFlags::USER;
        Self(f.bits() | (paddr.as_usize() as u64 & Self::PHYS_ADDR_MASK))
    }

    fn paddr(&self) -> PhysAddr {
        PhysAddr::from((self.0 & Self::PHYS_ADDR_MASK) as usize)
    }

    fn flags(&self) -> MappingFlags {
        let f = self.npt_flags();
        if !f.contains(NPTFlags::PRESENT) {
            return MappingFlags::empty();
        }
        let mut ret = MappingFlags::READ;
        if f.contains(NPTFlags::WRITABLE) {
            ret |= MappingFlags::WRITE;
        }
        if !f.contains(NPTFlags::NO_EXECUTE) {
            ret |= MappingFlags::EXECUTE;
        }
        if f.contains(NPTFlags::NO_CACHE) {
            ret |= MappingFlags::UNCACHED;
        }
        if f.contains(NPTFlags::SW_DEVICE) {
            ret |= MappingFlags::DEVICE;
        }
        ret
    }

    fn set_paddr(&mut self, paddr: PhysAddr) {
        self.0 =
            (self.0 & !Self::PHYS_ADDR_MASK) | (paddr.as_usize() as u64 & Self::PHYS_ADDR_MASK);
    }

    fn set_flags(&mut self, flags: MappingFlags, is_huge: bool) {
        self.0 = (self.0 & Self::PHYS_ADDR_MASK) | Self::leaf_bits(flags, is_huge);
    }

    fn bits(self) -> usize {
        self.0 as usize
    }

    fn is_unused(&self) -> bool {
        self.0 == 0
    }

    fn is_present(&self) -> bool {
        self.0 & NPTFlags::PRESENT.bits() != 0
    }

    fn is_huge(&self) -> bool {
        self.0 & NPTFlags::HUGE_PAGE.bits() != 0
    }

    fn clear(&mut self) {
        self.0 = 0;
    }
}

impl NestedPagingFormat for NPTEntry {
    const KIND: NestedPagingKind = NestedPagingKind::Npt;

    fn flags_valid(flags: MappingFlags) -> bool {
        // A present x86 entry is always readable: read access is required,
        // and write-only / execute-only cannot be expressed.
        flags.contains(MappingFlags::READ)
    }
}

impl fmt::Debug for NPTEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NPTEntry")
            .field("raw", &format_args!("{:#x}", self.0))
            .field("paddr", &self.paddr())
            .field("flags", &self.npt_flags())
            .finish()
    }
}
