//! Nested (second-level) page tables: Intel EPT and AMD NPT.

mod amd;
mod ept;
mod table;

pub use amd::{NPTEntry, NPTFlags};
pub use ept::{EPTEntry, EPTFlags, EPTMemType};
pub use table::{GPA_LIMIT, NestedPageTable};

use memory_addr::PhysAddr;
use page_table_entry::{GenericPTE, MappingFlags};

/// Which nested paging format an entry type implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NestedPagingKind {
    /// Intel VMX extended page tables.
    Ept,
    /// AMD SVM nested page tables.
    Npt,
}

/// An entry format of a 4-level nested page table.
///
/// Implemented by [`EPTEntry`] and [`NPTEntry`]; the entry must be 8 bytes
/// (checked at compile time when a [`NestedPageTable`] is built).
pub trait NestedPagingFormat: GenericPTE + 'static {
    /// The format this entry implements.
    const KIND: NestedPagingKind;

    /// Whether a leaf entry can express `flags` (at least one access right,
    /// and the format's own constraints).
    fn flags_valid(flags: MappingFlags) -> bool;

    /// The entry for one part of this huge leaf after a split: same
    /// attributes, address `paddr`, `is_huge` for the page size of the part.
    fn split_part(&self, paddr: PhysAddr, is_huge: bool) -> Self {
        Self::new_page(paddr, self.flags(), is_huge)
    }
}

/// The size of a page mapped by a nested page table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(usize)]
pub enum PageSize {
    /// 4 KiB, mapped by a PTE (level 1).
    Size4K = 0x1000,
    /// 2 MiB, mapped by a PDE with the page-size bit (level 2).
    Size2M = 0x20_0000,
    /// 1 GiB, mapped by a PDPTE with the page-size bit (level 3).
    Size1G = 0x4000_0000,
}

impl PageSize {
    /// The size in bytes.
    pub const fn size(self) -> usize {
        self as usize
    }

    /// The paging-structure level whose entry maps a page of this size
    /// (1 = PT, 2 = PD, 3 = PDPT).
    pub const fn level(self) -> usize {
        match self {
            Self::Size4K => 1,
            Self::Size2M => 2,
            Self::Size1G => 3,
        }
    }

    /// The page size mapped by a leaf at `level` (1..=3).
    pub const fn from_level(level: usize) -> Option<Self> {
        match level {
            1 => Some(Self::Size4K),
            2 => Some(Self::Size2M),
            3 => Some(Self::Size1G),
            _ => None,
        }
    }

    /// Whether the page size is larger than 4 KiB.
    pub const fn is_huge(self) -> bool {
        !matches!(self, Self::Size4K)
    }
}

impl From<PageSize> for usize {
    fn from(s: PageSize) -> usize {
        s.size()
    }
}

/// Page table for Intel EPT.
pub type EptPageTable<H> = NestedPageTable<EPTEntry, H>;
/// Page table for AMD NPT.
pub type NptPageTable<H> = NestedPageTable<NPTEntry, H>;

#[cfg(test)]
mod tests;
