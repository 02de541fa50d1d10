//! Tests of the entry formats (bit positions from the Intel SDM Vol. 3C
//! section 29.3 and the AMD APM Vol. 2 sections 5.4 / 15.25) and of the
//! nested page table.

extern crate std;

use std::vec::Vec;

use memory_addr::PhysAddr;
use page_table_entry::{GenericPTE, MappingFlags as MF};

use super::*;
use crate::test_util::HostHal;
use crate::{Error, GuestPhysAddr, HostPhysAddr};

fn gpa(a: usize) -> GuestPhysAddr {
    GuestPhysAddr::from_usize(a)
}
fn hpa(a: usize) -> HostPhysAddr {
    HostPhysAddr::from_usize(a)
}

const RWX: MF = MF::READ.union(MF::WRITE).union(MF::EXECUTE);
const RW: MF = MF::READ.union(MF::WRITE);

// ---------------------------------------------------------------- EPT bits

#[test]
fn ept_leaf_bits_match_sdm() {
    // R=bit0, W=bit1, X=bit2, memory type WB (6) in bits 5:3, user-execute
    // bit 10, address in bits 51:12.
    let e = EPTEntry::new_page(PhysAddr::from(0x1234_5000), RWX, false);
    assert_eq!(e.raw(), 0x1234_5000 | 0b111 | (6 << 3) | (1 << 10));
    assert_eq!(e.raw(), 0x1234_5437);
    assert_eq!(e.mem_type(), Some(EPTMemType::WriteBack));
    assert!(!e.is_huge());
    assert_eq!(e.paddr(), PhysAddr::from(0x1234_5000));
    assert_eq!(e.flags(), RWX);

    // Read-only 1 GiB page: R, WB, huge bit 7.
    let e = EPTEntry::new_page(PhysAddr::from(0x4000_0000), MF::READ, true);
    assert_eq!(e.raw(), 0x4000_0000 | 1 | 0x30 | 0x80);
    assert!(e.is_huge());
    assert_eq!(e.flags(), MF::READ);

    // Execute-only: present (any of bits 2:0), no read.
    let e = EPTEntry::new_page(PhysAddr::from(0x2000), MF::EXECUTE, false);
    assert_eq!(e.raw() & 0b111, 0b100);
    assert!(e.is_present());
    assert_eq!(e.flags(), MF::EXECUTE);
}

#[test]
fn ept_device_memory_is_uncached() {
    // UC is memory type 0; bit 11 (ignored by the CPU) remembers DEVICE.
    let e = EPTEntry::new_page(PhysAddr::from(0xfee0_0000), RW | MF::DEVICE, false);
    assert_eq!(e.raw(), 0xfee0_0000 | 0b011 | (1 << 11));
    assert_eq!(e.mem_type(), Some(EPTMemType::Uncached));
    assert_eq!(e.flags(), RW | MF::DEVICE | MF::UNCACHED);

    let e = EPTEntry::new_page(PhysAddr::from(0x3000), RW | MF::UNCACHED, false);
    assert_eq!(e.raw(), 0x3003);
    assert_eq!(e.flags(), RW | MF::UNCACHED);
}

#[test]
fn ept_table_entry_and_presence() {
    // Non-leaf: R|W|X (and user-execute), bits 7:3 zero.
    let t = EPTEntry::new_table(PhysAddr::from(0xabc_d000));
    assert_eq!(t.raw(), 0xabc_d000 | 0b111 | (1 << 10));
    assert_eq!(t.raw() & 0xf8, 0);
    assert!(t.is_present());
    assert!(!t.is_huge());

    // Memory type bits alone do not make an entry present.
    let e = EPTEntry::from_raw(6 << 3);
    assert!(!e.is_present());
    assert!(!e.is_unused());
    assert_eq!(e.flags(), MF::empty());
    assert!(EPTEntry::empty().is_unused());
}

#[test]
fn ept_mem_type_ignore_pat_accessed_dirty() {
    let e = EPTEntry::new_page_with_mem_type(
        PhysAddr::from(0x20_0000),
        RW,
        true,
        EPTMemType::WriteCombining,
        true,
    );
    // WC = 1 in bits 5:3, ignore-PAT bit 6, huge bit 7.
    assert_eq!(e.raw(), 0x20_0000 | 0b011 | (1 << 3) | (1 << 6) | (1 << 7));
    assert_eq!(e.mem_type(), Some(EPTMemType::WriteCombining));
    assert!(e.ept_flags().contains(EPTFlags::IGNORE_PAT));
    for (code, t) in [
        (0, Some(EPTMemType::Uncached)),
        (1, Some(EPTMemType::WriteCombining)),
        (2, None),
        (3, None),
        (4, Some(EPTMemType::WriteThrough)),
        (5, Some(EPTMemType::WriteProtected)),
        (6, Some(EPTMemType::WriteBack)),
        (7, None),
    ] {
        assert_eq!(EPTMemType::from_bits(code), t, "memory type {code}");
    }
    // Accessed = bit 8, dirty = bit 9 (set by the CPU with EPTP bit 6).
    let hw = EPTEntry::from_raw(e.raw() | (1 << 8) | (1 << 9));
    assert!(hw.is_accessed() && hw.is_dirty());
    assert!(!e.is_accessed() && !e.is_dirty());
}

#[test]
fn ept_split_part_keeps_attributes() {
    let e = EPTEntry::new_page_with_mem_type(
        PhysAddr::from(0x4000_0000),
        MF::READ,
        true,
        EPTMemType::WriteThrough,
        true,
    );
    let part = e.split_part(PhysAddr::from(0x4020_0000), true);
    assert_eq!(part.raw(), e.raw() - 0x4000_0000 + 0x4020_0000);
    let small = e.split_part(PhysAddr::from(0x4000_1000), false);
    assert_eq!(small.raw(), (e.raw() & !0x4000_0080) | 0x4000_1000);
    assert!(!small.is_huge());
    assert_eq!(small.mem_type(), Some(EPTMemType::WriteThrough));
}

#[test]
fn ept_flags_validity() {
    assert!(EPTEntry::flags_valid(MF::READ));
    assert!(EPTEntry::flags_valid(MF::EXECUTE));
    assert!(EPTEntry::flags_valid(RWX | MF::DEVICE));
    // Write without read is an EPT misconfiguration.
    assert!(!EPTEntry::flags_valid(MF::WRITE));
    assert!(!EPTEntry::flags_valid(MF::WRITE | MF::EXECUTE));
    assert!(!EPTEntry::flags_valid(MF::empty()));
    assert!(!EPTEntry::flags_valid(MF::DEVICE));
}

// ---------------------------------------------------------------- NPT bits

#[test]
fn npt_leaf_bits_match_apm() {
    // P=bit0, RW=bit1, US=bit2 (always set, APM 15.25.5), NX=bit63.
    let e = NPTEntry::new_page(PhysAddr::from(0x1234_5000), RW, false);
    assert_eq!(e.raw(), 0x8000_0000_1234_5007);
    assert_eq!(e.flags(), RW);
    assert!(!e.is_huge());

    // Executable 2 MiB page: PS = bit 7, no NX.
    let e = NPTEntry::new_page(PhysAddr::from(0x4000_0000), RWX, true);
    assert_eq!(e.raw(), 0x4000_0087);
    assert!(e.is_huge());
    assert_eq!(e.flags(), RWX);

    // Read-only: US set, RW clear.
    let e = NPTEntry::new_page(PhysAddr::from(0x5000), MF::READ | MF::EXECUTE, false);
    assert_eq!(e.raw(), 0x5005);
}

#[test]
fn npt_user_bit_on_every_entry() {
    for flags in [MF::READ, RW, RWX, RW | MF::DEVICE, MF::READ | MF::UNCACHED] {
        for huge in [false, true] {
            let e = NPTEntry::new_page(PhysAddr::from(0x20_0000), flags, huge);
            assert_eq!(e.raw() & 0b101, 0b101, "P and US for {flags:?}");
        }
    }
    let t = NPTEntry::new_table(PhysAddr::from(0x7000));
    assert_eq!(t.raw(), 0x7007);
}

#[test]
fn npt_device_is_pcd_pwt() {
    // PWT = bit 3, PCD = bit 4: UC with the default PAT; bit 11 = DEVICE.
    let e = NPTEntry::new_page(PhysAddr::from(0xfec0_0000), RW | MF::DEVICE, false);
    assert_eq!(e.raw(), 0x8000_0000_fec0_081f);
    assert_eq!(e.flags(), RW | MF::DEVICE | MF::UNCACHED);
    let e = NPTEntry::from_raw(0x9000 | 0x6); // RW|US without P
    assert!(!e.is_present());
    assert_eq!(e.flags(), MF::empty());
}

#[test]
fn npt_flags_validity() {
    assert!(NPTEntry::flags_valid(MF::READ));
    assert!(NPTEntry::flags_valid(RWX));
    // A present x86 entry is always readable.
    assert!(!NPTEntry::flags_valid(MF::EXECUTE));
    assert!(!NPTEntry::flags_valid(MF::WRITE));
    assert!(!NPTEntry::flags_valid(MF::empty()));
}

#[test]
fn page_sizes() {
    assert_eq!(PageSize::Size4K.size(), 4096);
    assert_eq!(PageSize::Size2M.size(), 2 * 1024 * 1024);
    assert_eq!(PageSize::Size1G.size(), 1024 * 1024 * 1024);
    for s in [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G] {
        assert_eq!(PageSize::from_level(s.level()), Some(s));
    }
    assert_eq!(PageSize::from_level(4), None);
}

// ---------------------------------------------------------------- table

/// Runs a generic test for both formats.
macro_rules! both_formats {
    ($($name:ident => $f:ident;)*) => {
        mod formats {
            use super::*;
            $(
                mod $name {
                    use super::*;
                    #[test]
                    fn ept() {
                        $f::<EPTEntry>();
                    }
                    #[test]
                    fn npt() {
                        $f::<NPTEntry>();
                    }
                }
            )*
        }
    };
}

both_formats! {
    map_query_unmap_4k => t_map_query_unmap_4k;
    map_query_unmap_2m => t_map_query_unmap_2m;
    map_query_unmap_1g => t_map_query_unmap_1g;
    map_region_picks_largest_pages => t_map_region_sizes;
    map_region_without_huge => t_map_region_no_huge;
    overlapping_maps_fail => t_overlap;
    misaligned_and_out_of_range => t_misaligned;
    unmap_errors => t_unmap_errors;
    unmap_splits_huge_page => t_unmap_split;
    protect_and_split => t_protect;
    no_memory_and_rollback => t_no_memory;
    frames_freed_on_drop => t_drop_frees;
    empty_table_replaced_by_huge_page => t_empty_table_reuse;
}

type Pt<E> = NestedPageTable<E, HostHal>;

fn mappings<E: NestedPagingFormat>(pt: &Pt<E>) -> Vec<(usize, usize, PageSize)> {
    let mut v = Vec::new();
    pt.for_each_mapping(|g, h, _, s| v.push((g.as_usize(), h.as_usize(), s)));
    v
}

fn t_map_query_unmap_4k<E: NestedPagingFormat>() {
    let base = HostHal::live_frames();
    let mut pt = Pt::<E>::new().unwrap();
    assert_eq!(HostHal::live_frames(), base + 1);
    pt.map(gpa(0x1000), hpa(0x20_3000), PageSize::Size4K, RW)
        .unwrap();
    // Root + PDPT + PD + PT.
    assert_eq!(HostHal::live_frames(), base + 4);
    assert_eq!(
        pt.query(gpa(0x1234)).unwrap(),
        (hpa(0x20_3234), RW, PageSize::Size4K)
    );
    assert_eq!(
        pt.query(gpa(0x2000)),
        Err(Error::NotMapped { gpa: gpa(0x2000) })
    );
    assert_eq!(
        pt.query(gpa(0x0fff)),
        Err(Error::NotMapped { gpa: gpa(0x0fff) })
    );
    let (e, s) = pt.leaf_entry(gpa(0x1000)).unwrap();
    assert_eq!(s, PageSize::Size4K);
    assert_eq!(e.paddr(), PhysAddr::from(0x20_3000));
    assert_eq!(
        pt.unmap(gpa(0x1000)).unwrap(),
        (hpa(0x20_3000), RW, PageSize::Size4K)
    );
    assert!(pt.query(gpa(0x1000)).is_err());
    // Emptied intermediate tables are released.
    assert_eq!(HostHal::live_frames(), base + 1);
    drop(pt);
    assert_eq!(HostHal::live_frames(), base);
}

fn t_map_query_unmap_2m<E: NestedPagingFormat>() {
    let base = HostHal::live_frames();
    let mut pt = Pt::<E>::new().unwrap();
    pt.map(gpa(0x4020_0000), hpa(0x8000_0000), PageSize::Size2M, RWX)
        .unwrap();
    // Root + PDPT + PD.
    assert_eq!(HostHal::live_frames(), base + 3);
    assert_eq!(
        pt.query(gpa(0x4021_2345)).unwrap(),
        (hpa(0x8001_2345), RWX, PageSize::Size2M)
    );
    assert_eq!(
        pt.query(gpa(0x403f_ffff)).unwrap(),
        (hpa(0x801f_ffff), RWX, PageSize::Size2M)
    );
    assert!(pt.query(gpa(0x4040_0000)).is_err());
    let (e, _) = pt.leaf_entry(gpa(0x4020_0000)).unwrap();
    assert!(e.is_huge());
    assert_eq!(e.bits() & (1 << 7), 1 << 7, "page-size bit 7");
    assert_eq!(
        pt.unmap(gpa(0x4020_0000)).unwrap(),
        (hpa(0x8000_0000), RWX, PageSize::Size2M)
    );
    assert_eq!(HostHal::live_frames(), base + 1);
}

fn t_map_query_unmap_1g<E: NestedPagingFormat>() {
    let base = HostHal::live_frames();
    let mut pt = Pt::<E>::new().unwrap();
    pt.map(
        gpa(0x80_0000_0000),
        hpa(0x1_4000_0000),
        PageSize::Size1G,
        MF::READ,
    )
    .unwrap();
    // Root + PDPT.
    assert_eq!(HostHal::live_frames(), base + 2);
    assert_eq!(
        pt.query(gpa(0x80_3fff_f000)).unwrap(),
        (hpa(0x1_7fff_f000), MF::READ, PageSize::Size1G)
    );
    // PML4 index 1 (bits 47:39), PDPT index 0.
    let root = pt.root_paddr().as_usize() as *const u64;
    // SAFETY: the identity HAL maps the root frame at its physical address.
    let pml4e1 = unsafe { root.add(1).read() };
    assert_ne!(pml4e1 & 1, 0);
    assert_eq!(pt.unmap(gpa(0x80_0000_0000)).unwrap().2, PageSize::Size1G);
    drop(pt);
    assert_eq!(HostHal::live_frames(), base);
}

fn t_map_region_sizes<E: NestedPagingFormat>() {
    let mut pt = Pt::<E>::new().unwrap();
    // gpa and hpa congruent modulo 1 GiB: 4K + 1G + 2M + 4K.
    let g = 0x3fff_f000;
    let h = 0x1_3fff_f000;
    let len = 0x1000 + 0x4000_0000 + 0x20_0000 + 0x1000;
    pt.map_region(gpa(g), hpa(h), len, RW, true).unwrap();
    assert_eq!(
        mappings(&pt),
        [
            (0x3fff_f000, 0x1_3fff_f000, PageSize::Size4K),
            (0x4000_0000, 0x1_4000_0000, PageSize::Size1G),
            (0x8000_0000, 0x1_8000_0000, PageSize::Size2M),
            (0x8020_0000, 0x1_8020_0000, PageSize::Size4K),
        ]
    );
    assert_eq!(pt.query(gpa(0x4000_0000)).unwrap().2, PageSize::Size1G);
    assert_eq!(
        pt.query(gpa(0x8010_0000)).unwrap(),
        (hpa(0x1_8010_0000), RW, PageSize::Size2M)
    );

    // hpa only 2 MiB aligned: 2 MiB pages instead of a 1 GiB page.
    let mut pt = Pt::<E>::new().unwrap();
    pt.map_region(gpa(0x4000_0000), hpa(0x20_0000), 0x4000_0000, RW, true)
        .unwrap();
    let m = mappings(&pt);
    assert_eq!(m.len(), 512);
    assert!(m.iter().all(|&(_, _, s)| s == PageSize::Size2M));
    assert_eq!(m[511], (0x7fe0_0000, 0x4000_0000, PageSize::Size2M));
}

fn t_map_region_no_huge<E: NestedPagingFormat>() {
    let mut pt = Pt::<E>::new().unwrap();
    pt.map_region(gpa(0x20_0000), hpa(0x40_0000), 0x40_0000, RW, false)
        .unwrap();
    let m = mappings(&pt);
    assert_eq!(m.len(), 1024);
    assert!(m.iter().all(|&(_, _, s)| s == PageSize::Size4K));
    // Not congruent: 4 KiB pages even with allow_huge.
    let mut pt = Pt::<E>::new().unwrap();
    pt.map_region(gpa(0x20_0000), hpa(0x30_1000), 0x20_0000, RW, true)
        .unwrap();
    assert_eq!(mappings(&pt).len(), 512);
    assert_eq!(pt.query(gpa(0x3f_f000)).unwrap().0, hpa(0x50_0000));
}

fn t_overlap<E: NestedPagingFormat>() {
    let mut pt = Pt::<E>::new().unwrap();
    pt.map(gpa(0x20_0000), hpa(0x60_0000), PageSize::Size2M, RW)
        .unwrap();
    // A 4 KiB page inside the 2 MiB page.
    assert_eq!(
        pt.map(gpa(0x20_1000), hpa(0x1000), PageSize::Size4K, RW),
        Err(Error::AlreadyMapped {
            gpa: gpa(0x20_0000)
        })
    );
    // The same 2 MiB page again.
    assert_eq!(
        pt.map(gpa(0x20_0000), hpa(0x1000_0000), PageSize::Size2M, RW),
        Err(Error::AlreadyMapped {
            gpa: gpa(0x20_0000)
        })
    );
    // A 1 GiB page over it.
    assert_eq!(
        pt.map(gpa(0), hpa(0x4000_0000), PageSize::Size1G, RW),
        Err(Error::AlreadyMapped { gpa: gpa(0) })
    );
    // A 2 MiB page over a 4 KiB page.
    pt.map(gpa(0x40_3000), hpa(0x3000), PageSize::Size4K, RW)
        .unwrap();
    assert_eq!(
        pt.map(gpa(0x40_0000), hpa(0x80_0000), PageSize::Size2M, RW),
        Err(Error::AlreadyMapped {
            gpa: gpa(0x40_0000)
        })
    );
    // map_region running into an existing page rolls back what it mapped.
    let before = mappings(&pt);
    assert_eq!(
        pt.map_region(gpa(0x40_0000), hpa(0x100_0000), 0x5000, RW, true),
        Err(Error::AlreadyMapped {
            gpa: gpa(0x40_3000)
        })
    );
    assert_eq!(mappings(&pt), before);
    assert!(pt.query(gpa(0x40_0000)).is_err());
}

fn t_misaligned<E: NestedPagingFormat>() {
    let mut pt = Pt::<E>::new().unwrap();
    assert_eq!(
        pt.map(gpa(0x1001), hpa(0x1000), PageSize::Size4K, RW),
        Err(Error::Misaligned {
            addr: 0x1001,
            align: 0x1000
        })
    );
    assert_eq!(
        pt.map(gpa(0x1000), hpa(0x20_0000), PageSize::Size2M, RW),
        Err(Error::Misaligned {
            addr: 0x1000,
            align: 0x20_0000
        })
    );
    assert_eq!(
        pt.map(gpa(0x4000_0000), hpa(0x20_0000), PageSize::Size1G, RW),
        Err(Error::Misaligned {
            addr: 0x20_0000,
            align: 0x4000_0000
        })
    );
    assert_eq!(
        pt.map_region(gpa(0x1000), hpa(0x2000), 0x1800, RW, true),
        Err(Error::Misaligned {
            addr: 0x1800,
            align: 0x1000
        })
    );
    // 2^48 is the first address a 4-level table cannot translate.
    assert_eq!(
        pt.map(gpa(1 << 48), hpa(0), PageSize::Size4K, RW),
        Err(Error::OutOfRange { gpa: gpa(1 << 48) })
    );
    assert_eq!(
        pt.map_region(gpa((1 << 48) - 0x1000), hpa(0), 0x2000, RW, true),
        Err(Error::OutOfRange {
            gpa: gpa((1 << 48) - 0x1000)
        })
    );
    pt.map(gpa((1 << 48) - 0x1000), hpa(0x5000), PageSize::Size4K, RW)
        .unwrap();
    assert_eq!(pt.query(gpa((1 << 48) - 1)).unwrap().0, hpa(0x5fff));
    assert_eq!(
        pt.query(gpa(usize::MAX)),
        Err(Error::OutOfRange {
            gpa: gpa(usize::MAX)
        })
    );
    assert_eq!(
        pt.map(gpa(0), hpa(0), PageSize::Size4K, MF::empty()),
        Err(Error::InvalidFlags(MF::empty()))
    );
    assert_eq!(
        pt.map_region(gpa(0), hpa(0), 0, RW, true),
        Err(Error::InvalidInput("empty region"))
    );
}

fn t_unmap_errors<E: NestedPagingFormat>() {
    let mut pt = Pt::<E>::new().unwrap();
    assert_eq!(
        pt.unmap(gpa(0x5000)),
        Err(Error::NotMapped { gpa: gpa(0x5000) })
    );
    pt.map(gpa(0x20_0000), hpa(0x20_0000), PageSize::Size2M, RW)
        .unwrap();
    // Inside a huge page but not at its start.
    assert_eq!(
        pt.unmap(gpa(0x20_1000)),
        Err(Error::Misaligned {
            addr: 0x20_1000,
            align: 0x20_0000
        })
    );
    assert!(pt.query(gpa(0x20_1000)).is_ok());
    // unmap_region skips holes.
    pt.unmap_region(gpa(0), 0x80_0000).unwrap();
    assert!(mappings(&pt).is_empty());
}

fn t_unmap_split<E: NestedPagingFormat>() {
    let base = HostHal::live_frames();
    let mut pt = Pt::<E>::new().unwrap();
    pt.map(gpa(0x20_0000), hpa(0x4000_0000), PageSize::Size2M, RW)
        .unwrap();
    let mut removed = Vec::new();
    pt.unmap_region_with(gpa(0x20_1000), 0x1000, |g, h, f, s| {
        removed.push((g.as_usize(), h.as_usize(), f, s))
    })
    .unwrap();
    assert_eq!(removed, [(0x20_1000, 0x4000_1000, RW, PageSize::Size4K)]);
    assert_eq!(
        pt.query(gpa(0x20_0000)).unwrap(),
        (hpa(0x4000_0000), RW, PageSize::Size4K)
    );
    assert!(pt.query(gpa(0x20_1000)).is_err());
    assert_eq!(
        pt.query(gpa(0x3f_f123)).unwrap(),
        (hpa(0x401f_f123), RW, PageSize::Size4K)
    );
    assert_eq!(mappings(&pt).len(), 511);

    // A 1 GiB page cut in the middle: 2 MiB pages where possible.
    pt.map(gpa(0x4000_0000), hpa(0x8000_0000), PageSize::Size1G, RWX)
        .unwrap();
    pt.unmap_region(gpa(0x4020_0000), 0x20_1000).unwrap();
    assert_eq!(pt.query(gpa(0x4000_0000)).unwrap().2, PageSize::Size2M);
    assert!(pt.query(gpa(0x4020_0000)).is_err());
    assert!(pt.query(gpa(0x4040_0000)).is_err());
    assert_eq!(
        pt.query(gpa(0x4040_1000)).unwrap(),
        (hpa(0x8040_1000), RWX, PageSize::Size4K)
    );
    assert_eq!(pt.query(gpa(0x4060_0000)).unwrap().2, PageSize::Size2M);

    pt.unmap_region(gpa(0), 0x1_0000_0000).unwrap();
    assert!(mappings(&pt).is_empty());
    assert_eq!(HostHal::live_frames(), base + 1);
}

fn t_protect<E: NestedPagingFormat>() {
    let mut pt = Pt::<E>::new().unwrap();
    pt.map(gpa(0x1000), hpa(0x9000), PageSize::Size4K, RWX)
        .unwrap();
    assert_eq!(pt.protect(gpa(0x1000), MF::READ), Ok(PageSize::Size4K));
    assert_eq!(
        pt.query(gpa(0x1000)).unwrap(),
        (hpa(0x9000), MF::READ, PageSize::Size4K)
    );
    assert_eq!(
        pt.protect(gpa(0x2000), MF::READ),
        Err(Error::NotMapped { gpa: gpa(0x2000) })
    );
    assert_eq!(
        pt.protect(gpa(0x1000), MF::empty()),
        Err(Error::InvalidFlags(MF::empty()))
    );

    pt.map(gpa(0x4000_0000), hpa(0x8000_0000), PageSize::Size1G, RWX)
        .unwrap();
    pt.protect_region(gpa(0x4020_0000), 0x20_0000, MF::READ)
        .unwrap();
    assert_eq!(
        pt.query(gpa(0x4000_0000)).unwrap(),
        (hpa(0x8000_0000), RWX, PageSize::Size2M)
    );
    assert_eq!(
        pt.query(gpa(0x4020_0000)).unwrap(),
        (hpa(0x8020_0000), MF::READ, PageSize::Size2M)
    );
    assert_eq!(
        pt.query(gpa(0x7fe0_0000)).unwrap(),
        (hpa(0xbfe0_0000), RWX, PageSize::Size2M)
    );
    let (e, _) = pt.leaf_entry(gpa(0x4020_0000)).unwrap();
    assert!(e.is_huge());
    // A whole huge page keeps its size.
    pt.protect_region(gpa(0x4040_0000), 0x20_0000, RW | MF::DEVICE)
        .unwrap();
    assert_eq!(
        pt.query(gpa(0x4040_0000)).unwrap(),
        (
            hpa(0x8040_0000),
            RW | MF::DEVICE | MF::UNCACHED,
            PageSize::Size2M
        )
    );
}

fn t_no_memory<E: NestedPagingFormat>() {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            HostHal::set_frame_limit(None);
        }
    }
    let _reset = Reset;
    let base = HostHal::live_frames();
    let mut pt = Pt::<E>::new().unwrap();
    // A 4 KiB page needs three more tables.
    HostHal::set_frame_limit(Some(2));
    assert_eq!(
        pt.map(gpa(0x1000), hpa(0x1000), PageSize::Size4K, RW),
        Err(Error::NoMemory)
    );
    HostHal::set_frame_limit(None);
    pt.map(gpa(0x1000), hpa(0x1000), PageSize::Size4K, RW)
        .unwrap();
    pt.unmap(gpa(0x1000)).unwrap();
    assert_eq!(HostHal::live_frames(), base + 1);

    // map_region failing half way leaves nothing mapped.
    pt.map(gpa(0x8000_0000), hpa(0), PageSize::Size4K, RW)
        .unwrap();
    let before = mappings(&pt);
    HostHal::set_frame_limit(Some(2));
    // 0x1f_f000 needs a PD and a PT under the existing PDPT, 0x20_0000
    // another PT: the second page fails.
    assert_eq!(
        pt.map_region(gpa(0x1f_f000), hpa(0x1f_f000), 0x2000, RW, true),
        Err(Error::NoMemory)
    );
    HostHal::set_frame_limit(None);
    assert_eq!(mappings(&pt), before);
    // Splitting needs a frame too.
    pt.map(gpa(0x4000_0000), hpa(0x4000_0000), PageSize::Size1G, RW)
        .unwrap();
    HostHal::set_frame_limit(Some(0));
    assert_eq!(
        pt.unmap_region(gpa(0x4000_0000), 0x1000),
        Err(Error::NoMemory)
    );
    HostHal::set_frame_limit(None);
    assert_eq!(pt.query(gpa(0x4000_0000)).unwrap().2, PageSize::Size1G);
    drop(pt);
    assert_eq!(HostHal::live_frames(), base);
}

fn t_drop_frees<E: NestedPagingFormat>() {
    let base = HostHal::live_frames();
    {
        let mut pt = Pt::<E>::new().unwrap();
        pt.map_region(gpa(0x3000), hpa(0x3000), 0x4000_0000, RW, true)
            .unwrap();
        pt.map(gpa(0xffff_0000_0000), hpa(0), PageSize::Size4K, RW)
            .unwrap();
        assert!(HostHal::live_frames() > base + 4);
    }
    assert_eq!(HostHal::live_frames(), base);
}

fn t_empty_table_reuse<E: NestedPagingFormat>() {
    let base = HostHal::live_frames();
    let mut pt = Pt::<E>::new().unwrap();
    // A failed map leaves empty tables; a huge page may still go there.
    HostHal::set_frame_limit(Some(2));
    assert_eq!(
        pt.map(gpa(0x20_0000), hpa(0), PageSize::Size4K, RW),
        Err(Error::NoMemory)
    );
    HostHal::set_frame_limit(None);
    pt.map(gpa(0), hpa(0x4000_0000), PageSize::Size1G, RW)
        .unwrap();
    assert_eq!(pt.query(gpa(0x20_0000)).unwrap().2, PageSize::Size1G);
    // The PD left by the failed map was released.
    assert_eq!(HostHal::live_frames(), base + 2);
}
