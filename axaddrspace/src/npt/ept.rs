//! Intel EPT entries (Intel SDM Vol. 3C, section 29.3 "The Extended Page
//! Table Mechanism (EPT)", tables "Format of an EPT PML4 Entry" to "Format of
//! an EPT Page-Table Entry that Maps a 4-KByte Page").

use core::fmt;

use memory_addr::PhysAddr;
use page_table_entry::{GenericPTE, MappingFlags};

use super::{NestedPagingFormat, NestedPagingKind};

bitflags::bitflags! {
    /// The bits of an EPT entry other than the address.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EPTFlags: u64 {
        /// Bit 0: read access.
        const READ = 1 << 0;
        /// Bit 1: write access.
        const WRITE = 1 << 1;
        /// Bit 2: execute access (for supervisor-mode linear addresses when
        /// mode-based execute control is on).
        const EXECUTE = 1 << 2;
        /// Bits 5:3 of a leaf: EPT memory type (see [`EPTMemType`]).
        const MEM_TYPE_MASK = 0b111 << 3;
        /// Bit 6 of a leaf: ignore the guest PAT memory type.
        const IGNORE_PAT = 1 << 6;
        /// Bit 7 of a PDPTE/PDE: the entry maps a 1 GiB / 2 MiB page.
        const HUGE_PAGE = 1 << 7;
        /// Bit 8: accessed (when EPTP bit 6 enables accessed/dirty flags).
        const ACCESSED = 1 << 8;
        /// Bit 9 of a leaf: dirty (when EPTP bit 6 enables accessed/dirty flags).
        const DIRTY = 1 << 9;
        /// Bit 10: execute access for user-mode linear addresses (when
        /// mode-based execute control is on; ignored otherwise).
        const EXECUTE_FOR_USER = 1 << 10;
        /// Bit 11 (ignored by the processor): this crate's marker for
        /// [`MappingFlags::DEVICE`].
        const SW_DEVICE = 1 << 11;
        /// Bit 63 of a leaf: suppress #VE (when EPT-violation #VE is on).
        const SUPPRESS_VE = 1 << 63;
    }
}

/// EPT memory type, bits 5:3 of a leaf EPT entry (SDM Vol. 3C, section 29.3.7;
/// same encoding as the MTRR types). 2, 3 and 7 are reserved and cause an EPT
/// misconfiguration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EPTMemType {
    /// Uncacheable (0): device memory.
    Uncached = 0,
    /// Write combining (1).
    WriteCombining = 1,
    /// Write through (4).
    WriteThrough = 4,
    /// Write protected (5).
    WriteProtected = 5,
    /// Write back (6): ordinary RAM.
    WriteBack = 6,
}

impl EPTMemType {
    /// Decodes the 3-bit memory type field; `None` for the reserved values.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::Uncached),
            1 => Some(Self::WriteCombining),
            4 => Some(Self::WriteThrough),
            5 => Some(Self::WriteProtected),
            6 => Some(Self::WriteBack),
            _ => None,
        }
    }
}

/// An Intel EPT entry (any level), 64 bits.
///
/// Mapping of [`MappingFlags`]: `READ`/`WRITE`/`EXECUTE` set R/W/X (bits 0-2);
/// `EXECUTE` also sets user-execute (bit 10) so that the mapping behaves the
/// same with or without mode-based execute control; `DEVICE` or `UNCACHED`
/// select memory type UC (0), otherwise WB (6). `USER` has no meaning in a
/// nested table and is ignored. Read back, a UC entry reports `UNCACHED`, and
/// an entry made with `DEVICE` also reports `DEVICE` (kept in ignored bit 11).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct EPTEntry(u64);

impl EPTEntry {
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
    pub const fn ept_flags(&self) -> EPTFlags {
        EPTFlags::from_bits_retain(self.0 & !Self::PHYS_ADDR_MASK)
    }

    /// A leaf entry with an explicit memory type and ignore-PAT bit.
    pub fn new_page_with_mem_type(
        paddr: PhysAddr,
        flags: MappingFlags,
        is_huge: bool,
        mem_type: EPTMemType,
        ignore_pat: bool,
    ) -> Self {
        let mut e = Self::new_page(paddr, flags, is_huge);
        e.set_mem_type(mem_type);
        if ignore_pat {
            e.0 |= EPTFlags::IGNORE_PAT.bits();
        }
        e
    }

    /// The memory type of a leaf entry; `None` if the field holds a reserved
    /// value.
    pub const fn mem_type(&self) -> Option<EPTMemType> {
        EPTMemType::from_bits(((self.0 >> 3) & 0b111) as u8)
    }

    /// Sets the memory type field (bits 5:3).
    pub fn set_mem_type(&mut self, mem_type: EPTMemType) {
        self.0 = (self.0 & !EPTFlags::MEM_TYPE_MASK.bits()) | ((mem_type as u64) << 3);
    }

    /// Whether the processor set the accessed flag (bit 8).
    pub const fn is_accessed(&self) -> bool {
        self.0 & EPTFlags::ACCESSED.bits() != 0
    }

    /// Whether the processor set the dirty flag (bit 9).
    pub const fn is_dirty(&self) -> bool {
        self.0 & EPTFlags::DIRTY.bits() != 0
    }

    fn leaf_bits(flags: MappingFlags, is_huge: bool) -> u64 {
        let mut f = EPTFlags::empty();
        if flags.contains(MappingFlags::READ) {
            f |= EPTFlags::READ;
        }
        if flags.contains(MappingFlags::WRITE) {
            f |= EPTFlags::WRITE;
        }
        if flags.contains(MappingFlags::EXECUTE) {
            f |= EPTFlags::EXECUTE | EPTFlags::EXECUTE_FOR_USER;
        }
        if flags.contains(MappingFlags::DEVICE) {
            f |= EPTFlags::SW_DEVICE;
        }
        if is_huge {
            f |= EPTFlags::HUGE_PAGE;
        }
        let mem_type = if flags.intersects(MappingFlags::DEVICE | MappingFlags::UNCACHED) {
            EPTMemType::Uncached
        } else {
            EPTMemType::WriteBack
        };
        f.bits() | ((mem_type as u64) << 3)
    }
}

impl GenericPTE for EPTEntry {
    fn new_page(paddr: PhysAddr, flags: MappingFlags, is_huge: bool) -> Self {
        Self(Self::leaf_bits(flags, is_huge) | (paddr.as_usize() as u64 & Self::PHYS_ADDR_MASK))
    }

    fn new_table(paddr: PhysAddr) -> Self {
        // Non-leaf entries: full access, bits 7:3 must be zero.
        let f = EPTFlags::READ | EPTFlags::WRITE | EPTFlags::EXECUTE | EPTFlags::EXECUTE_FOR_USER;
        Self(f.bits() | (paddr.as_usize() as u64 & Self::PHYS_ADDR_MASK))
    }

    fn paddr(&self) -> PhysAddr {
        PhysAddr::from((self.0 & Self::PHYS_ADDR_MASK) as usize)
    }

    fn flags(&self) -> MappingFlags {
        if !self.is_present() {
            return MappingFlags::empty();
        }
        let f = self.ept_flags();
        let mut ret = MappingFlags::empty();
        if f.contains(EPTFlags::READ) {
            ret |= MappingFlags::READ;
        }
        if f.contains(EPTFlags::WRITE) {
            ret |= MappingFlags::WRITE;
        }
        if f.contains(EPTFlags::EXECUTE) {
            ret |= MappingFlags::EXECUTE;
        }
        if f.contains(EPTFlags::SW_DEVICE) {
            ret |= MappingFlags::DEVICE;
        }
        if self.mem_type() == Some(EPTMemType::Uncached) {
            ret |= MappingFlags::UNCACHED;
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
        // SDM: an entry is present if any of bits 2:0 is set.
        self.0 & 0b111 != 0
    }

    fn is_huge(&self) -> bool {
        self.0 & EPTFlags::HUGE_PAGE.bits() != 0
    }

    fn clear(&mut self) {
        self.0 = 0;
    }
}

impl NestedPagingFormat for EPTEntry {
    const KIND: NestedPagingKind = NestedPagingKind::Ept;

    fn flags_valid(flags: MappingFlags) -> bool {
        // At least one access right; write without read is an EPT
        // misconfiguration (SDM 29.3.3.1). Execute-only is allowed (it needs
        // IA32_VMX_EPT_VPID_CAP bit 0, which the VMM checks).
        let any =
            flags.intersects(MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE);
        let write_only = flags.contains(MappingFlags::WRITE) && !flags.contains(MappingFlags::READ);
        any && !write_only
    }

    fn split_part(&self, paddr: PhysAddr, is_huge: bool) -> Self {
        // Keep every attribute bit (memory type, ignore-PAT, A/D, ...).
        let mut bits = self.0 & !(Self::PHYS_ADDR_MASK | EPTFlags::HUGE_PAGE.bits());
        if is_huge {
            bits |= EPTFlags::HUGE_PAGE.bits();
        }
        Self(bits | (paddr.as_usize() as u64 & Self::PHYS_ADDR_MASK))
    }
}

impl fmt::Debug for EPTEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EPTEntry")
            .field("raw", &format_args!("{:#x}", self.0))
            .field("paddr", &self.paddr())
            .field("flags", &self.ept_flags())
            .finish()
    }
}
