//! Tests of the address space.

extern crate std;

use std::{
    alloc::{Layout, alloc_zeroed, dealloc},
    vec,
    vec::Vec,
};

use super::*;
use crate::test_util::HostHal;

type Npt = AddrSpace<NPTEntry, HostHal>;
type Ept = AddrSpace<EPTEntry, HostHal>;

const RW: MappingFlags = MappingFlags::READ.union(MappingFlags::WRITE);
const RWX: MappingFlags = RW.union(MappingFlags::EXECUTE);
const GIB: usize = 0x4000_0000;
const MIB2: usize = 0x20_0000;

fn gpa(a: usize) -> GuestPhysAddr {
    GuestPhysAddr::from_usize(a)
}
fn hpa(a: usize) -> HostPhysAddr {
    HostPhysAddr::from_usize(a)
}

fn space<E: NestedPagingFormat>() -> AddrSpace<E, HostHal> {
    AddrSpace::new(GuestPhysAddrRange::from_start_size(gpa(0), 0x10_0000_0000)).unwrap()
}

/// Real host memory for linear areas: `pages` 4 KiB pages, zeroed.
struct HostBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl HostBuf {
    fn new(pages: usize) -> Self {
        let layout = Layout::from_size_align(pages * 0x1000, 0x1000).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Self { ptr, layout }
    }
    fn hpa(&self, page: usize) -> HostPhysAddr {
        hpa(self.ptr as usize + page * 0x1000)
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: the allocation is `layout.size()` initialized bytes.
        unsafe { core::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// Reads host memory at `hpa` (identity HAL).
fn host_bytes(hpa: HostPhysAddr, len: usize) -> Vec<u8> {
    // SAFETY: tests only pass addresses of live frames of the address space.
    unsafe { core::slice::from_raw_parts(hpa.as_usize() as *const u8, len) }.to_vec()
}

#[test]
fn linear_area_uses_huge_pages() {
    let mut s = space::<NPTEntry>();
    // SAFETY: the host range is fake and never accessed by this test.
    unsafe { s.map_linear(gpa(0), hpa(0x1_0000_0000), GIB + 2 * MIB2 + 0x1000, RWX) }.unwrap();
    assert_eq!(
        s.query(gpa(0x1234_5678)).unwrap(),
        (hpa(0x1_1234_5678), RWX, PageSize::Size1G)
    );
    assert_eq!(
        s.query(gpa(GIB + MIB2 + 5)).unwrap(),
        (hpa(0x1_4020_0005), RWX, PageSize::Size2M)
    );
    assert_eq!(s.query(gpa(GIB + 2 * MIB2)).unwrap().2, PageSize::Size4K);
    assert_eq!(s.translate(gpa(0x4030_0123)), Some(hpa(0x1_4030_0123)));
    assert_eq!(s.translate(gpa(GIB + 2 * MIB2 + 0x1000)), None);
    let area = s.find_area(gpa(0x10)).unwrap();
    assert_eq!(
        area.backend,
        Backend::Linear {
            hpa_offset: 0x1_0000_0000
        }
    );
    assert_eq!(area.size(), GIB + 2 * MIB2 + 0x1000);
    // Linear hpa below gpa: a negative offset.
    // SAFETY: fake host range, never accessed.
    unsafe { s.map_linear(gpa(0x8_0000_0000), hpa(0x20_0000), MIB2, RW) }.unwrap();
    assert_eq!(s.translate(gpa(0x8_0000_0042)), Some(hpa(0x20_0042)));
    assert_eq!(
        s.find_area(gpa(0x8_0000_0000)).unwrap().backend,
        Backend::Linear {
            hpa_offset: 0x20_0000 - 0x8_0000_0000
        }
    );
}

#[test]
fn overlapping_areas_are_rejected() {
    let mut s = space::<EPTEntry>();
    s.map_alloc(gpa(0x10_0000), 0x4000, RW, false).unwrap();
    assert_eq!(
        s.map_alloc(gpa(0x10_3000), 0x2000, RW, true),
        Err(Error::AlreadyMapped {
            gpa: gpa(0x10_3000)
        })
    );
    assert_eq!(
        s.map_alloc(gpa(0xf_f000), 0x2000, RW, false),
        Err(Error::AlreadyMapped {
            gpa: gpa(0x10_0000)
        })
    );
    assert_eq!(
        // SAFETY: fake host range, never accessed.
        unsafe { s.map_linear(gpa(0), hpa(0), 0x20_0000, RW) },
        Err(Error::AlreadyMapped {
            gpa: gpa(0x10_0000)
        })
    );
    // Adjacent areas are fine.
    s.map_alloc(gpa(0xf_f000), 0x1000, RW, false).unwrap();
    s.map_alloc(gpa(0x10_4000), 0x1000, RW, false).unwrap();
    assert_eq!(s.areas().count(), 3);
    assert!(s.contains_range(gpa(0xf_f000), 0x6000));
    assert!(!s.contains_range(gpa(0xf_f000), 0x7000));
    assert!(!s.contains_range(gpa(0xf_e000), 0x2000));
    assert!(!s.contains_range(gpa(usize::MAX - 1), 0x10));
}

#[test]
fn bad_arguments() {
    let mut s = space::<NPTEntry>();
    assert_eq!(
        s.map_alloc(gpa(0x1800), 0x1000, RW, true),
        Err(Error::Misaligned {
            addr: 0x1800,
            align: 0x1000
        })
    );
    assert_eq!(
        s.map_alloc(gpa(0x1000), 0x10, RW, true),
        Err(Error::Misaligned {
            addr: 0x10,
            align: 0x1000
        })
    );
    assert_eq!(
        s.map_alloc(gpa(0x1000), 0, RW, true),
        Err(Error::InvalidInput("empty area"))
    );
    assert_eq!(
        s.map_alloc(gpa(0x10_0000_0000), 0x1000, RW, true),
        Err(Error::OutOfRange {
            gpa: gpa(0x10_0000_0000)
        })
    );
    assert_eq!(
        s.map_alloc(gpa(0x1000), 0x1000, MappingFlags::EXECUTE, true),
        Err(Error::InvalidFlags(MappingFlags::EXECUTE))
    );
    assert_eq!(
        s.map_alloc(gpa(usize::MAX & !0xfff), 0x2000, RW, true),
        Err(Error::OutOfRange {
            gpa: gpa(usize::MAX & !0xfff)
        })
    );
    assert!(s.unmap(gpa(0x1000), 0x800).is_err());
    assert_eq!(
        Npt::new(GuestPhysAddrRange::from_start_size(
            gpa(0),
            (1 << 48) + 0x1000
        ))
        .err(),
        Some(Error::OutOfRange {
            gpa: gpa((1 << 48) + 0x1000)
        })
    );
    assert_eq!(s.areas().count(), 0);
}

#[test]
fn eager_alloc_frames_are_freed_on_unmap() {
    let base = HostHal::live_frames();
    let mut s = space::<NPTEntry>();
    s.map_alloc(gpa(0x10_0000), 0x4000, RW, true).unwrap();
    // Root, PDPT, PD, PT and four frames.
    assert_eq!(HostHal::live_frames(), base + 8);
    let hpas: Vec<_> = (0..4)
        .map(|i| s.translate(gpa(0x10_0000 + i * 0x1000)).unwrap())
        .collect();
    for (i, h) in hpas.iter().enumerate() {
        assert_eq!(h.as_usize() % 0x1000, 0);
        assert!(!hpas[..i].contains(h));
    }
    assert_eq!(
        s.find_area(gpa(0x10_2fff)).unwrap().backend,
        Backend::Alloc { populate: true }
    );
    // Cut the middle two pages out.
    s.unmap(gpa(0x10_1000), 0x2000).unwrap();
    assert_eq!(HostHal::live_frames(), base + 6);
    let ranges: Vec<_> = s
        .areas()
        .map(|a| (a.start().as_usize(), a.end().as_usize()))
        .collect();
    assert_eq!(ranges, [(0x10_0000, 0x10_1000), (0x10_3000, 0x10_4000)]);
    assert_eq!(s.translate(gpa(0x10_1000)), None);
    assert_eq!(s.translate(gpa(0x10_3000)), Some(hpas[3]));
    assert!(!s.contains_range(gpa(0x10_0000), 0x4000));
    s.unmap(gpa(0), 0x100_0000).unwrap();
    assert_eq!(s.areas().count(), 0);
    assert_eq!(HostHal::live_frames(), base + 1);
    drop(s);
    assert_eq!(HostHal::live_frames(), base);
}

#[test]
fn drop_releases_allocated_frames() {
    let base = HostHal::live_frames();
    {
        let mut s = space::<EPTEntry>();
        s.map_alloc(gpa(0), 0x10_000, RW, true).unwrap();
        s.map_alloc(gpa(0x100_0000), 0x10_000, RW, false).unwrap();
        s.handle_page_fault(gpa(0x100_5000), MappingFlags::READ)
            .unwrap();
        // SAFETY: fake host range, never accessed.
        unsafe { s.map_linear(gpa(GIB), hpa(GIB), GIB, RWX) }.unwrap();
        assert!(HostHal::live_frames() >= base + 17);
    }
    assert_eq!(HostHal::live_frames(), base);
}

#[test]
fn lazy_alloc_populates_on_fault() {
    let base = HostHal::live_frames();
    let mut s = space::<EPTEntry>();
    s.map_alloc(gpa(0x20_0000), 0x10_0000, RW, false).unwrap();
    assert_eq!(HostHal::live_frames(), base + 1);
    assert_eq!(s.translate(gpa(0x20_1234)), None);
    // A write fault on the lazy page: populated.
    assert_eq!(
        s.handle_page_fault(gpa(0x20_1234), MappingFlags::WRITE),
        Ok(true)
    );
    let h = s.translate(gpa(0x20_1234)).unwrap();
    assert_eq!(h.as_usize() & 0xfff, 0x234);
    assert_eq!(s.query(gpa(0x20_1000)).unwrap().1, RW);
    assert_eq!(host_bytes(h.align_down_4k(), 0x1000), vec![0u8; 0x1000]);
    // The page is there now: a second fault is not ours.
    assert_eq!(
        s.handle_page_fault(gpa(0x20_1000), MappingFlags::WRITE),
        Ok(false)
    );
    // Outside every area; an access the area forbids.
    assert_eq!(
        s.handle_page_fault(gpa(0x40_0000), MappingFlags::READ),
        Ok(false)
    );
    assert_eq!(
        s.handle_page_fault(gpa(0x20_2000), MappingFlags::EXECUTE),
        Ok(false)
    );
    assert_eq!(s.translate(gpa(0x20_2000)), None);
    // Out of memory.
    HostHal::set_frame_limit(Some(0));
    let r = s.handle_page_fault(gpa(0x20_3000), MappingFlags::READ);
    HostHal::set_frame_limit(None);
    assert_eq!(r, Err(Error::NoMemory));
    // Only the one page (and its tables) was allocated.
    assert_eq!(HostHal::live_frames(), base + 5);
    drop(s);
    assert_eq!(HostHal::live_frames(), base);
}

#[test]
fn eager_alloc_rolls_back_on_no_memory() {
    let base = HostHal::live_frames();
    let mut s = space::<NPTEntry>();
    HostHal::set_frame_limit(Some(5));
    let r = s.map_alloc(gpa(0), 0x10_000, RW, true);
    HostHal::set_frame_limit(None);
    assert_eq!(r, Err(Error::NoMemory));
    assert_eq!(s.areas().count(), 0);
    assert_eq!(s.translate(gpa(0)), None);
    assert_eq!(HostHal::live_frames(), base + 1);
}

#[test]
fn linear_area_heals_a_missing_page_on_fault() {
    let mut s = space::<NPTEntry>();
    // SAFETY: fake host range, never accessed.
    unsafe { s.map_linear(gpa(0), hpa(0x4000_0000), MIB2, RW) }.unwrap();
    assert_eq!(
        s.handle_page_fault(gpa(0x1000), MappingFlags::READ),
        Ok(false)
    );
    // Remove one page behind the area's back (as a failed unmap could).
    s.pt.unmap_region(gpa(0x1000), 0x1000).unwrap();
    assert_eq!(
        s.handle_page_fault(gpa(0x1000), MappingFlags::READ),
        Ok(true)
    );
    assert_eq!(s.translate(gpa(0x1008)), Some(hpa(0x4000_1008)));
}

#[test]
fn unmap_cuts_a_linear_huge_page() {
    let mut s = space::<EPTEntry>();
    // SAFETY: fake host range, never accessed.
    unsafe { s.map_linear(gpa(0), hpa(0x4000_0000), 2 * MIB2, RW) }.unwrap();
    assert_eq!(s.query(gpa(MIB2)).unwrap().2, PageSize::Size2M);
    s.unmap(gpa(MIB2 + 0x1000), 0x1000).unwrap();
    assert_eq!(
        s.query(gpa(MIB2)).unwrap(),
        (hpa(0x4020_0000), RW, PageSize::Size4K)
    );
    assert_eq!(s.translate(gpa(MIB2 + 0x1000)), None);
    assert_eq!(s.translate(gpa(MIB2 + 0x2000)), Some(hpa(0x4020_2000)));
    assert_eq!(s.query(gpa(0)).unwrap().2, PageSize::Size2M);
    let ranges: Vec<_> = s
        .areas()
        .map(|a| (a.start().as_usize(), a.end().as_usize()))
        .collect();
    assert_eq!(ranges, [(0, MIB2 + 0x1000), (MIB2 + 0x2000, 2 * MIB2)]);
    assert!(s.areas().all(|a| a.backend
        == Backend::Linear {
            hpa_offset: 0x4000_0000
        }));
}

#[test]
fn cross_page_access_with_non_adjacent_host_frames() {
    let buf = HostBuf::new(3);
    let mut s = space::<NPTEntry>();
    // Guest page 0x1000 -> host page 2, guest page 0x2000 -> host page 0.
    // SAFETY: `buf` outlives `s` and belongs to this test.
    unsafe {
        s.map_linear(gpa(0x1000), buf.hpa(2), 0x1000, RW).unwrap();
        s.map_linear(gpa(0x2000), buf.hpa(0), 0x1000, RW).unwrap();
    }
    let data = [1u8, 2, 3, 4, 5, 6, 7, 8];
    s.write(gpa(0x1ffc), &data).unwrap();
    assert_eq!(&buf.bytes()[2 * 0x1000 + 0xffc..3 * 0x1000], &[1, 2, 3, 4]);
    assert_eq!(&buf.bytes()[..4], &[5, 6, 7, 8]);
    assert_eq!(&buf.bytes()[0x1000..0x2000], &[0u8; 0x1000][..]);
    let mut back = [0u8; 8];
    s.read(gpa(0x1ffc), &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        s.read_obj::<u64>(gpa(0x1ffc)).unwrap(),
        0x0807_0605_0403_0201
    );
    s.write_obj(gpa(0x1ffe), &0xa1b2_c3d4u32).unwrap();
    assert_eq!(&buf.bytes()[2 * 0x1000 + 0xffe..3 * 0x1000], &[0xd4, 0xc3]);
    assert_eq!(&buf.bytes()[..2], &[0xb2, 0xa1]);
    assert_eq!(
        s.read_obj::<[u16; 2]>(gpa(0x1ffe)).unwrap(),
        [0xc3d4, 0xa1b2]
    );
    drop(s);
}

#[test]
fn cross_page_access_in_allocated_memory() {
    let mut s = space::<EPTEntry>();
    s.map_alloc(gpa(0x7000), 0x3000, RW, true).unwrap();
    let data: Vec<u8> = (0..0x1800u32).map(|i| (i * 7 % 251) as u8).collect();
    s.write(gpa(0x7c00), &data).unwrap();
    // Check each host frame separately.
    let h0 = s.translate(gpa(0x7c00)).unwrap();
    let h1 = s.translate(gpa(0x8000)).unwrap();
    let h2 = s.translate(gpa(0x9000)).unwrap();
    assert_eq!(host_bytes(h0, 0x400), &data[..0x400]);
    assert_eq!(host_bytes(h1, 0x1000), &data[0x400..0x1400]);
    assert_eq!(host_bytes(h2, 0x400), &data[0x1400..]);
    let mut back = vec![0u8; data.len()];
    s.read(gpa(0x7c00), &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn lazy_pages_read_as_zero_and_populate_on_write() {
    let base = HostHal::live_frames();
    let mut s = space::<NPTEntry>();
    s.map_alloc(gpa(0x10_0000), 0x4000, RW, false).unwrap();
    let mut b = [0xffu8; 16];
    s.read(gpa(0x10_1ff8), &mut b).unwrap();
    assert_eq!(b, [0; 16]);
    assert_eq!(
        HostHal::live_frames(),
        base + 1,
        "reading allocates nothing"
    );
    s.write(gpa(0x10_1ffe), &[9, 8, 7]).unwrap();
    assert!(s.translate(gpa(0x10_1000)).is_some());
    assert!(s.translate(gpa(0x10_2000)).is_some());
    assert_eq!(s.translate(gpa(0x10_0000)), None);
    assert_eq!(s.read_obj::<[u8; 4]>(gpa(0x10_1ffe)).unwrap(), [9, 8, 7, 0]);
}

#[test]
fn access_outside_areas_fails_without_writing() {
    let mut s = space::<NPTEntry>();
    s.map_alloc(gpa(0x1000), 0x1000, RW, true).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(
        s.read(gpa(0x1ffc), &mut b),
        Err(Error::NotMapped { gpa: gpa(0x2000) })
    );
    assert_eq!(
        s.read(gpa(0x0fff), &mut b),
        Err(Error::NotMapped { gpa: gpa(0x0fff) })
    );
    assert_eq!(
        s.write(gpa(0x1ffc), &[1; 8]),
        Err(Error::NotMapped { gpa: gpa(0x2000) })
    );
    assert_eq!(
        s.read_obj::<u32>(gpa(0x1ffc)).unwrap(),
        0,
        "nothing written"
    );
    assert_eq!(
        s.read(gpa(usize::MAX - 2), &mut b),
        Err(Error::OutOfRange {
            gpa: gpa(usize::MAX - 2)
        })
    );
    // Device areas are not accessed as memory.
    // SAFETY: fake host range, never accessed (device areas are refused).
    unsafe {
        s.map_linear(
            gpa(0xfee0_0000),
            hpa(0xfee0_0000),
            0x1000,
            RW | MappingFlags::DEVICE,
        )
    }
    .unwrap();
    assert!(matches!(
        s.read(gpa(0xfee0_0020), &mut b),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        s.write(gpa(0xfee0_0020), &b),
        Err(Error::Unsupported(_))
    ));
    // Empty accesses succeed anywhere.
    s.read(gpa(0x5000), &mut []).unwrap();
}

#[test]
fn dyn_address_space_uses_the_chosen_format() {
    for kind in [NestedPagingKind::Ept, NestedPagingKind::Npt] {
        let base = HostHal::live_frames();
        let mut s =
            DynAddrSpace::<HostHal>::new(kind, GuestPhysAddrRange::from_start_size(gpa(0), GIB))
                .unwrap();
        assert_eq!(s.kind(), kind);
        s.map_alloc(gpa(0x1000), 0x2000, RW, false).unwrap();
        assert_eq!(
            s.handle_page_fault(gpa(0x1000), MappingFlags::READ),
            Ok(true)
        );
        s.write_obj(gpa(0x1ffc), &0x1122_3344_5566_7788u64).unwrap();
        assert_eq!(
            s.read_obj::<u64>(gpa(0x1ffc)).unwrap(),
            0x1122_3344_5566_7788
        );
        assert!(s.contains_range(gpa(0x1000), 0x2000));
        assert_eq!(s.query(gpa(0x1000)).unwrap().1, RW);
        // The root's first entry points to the PDPT: NPT P|RW|US = 0x7,
        // EPT R|W|X = 0x7 plus user-execute bit 10.
        // SAFETY: identity HAL; the root frame lives as long as `s`.
        let pml4e0 = unsafe { (s.page_table_root().as_usize() as *const u64).read() };
        match kind {
            NestedPagingKind::Npt => assert_eq!(pml4e0 & 0xfff, 0x007),
            NestedPagingKind::Ept => assert_eq!(pml4e0 & 0xfff, 0x407),
        }
        s.unmap(gpa(0x1000), 0x1000).unwrap();
        assert_eq!(s.areas().count(), 1);
        s.clear();
        assert_eq!(s.find_area(gpa(0x2000)), None);
        drop(s);
        assert_eq!(HostHal::live_frames(), base);
    }
}

#[test]
fn npt_and_ept_spaces_agree() {
    let mut a = space::<NPTEntry>();
    let mut b: Ept = space();
    a.map_alloc(gpa(0), 0x2000, RWX, true).unwrap();
    b.map_alloc(gpa(0), 0x2000, RWX, true).unwrap();
    a.write(gpa(0xff0), &[0x5a; 0x20]).unwrap();
    b.write(gpa(0xff0), &[0x5a; 0x20]).unwrap();
    let (mut x, mut y) = ([0u8; 0x40], [0u8; 0x40]);
    a.read(gpa(0xfe0), &mut x).unwrap();
    b.read(gpa(0xfe0), &mut y).unwrap();
    assert_eq!(x, y);
    assert_eq!(&x[0x10..0x30], &[0x5a; 0x20]);
}
