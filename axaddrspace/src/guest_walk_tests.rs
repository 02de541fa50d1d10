//! Guest page walk tests on a hand-built fake memory. Entry bits from the
//! Intel SDM Vol. 3A chapter 4: P=0, R/W=1, U/S=2, PCD=4, PS=7, XD=63.

extern crate std;

use std::{boxed::Box, cell::RefCell, collections::BTreeMap};

use super::*;
use crate::PageFaultReason;

const P_RW_US: u64 = 0x7;

/// Sparse guest memory: 4 KiB pages created on write; reads of pages never
/// written fail like unmapped guest memory.
#[derive(Default)]
struct FakeMem {
    pages: RefCell<BTreeMap<usize, Box<[u8; 4096]>>>,
}

impl FakeMem {
    fn write(&self, gpa: u64, bytes: &[u8]) {
        let mut pages = self.pages.borrow_mut();
        for (i, b) in bytes.iter().enumerate() {
            let a = gpa as usize + i;
            pages
                .entry(a & !0xfff)
                .or_insert_with(|| Box::new([0; 4096]))[a & 0xfff] = *b;
        }
    }
    fn set64(&self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes());
    }
    fn set32(&self, gpa: u64, v: u32) {
        self.write(gpa, &v.to_le_bytes());
    }
}

impl GuestMemoryReader for FakeMem {
    fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result {
        let pages = self.pages.borrow();
        for (i, b) in buf.iter_mut().enumerate() {
            let a = gpa.as_usize() + i;
            let page = pages.get(&(a & !0xfff)).ok_or(Error::NotMapped {
                gpa: GuestPhysAddr::from_usize(a),
            })?;
            *b = page[a & 0xfff];
        }
        Ok(())
    }
}

fn gva(a: usize) -> GuestVirtAddr {
    GuestVirtAddr::from_usize(a)
}

fn fault(r: Result<GuestTranslation>) -> (u8, PageFaultReason, u32) {
    match r {
        Err(Error::GuestPageFault {
            level,
            reason,
            error_code,
            ..
        }) => (level, reason, error_code),
        other => panic!("expected a guest page fault, got {other:?}"),
    }
}

// ---------------------------------------------------------------- 4-level

/// gva = PML4[1] PDPT[2] PD[3] PT[4] + 0x123.
const GVA4: usize = (1 << 39) | (2 << 30) | (3 << 21) | (4 << 12) | 0x123;
const CR3: u64 = 0x1000;

/// PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000, page 0x56000.
fn long_mode_tables() -> FakeMem {
    let m = FakeMem::default();
    m.set64(0x1000 + 8, 0x2000 | P_RW_US);
    m.set64(0x2000 + 2 * 8, 0x3000 | P_RW_US);
    m.set64(0x3000 + 3 * 8, 0x4000 | P_RW_US);
    m.set64(0x4000 + 4 * 8, 0x56000 | P_RW_US);
    m
}

fn long_walker() -> GuestPageWalker {
    GuestPageWalker::new(GuestPagingMode::Level4).with_max_phys_bits(40)
}

#[test]
fn gva_index_layout() {
    assert_eq!(GVA4, 0x0000_0080_8060_4123);
}

#[test]
fn long_mode_4k_page() {
    let m = long_mode_tables();
    let t = long_walker().translate(&m, CR3, gva(GVA4)).unwrap();
    assert_eq!(t.gpa, GuestPhysAddr::from_usize(0x56123));
    assert_eq!(
        t.flags,
        MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE | MappingFlags::USER
    );
    assert_eq!((t.page_size, t.level), (0x1000, 1));
    // The free function gives the same.
    assert_eq!(
        translate_gva(&m, CR3, gva(GVA4), GuestPagingMode::Level4).unwrap(),
        (GuestPhysAddr::from_usize(0x56123), t.flags)
    );
    // CR3 low bits (PCID / PWT / PCD) do not move the PML4.
    let t2 = long_walker().translate(&m, CR3 | 0x18, gva(GVA4)).unwrap();
    assert_eq!(t2.gpa, t.gpa);
}

#[test]
fn long_mode_permissions_combine() {
    let m = long_mode_tables();
    // R/W clear in the PD: not writable. U/S clear in the PML4: supervisor.
    m.set64(0x3000 + 3 * 8, 0x4000 | 0x5);
    m.set64(0x1000 + 8, 0x2000 | 0x3);
    // XD in the PT entry: not executable; PCD in the leaf: uncached.
    m.set64(0x4000 + 4 * 8, 0x56000 | P_RW_US | (1 << 63) | (1 << 4));
    let t = long_walker().translate(&m, CR3, gva(GVA4)).unwrap();
    assert_eq!(t.flags, MappingFlags::READ | MappingFlags::UNCACHED);
    // Without EFER.NXE, bit 63 is reserved.
    let mut w = long_walker();
    w.nxe = false;
    assert_eq!(
        fault(w.translate(&m, CR3, gva(GVA4))),
        (1, PageFaultReason::ReservedBit, 0b1001)
    );
}

#[test]
fn long_mode_2m_and_1g_pages() {
    let m = long_mode_tables();
    // 2 MiB page at 0x4000_0000, PAT bit 12 set (not an address bit).
    m.set64(0x3000 + 3 * 8, 0x4000_0000 | (1 << 12) | 0x80 | P_RW_US);
    let t = long_walker().translate(&m, CR3, gva(GVA4)).unwrap();
    assert_eq!(t.gpa, GuestPhysAddr::from_usize(0x4000_4123));
    assert_eq!((t.page_size, t.level), (0x20_0000, 2));

    // 1 GiB page at 0xc000_0000: offset is gva bits 29:0 = 0x0060_4123.
    m.set64(0x2000 + 2 * 8, 0xc000_0000 | 0x80 | P_RW_US);
    let t = long_walker().translate(&m, CR3, gva(GVA4)).unwrap();
    assert_eq!(t.gpa, GuestPhysAddr::from_usize(0xc060_4123));
    assert_eq!((t.page_size, t.level), (0x4000_0000, 3));

    // Without 1 GiB page support PS in a PDPTE is reserved.
    let mut w = long_walker();
    w.page_1g = false;
    assert_eq!(
        fault(w.translate(&m, CR3, gva(GVA4))).1,
        PageFaultReason::ReservedBit
    );
}

#[test]
fn long_mode_not_present_at_each_level() {
    for (level, entry) in [(4u8, 0x1008u64), (3, 0x2010), (2, 0x3018), (1, 0x4020)] {
        let m = long_mode_tables();
        // Everything but P kept: still not present.
        m.set64(entry, 0x9000 | 0x6);
        let w = long_walker();
        assert_eq!(
            fault(w.translate(&m, CR3, gva(GVA4))),
            (level, PageFaultReason::NotPresent, 0),
            "level {level}"
        );
        // Error code of a user-mode write: W/R (bit 1) and U/S (bit 2).
        let access = GuestAccess::WRITE.as_user();
        assert_eq!(
            fault(w.translate_access(&m, CR3, gva(GVA4), access)).2,
            0b110
        );
        match w.translate(&m, CR3, gva(GVA4)) {
            Err(Error::GuestPageFault { gva: g, .. }) => assert_eq!(g, gva(GVA4)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn long_mode_reserved_bits() {
    // MAXPHYADDR = 40: bits 51:40 are reserved in every entry.
    for (level, entry, value) in [
        (4u8, 0x1008u64, 0x2000 | P_RW_US | (1 << 40)),
        (3, 0x2010, 0x3000 | P_RW_US | (1 << 51)),
        (2, 0x3018, 0x4000 | P_RW_US | (1 << 45)),
        (1, 0x4020, 0x56000 | P_RW_US | (1 << 40)),
        // PS in a PML4E.
        (4, 0x1008, 0x2000 | P_RW_US | 0x80),
        // 1 GiB page with bit 13 (inside 29:13) set.
        (3, 0x2010, 0xc000_0000 | (1 << 13) | 0x80 | P_RW_US),
        // 1 GiB page with bit 29 set.
        (3, 0x2010, 0xc000_0000 | (1 << 29) | 0x80 | P_RW_US),
        // 2 MiB page with bit 20 (inside 20:13) set.
        (2, 0x3018, 0x4000_0000 | (1 << 20) | 0x80 | P_RW_US),
    ] {
        let m = long_mode_tables();
        m.set64(entry, value);
        let (l, reason, code) = fault(long_walker().translate(&m, CR3, gva(GVA4)));
        assert_eq!(
            (l, reason),
            (level, PageFaultReason::ReservedBit),
            "entry {value:#x}"
        );
        // P (bit 0) and RSVD (bit 3).
        assert_eq!(code, 0b1001);
    }
    // Bits 62:52 are ignored in 4-level paging, and with MAXPHYADDR = 52
    // bit 45 is an address bit.
    let m = long_mode_tables();
    m.set64(0x3018, 0x4000 | P_RW_US | (1 << 52) | (1 << 62));
    assert_eq!(
        long_walker()
            .translate(&m, CR3, gva(GVA4))
            .unwrap()
            .gpa
            .as_usize(),
        0x56123
    );
    m.set64(0x4020, (1 << 45) | 0x56000 | P_RW_US);
    let w = GuestPageWalker::new(GuestPagingMode::Level4);
    assert_eq!(
        w.translate(&m, CR3, gva(GVA4)).unwrap().gpa.as_usize(),
        (1 << 45) | 0x56123
    );
}

#[test]
fn long_mode_canonical_and_high_half() {
    let m = long_mode_tables();
    let w = long_walker();
    assert_eq!(
        w.translate(&m, CR3, gva(0x0000_8000_0000_0000)),
        Err(Error::NonCanonical {
            gva: gva(0x0000_8000_0000_0000)
        })
    );
    assert_eq!(
        w.translate(&m, CR3, gva(0xffff_7fff_ffff_f000)),
        Err(Error::NonCanonical {
            gva: gva(0xffff_7fff_ffff_f000)
        })
    );
    // 0xffff_8000_0000_0000 uses PML4 entry 256.
    m.set64(0x1000 + 256 * 8, 0x2000 | P_RW_US);
    m.set64(0x2000, 0x8000_0000 | 0x80 | P_RW_US);
    let t = w.translate(&m, CR3, gva(0xffff_8000_0000_0042)).unwrap();
    assert_eq!(t.gpa.as_usize(), 0x8000_0042);
}

#[test]
fn table_in_unmapped_memory_is_an_error() {
    let m = long_mode_tables();
    m.set64(0x4020, 0x56000 | P_RW_US);
    m.set64(0x3018, 0x77_7000 | P_RW_US); // PT page never written
    assert_eq!(
        long_walker().translate(&m, CR3, gva(GVA4)),
        Err(Error::NotMapped {
            gpa: GuestPhysAddr::from_usize(0x77_7020)
        })
    );
}

#[test]
fn access_checks() {
    let m = long_mode_tables();
    // Read-only, supervisor-only, no-execute leaf.
    m.set64(0x4020, 0x56000 | 0x1 | (1 << 63));
    let w = long_walker();
    let ok = w
        .translate_access(&m, CR3, gva(GVA4), GuestAccess::READ)
        .unwrap();
    assert_eq!(ok.gpa.as_usize(), 0x56123);
    // Supervisor write with CR0.WP = 1: protection fault, P|W.
    let (l, r, c) = fault(w.translate_access(&m, CR3, gva(GVA4), GuestAccess::WRITE));
    assert_eq!((l, r, c), (1, PageFaultReason::Protection, 0b011));
    // With CR0.WP = 0 the supervisor may write.
    let mut nowp = w;
    nowp.wp = false;
    assert!(
        nowp.translate_access(&m, CR3, gva(GVA4), GuestAccess::WRITE)
            .is_ok()
    );
    // User read of a supervisor page: P|U.
    let (_, _, c) = fault(w.translate_access(&m, CR3, gva(GVA4), GuestAccess::READ.as_user()));
    assert_eq!(c, 0b101);
    // Fetch from an XD page: P|I/D.
    let (_, _, c) = fault(w.translate_access(&m, CR3, gva(GVA4), GuestAccess::FETCH));
    assert_eq!(c, 0b1_0001);
    // Writable user page: a user write passes.
    m.set64(0x4020, 0x56000 | P_RW_US);
    assert!(
        w.translate_access(&m, CR3, gva(GVA4), GuestAccess::WRITE.as_user())
            .is_ok()
    );
}

// ---------------------------------------------------------------- others

#[test]
fn no_paging_is_identity() {
    let m = FakeMem::default();
    let (g, f) = translate_gva(&m, 0, gva(0x1234_5678), GuestPagingMode::NoPaging).unwrap();
    assert_eq!(g.as_usize(), 0x1234_5678);
    assert!(f.contains(MappingFlags::WRITE | MappingFlags::EXECUTE | MappingFlags::USER));
}

/// 32-bit: gva 0x0040_3abc = PD[1] PT[3] + 0xabc; PD at 0x1000, PT at 0x2000.
fn bits32_tables() -> FakeMem {
    let m = FakeMem::default();
    m.set32(0x1000 + 4, 0x2000 | 0x7);
    m.set32(0x2000 + 3 * 4, 0x0009_9000 | 0x3);
    m
}

#[test]
fn bits32_4k_and_4m_pages() {
    let m = bits32_tables();
    let w = GuestPageWalker::new(GuestPagingMode::Bits32).with_max_phys_bits(40);
    let t = w.translate(&m, 0x1000, gva(0x0040_3abc)).unwrap();
    assert_eq!(t.gpa.as_usize(), 0x99abc);
    // The PTE lacks U/S: supervisor only; no XD in 32-bit paging.
    assert_eq!(
        t.flags,
        MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE
    );
    assert_eq!(t.level, 1);

    // 4 MiB page at 0x0080_0000.
    m.set32(0x1004, 0x0080_0000 | 0x80 | 0x7);
    let t = w.translate(&m, 0x1000, gva(0x0040_3abc)).unwrap();
    assert_eq!(t.gpa.as_usize(), 0x0080_3abc);
    assert_eq!((t.page_size, t.level), (0x40_0000, 2));
    // PSE-36: PDE bit 13 is physical address bit 32.
    m.set32(0x1004, 0x0080_0000 | (1 << 13) | 0x80 | 0x7);
    assert_eq!(
        w.translate(&m, 0x1000, gva(0x0040_3abc))
            .unwrap()
            .gpa
            .as_usize(),
        0x1_0080_3abc
    );
    // With CR4.PSE = 0 the PS bit is ignored: the PDE points to a table.
    let mut nopse = w;
    nopse.pse = false;
    m.set32(0x1004, 0x2000 | 0x80 | 0x7);
    assert_eq!(
        nopse
            .translate(&m, 0x1000, gva(0x0040_3abc))
            .unwrap()
            .gpa
            .as_usize(),
        0x99abc
    );
}

#[test]
fn bits32_faults() {
    let m = bits32_tables();
    let w = GuestPageWalker::new(GuestPagingMode::Bits32).with_max_phys_bits(36);
    m.set32(0x200c, 0x0009_9000 | 0x2);
    assert_eq!(
        fault(w.translate(&m, 0x1000, gva(0x0040_3abc))),
        (1, PageFaultReason::NotPresent, 0)
    );
    m.set32(0x1004, 0x2000 | 0x6);
    assert_eq!(fault(w.translate(&m, 0x1000, gva(0x0040_3abc))).0, 2);
    // 4 MiB page: bit 21 is always reserved; with MAXPHYADDR = 36, PDE bits
    // 21:17 are (address bits 39:36).
    m.set32(0x1004, 0x0080_0000 | (1 << 21) | 0x87);
    assert_eq!(
        fault(w.translate(&m, 0x1000, gva(0x0040_3abc))).1,
        PageFaultReason::ReservedBit
    );
    m.set32(0x1004, 0x0080_0000 | (1 << 17) | 0x87);
    assert_eq!(
        fault(w.translate(&m, 0x1000, gva(0x0040_3abc))).1,
        PageFaultReason::ReservedBit
    );
    m.set32(0x1004, 0x0080_0000 | (1 << 16) | 0x87);
    assert_eq!(
        w.translate(&m, 0x1000, gva(0x0040_3abc))
            .unwrap()
            .gpa
            .as_usize(),
        0x8_0080_3abc
    );
    assert!(matches!(
        w.translate(&m, 0x1000, gva(0x1_0000_0000)),
        Err(Error::InvalidInput(_))
    ));
}

/// PAE: gva 0x80a0_6345 = PDPTE[2] PD[5] PT[6] + 0x345; PDPT at 0x1020,
/// PD at 0x3000, PT at 0x4000.
const GVA_PAE: usize = (2 << 30) | (5 << 21) | (6 << 12) | 0x345;

fn pae_tables() -> FakeMem {
    let m = FakeMem::default();
    m.set64(0x1020 + 2 * 8, 0x3000 | 0x1);
    m.set64(0x3000 + 5 * 8, 0x4000 | 0x7);
    m.set64(0x4000 + 6 * 8, 0x7_0000 | 0x7 | (1 << 63));
    m
}

#[test]
fn pae_pages() {
    assert_eq!(GVA_PAE, 0x80a0_6345);
    let m = pae_tables();
    let w = GuestPageWalker::new(GuestPagingMode::Pae);
    let t = w.translate(&m, 0x1020, gva(GVA_PAE)).unwrap();
    assert_eq!(t.gpa.as_usize(), 0x70345);
    assert_eq!(
        t.flags,
        MappingFlags::READ | MappingFlags::WRITE | MappingFlags::USER
    );
    // 2 MiB page.
    m.set64(0x3028, 0x20_0000 | 0x87);
    let t = w.translate(&m, 0x1020, gva(GVA_PAE)).unwrap();
    assert_eq!((t.gpa.as_usize(), t.page_size), (0x20_6345, 0x20_0000));
}

#[test]
fn pae_faults() {
    let w = GuestPageWalker::new(GuestPagingMode::Pae);
    // PDPTE not present, then R/W (bit 1, reserved in a PAE PDPTE).
    let m = pae_tables();
    m.set64(0x1030, 0x3000);
    assert_eq!(
        fault(w.translate(&m, 0x1020, gva(GVA_PAE))),
        (3, PageFaultReason::NotPresent, 0)
    );
    m.set64(0x1030, 0x3000 | 0x3);
    assert_eq!(
        fault(w.translate(&m, 0x1020, gva(GVA_PAE))),
        (3, PageFaultReason::ReservedBit, 9)
    );
    // Bit 52 is reserved in PAE entries (62:M with M = 52) although it is
    // ignored in 4-level paging.
    let m = pae_tables();
    m.set64(0x3028, 0x4000 | 0x7 | (1 << 52));
    assert_eq!(
        fault(w.translate(&m, 0x1020, gva(GVA_PAE))),
        (2, PageFaultReason::ReservedBit, 9)
    );
    // 2 MiB page with bit 13 set.
    m.set64(0x3028, 0x20_0000 | (1 << 13) | 0x87);
    assert_eq!(
        fault(w.translate(&m, 0x1020, gva(GVA_PAE))).1,
        PageFaultReason::ReservedBit
    );
    // PTE not present.
    let m = pae_tables();
    m.set64(0x4030, 0);
    assert_eq!(fault(w.translate(&m, 0x1020, gva(GVA_PAE))).0, 1);
}

#[test]
fn walker_from_control_registers() {
    const PG: u64 = 1 << 31;
    const WP: u64 = 1 << 16;
    const PSE: u64 = 1 << 4;
    const PAE: u64 = 1 << 5;
    const LA57: u64 = 1 << 12;
    const LMA: u64 = 1 << 10;
    const NXE: u64 = 1 << 11;
    let w = GuestPageWalker::from_control_regs(PG | WP, PAE, LMA | NXE, 48).unwrap();
    assert_eq!(
        (w.mode, w.nxe, w.wp, w.max_phys_bits),
        (GuestPagingMode::Level4, true, true, 48)
    );
    let w = GuestPageWalker::from_control_regs(PG, PAE, 0, 36).unwrap();
    assert_eq!((w.mode, w.nxe, w.wp), (GuestPagingMode::Pae, false, false));
    let w = GuestPageWalker::from_control_regs(PG, PSE, 0, 36).unwrap();
    assert_eq!((w.mode, w.pse), (GuestPagingMode::Bits32, true));
    let w = GuestPageWalker::from_control_regs(0x11, PAE, LMA, 48).unwrap();
    assert_eq!(w.mode, GuestPagingMode::NoPaging);
    assert_eq!(
        GuestPageWalker::from_control_regs(PG, PAE | LA57, LMA, 48),
        Err(Error::Unsupported("5-level guest paging (CR4.LA57)"))
    );
    assert_eq!(
        GuestPageWalker::new(GuestPagingMode::Level4)
            .with_max_phys_bits(60)
            .max_phys_bits,
        52
    );
}

#[test]
fn walk_through_an_address_space() {
    use crate::{AddrSpace, GuestPhysAddrRange, npt::NPTEntry, test_util::HostHal};
    let mut s = AddrSpace::<NPTEntry, HostHal>::new(GuestPhysAddrRange::from_start_size(
        GuestPhysAddr::from_usize(0),
        0x100_0000,
    ))
    .unwrap();
    s.map_alloc(
        GuestPhysAddr::from_usize(0),
        0x10_0000,
        MappingFlags::READ | MappingFlags::WRITE,
        false,
    )
    .unwrap();
    // Identity map the first 2 MiB with one 2 MiB page at PML4 0x1000.
    s.write_obj(GuestPhysAddr::from_usize(0x1000), &(0x2000u64 | P_RW_US))
        .unwrap();
    s.write_obj(GuestPhysAddr::from_usize(0x2000), &(0x3000u64 | P_RW_US))
        .unwrap();
    s.write_obj(GuestPhysAddr::from_usize(0x3000), &(0x80u64 | P_RW_US))
        .unwrap();
    let t = GuestPageWalker::new(GuestPagingMode::Level4)
        .translate(&s, 0x1000, gva(0x5_4321))
        .unwrap();
    assert_eq!(t.gpa.as_usize(), 0x5_4321);
    assert_eq!(t.page_size, 0x20_0000);
}

#[test]
fn out_of_range_max_phys_bits_does_not_panic() {
    let m = long_mode_tables();
    let mut w = long_walker();
    w.max_phys_bits = 0; // treated as 32
    m.set64(0x4020, 0x56000 | P_RW_US | (1 << 32));
    assert_eq!(
        fault(w.translate(&m, CR3, gva(GVA4))).1,
        PageFaultReason::ReservedBit
    );
    let m32 = bits32_tables();
    let mut w32 = GuestPageWalker::new(GuestPagingMode::Bits32);
    w32.max_phys_bits = 200; // treated as 52, capped at 40 for PSE-36
    m32.set32(0x1004, 0x0080_0000 | (1 << 20) | 0x87);
    assert_eq!(
        w32.translate(&m32, 0x1000, gva(0x0040_3abc))
            .unwrap()
            .gpa
            .as_usize(),
        0x80_0080_3abc
    );
}
