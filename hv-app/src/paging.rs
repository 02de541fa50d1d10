//! Just enough of the x86_64 4-level page table format to find the entry
//! that maps an address and to make it uncacheable (for MMIO such as the
//! local APIC page). SDM vol. 3A section 5.5 (4-level paging) and 13.12
//! (PAT); AMD APM vol. 2 sections 5.3 and 7.8.

use crate::{Error, Result};

/// Entry bit 0: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Entry bit 3: page-level write-through (PAT index bit 0).
pub const PTE_PWT: u64 = 1 << 3;
/// Entry bit 4: page-level cache disable (PAT index bit 1).
pub const PTE_PCD: u64 = 1 << 4;
/// Entry bit 7 in a PDPT or PD entry: the entry maps a 1 GiB or 2 MiB page.
pub const PTE_HUGE: u64 = 1 << 7;
/// Bits 51-12: the physical address of the next table or the page.
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The entry that maps an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// Physical address of the entry itself.
    pub entry_addr: u64,
    /// Its value.
    pub entry: u64,
    /// Size of the page it maps: 4 KiB, 2 MiB or 1 GiB.
    pub page_size: u64,
}

impl Leaf {
    /// The physical address this entry translates `vaddr` to (`vaddr`
    /// must lie in the page the entry maps).
    pub const fn translate(&self, vaddr: u64) -> u64 {
        let offset = vaddr & (self.page_size - 1);
        (self.entry & PTE_ADDR_MASK & !(self.page_size - 1)) + offset
    }
}

/// The index of `vaddr` in the table of `level` (4 = PML4 ... 1 = PT).
pub const fn table_index(vaddr: u64, level: u32) -> u64 {
    (vaddr >> (12 + 9 * (level - 1))) & 0x1ff
}

/// Walks the tables from `cr3` to the entry mapping `vaddr`; `read` reads
/// the 8-byte entry at a physical address. Fails with
/// [`Error::Unsupported`] if a level is not present.
pub fn find_leaf<F>(mut read: F, cr3: u64, vaddr: u64) -> Result<Leaf>
where
    F: FnMut(u64) -> Result<u64>,
{
    let mut table = cr3 & PTE_ADDR_MASK;
    let mut level = 4;
    loop {
        let entry_addr = table + 8 * table_index(vaddr, level);
        let entry = read(entry_addr)?;
        if entry & PTE_PRESENT == 0 {
            return Err(Error::Unsupported("the address is not mapped"));
        }
        // PS is defined at the PDPT (level 3) and PD (level 2); a PT entry
        // (level 1) always maps a page.
        if level == 1 || (level <= 3 && entry & PTE_HUGE != 0) {
            return Ok(Leaf {
                entry_addr,
                entry,
                page_size: 1 << (12 + 9 * (level - 1)),
            });
        }
        table = entry & PTE_ADDR_MASK;
        level -= 1;
    }
}

/// `entry` with PCD and PWT set: PAT entry 3, which is UC in the power-on
/// PAT (`IA32_PAT` = 0x0007_0406_0007_0406) as long as the PAT bit stays
/// clear.
pub const fn uncacheable(entry: u64) -> u64 {
    entry | PTE_PCD | PTE_PWT
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The boot identity map of entry.rs: PML4 at 0x110000, PDPT at
    /// 0x111000, four page directories from 0x112000, 2 MiB pages.
    fn boot_map() -> HashMap<u64, u64> {
        let mut m = HashMap::new();
        m.insert(0x11_0000, 0x11_1000 | 3);
        for i in 0..4u64 {
            m.insert(0x11_1000 + 8 * i, (0x11_2000 + 0x1000 * i) | 3);
        }
        for i in 0..2048u64 {
            m.insert(0x11_2000 + 8 * i, (i << 21) | 0x83);
        }
        m
    }

    fn reader(m: &HashMap<u64, u64>) -> impl FnMut(u64) -> Result<u64> + '_ {
        |a| Ok(m.get(&a).copied().unwrap_or(0))
    }

    #[test]
    fn the_local_apic_is_in_the_last_page_directory() {
        let m = boot_map();
        let leaf = find_leaf(reader(&m), 0x11_0000, 0xfee0_0000).unwrap();
        // 0xFEE00000 >> 21 = 2039 = PD 3 (0x115000), index 0x1F7.
        assert_eq!(table_index(0xfee0_0000, 3), 3);
        assert_eq!(table_index(0xfee0_0000, 2), 0x1f7);
        assert_eq!(leaf.entry_addr, 0x11_5000 + 8 * 0x1f7);
        assert_eq!(leaf.entry, 0xfee0_0083);
        assert_eq!(leaf.page_size, 2 << 20);
        assert_eq!(uncacheable(leaf.entry), 0xfee0_009b);
        assert_eq!(leaf.translate(0xfee0_0300), 0xfee0_0300);
        // An entry overwritten with junk (bytes of 0x07) maps elsewhere.
        let junk = Leaf {
            entry: 0x0707_0707_0707_0707,
            ..leaf
        };
        assert_eq!(junk.translate(0xfee0_0300), 0x0007_0707_0700_0300);
    }

    #[test]
    fn unmapped_addresses_and_4k_pages() {
        let mut m = boot_map();
        // 256 GiB: PDPT entry 256 is absent.
        assert!(matches!(
            find_leaf(reader(&m), 0x11_0000, 0x40_0000_0000),
            Err(Error::Unsupported(_))
        ));
        // Split the first 2 MiB into a page table at 0x200000.
        m.insert(0x11_2000, 0x20_0000 | 3);
        m.insert(0x20_0000 + 8 * 8, 0x8000 | 3);
        let leaf = find_leaf(reader(&m), 0x11_0000, 0x8123).unwrap();
        assert_eq!(
            leaf,
            Leaf {
                entry_addr: 0x20_0040,
                entry: 0x8003,
                page_size: 4096
            }
        );
        // A 1 GiB page at PDPT level.
        m.insert(0x11_1000 + 8, (1 << 30) | 0x83);
        let leaf = find_leaf(reader(&m), 0x11_0000, 0x4000_1234).unwrap();
        assert_eq!(leaf.page_size, 1 << 30);
        // A read error is passed on.
        let err = find_leaf(
            |a| Err(Error::OutOfBounds { addr: a, len: 8 }),
            0x11_0000,
            0,
        );
        assert!(matches!(
            err,
            Err(Error::OutOfBounds {
                addr: 0x11_0000,
                len: 8
            })
        ));
    }

    #[test]
    fn pat_bits() {
        assert_eq!(PTE_PWT | PTE_PCD, 0x18);
        assert_eq!(PTE_HUGE, 0x80);
    }
}
