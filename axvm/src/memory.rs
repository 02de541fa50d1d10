//! Guest memory of a VM: the loaders' [`GuestMemory`] over an address space,
//! and fetching the bytes of the guest's current instruction.

use axaddrspace::{
    AxMmHal, CachedGuestMemory, DynAddrSpace, GuestMemoryReader, GuestPageWalker, GuestPhysAddr,
    GuestTranslation, GuestVirtAddr, PAGE_SIZE_4K, WalkCache,
};
use x86_vcpu::GuestCodeLocation;

use crate::loader::GuestMemory;
use crate::{Error, Result};

/// The longest x86 instruction, in bytes.
pub const MAX_INSN_LEN: usize = 15;

/// MAXPHYADDR assumed for the guest when walking its page tables: 52, the
/// architectural maximum, so that no address bit is wrongly taken as
/// reserved (a table entry pointing above guest RAM fails later, as an
/// access outside guest memory).
const GUEST_MAX_PHYS_BITS: u8 = 52;

/// Zeroes for [`GuestMemory::fill`], written a page at a time.
const FILL_CHUNK: usize = PAGE_SIZE_4K;

/// Guest memory as the loaders see it: every memory area of the address
/// space (allocated or linear). An access that is not entirely inside the
/// areas fails with [`Error::OutsideGuestMemory`] before anything is written.
impl<H: AxMmHal> GuestMemory for DynAddrSpace<H> {
    fn write(&mut self, gpa: GuestPhysAddr, data: &[u8]) -> Result {
        if !self.contains_range(gpa, data.len()) {
            return Err(Error::OutsideGuestMemory {
                gpa,
                len: data.len(),
            });
        }
        Ok(DynAddrSpace::write(self, gpa, data)?)
    }

    fn fill(&mut self, gpa: GuestPhysAddr, len: usize, byte: u8) -> Result {
        if !self.contains_range(gpa, len) {
            return Err(Error::OutsideGuestMemory { gpa, len });
        }
        let chunk = [byte; FILL_CHUNK];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(FILL_CHUNK);
            DynAddrSpace::write(self, gpa + done, &chunk[..n])?;
            done += n;
        }
        Ok(())
    }

    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result {
        if !self.contains_range(gpa, buf.len()) {
            return Err(Error::OutsideGuestMemory {
                gpa,
                len: buf.len(),
            });
        }
        Ok(DynAddrSpace::read(self, gpa, buf)?)
    }

    fn contains(&self, gpa: GuestPhysAddr, len: usize) -> bool {
        self.contains_range(gpa, len)
    }
}

/// Up to [`MAX_INSN_LEN`] bytes of guest code starting at `loc.linear_rip`,
/// read through the guest's own page tables (`loc`'s CR0, CR3, CR4, EFER).
///
/// Each guest page is translated on its own, so an instruction crossing a
/// page boundary is read from both (guest-contiguous pages need not be
/// physically contiguous). If the first byte cannot be translated or read,
/// the walk's error is returned; if a later page cannot, the bytes before it
/// are returned (the instruction may end before that page).
///
/// `mem` is the VM's address space, or better a
/// [`TranslationCache`](axaddrspace::TranslationCache) reader of it (the
/// walk and the fetch read the same few pages on every MMIO exit); see
/// [`fetch_code_cached`] to skip repeated walks too.
pub fn fetch_code<M: GuestMemoryReader + ?Sized>(
    mem: &M,
    loc: &GuestCodeLocation,
) -> core::result::Result<([u8; MAX_INSN_LEN], usize), axaddrspace::Error> {
    let walker =
        GuestPageWalker::from_control_regs(loc.cr0, loc.cr4, loc.efer, GUEST_MAX_PHYS_BITS)?;
    fetch_with(mem, loc, |linear| {
        walker.translate(mem, loc.cr3, GuestVirtAddr::from_usize(linear as usize))
    })
}

/// [`fetch_code`] through a [`TranslationCache`](axaddrspace::TranslationCache)
/// reader, translating through `walks`: a page walked before is only
/// checked (its paging entries read again and compared, see [`WalkCache`]
/// and [`CachedGuestMemory::translate`]), not walked again. The bytes are
/// always the guest's current ones.
#[inline]
pub fn fetch_code_cached<H: AxMmHal>(
    mem: &CachedGuestMemory<'_, H>,
    walks: &mut WalkCache,
    loc: &GuestCodeLocation,
) -> core::result::Result<([u8; MAX_INSN_LEN], usize), axaddrspace::Error> {
    let walker =
        GuestPageWalker::from_control_regs(loc.cr0, loc.cr4, loc.efer, GUEST_MAX_PHYS_BITS)?;
    fetch_with(mem, loc, |linear| {
        mem.translate(
            &walker,
            walks,
            loc.cr3,
            GuestVirtAddr::from_usize(linear as usize),
        )
    })
}

/// The fetch loop of [`fetch_code`], with `translate` giving the guest
/// physical address of a linear address.
#[inline(always)]
fn fetch_with<M: GuestMemoryReader + ?Sized>(
    mem: &M,
    loc: &GuestCodeLocation,
    mut translate: impl FnMut(u64) -> core::result::Result<GuestTranslation, axaddrspace::Error>,
) -> core::result::Result<([u8; MAX_INSN_LEN], usize), axaddrspace::Error> {
    // Linear addresses outside 64-bit mode are 32 bits wide.
    let addr_mask = if loc.bitness == 64 {
        u64::MAX
    } else {
        0xffff_ffff
    };
    let mut buf = [0u8; MAX_INSN_LEN];
    let mut linear = loc.linear_rip & addr_mask;
    let in_page = PAGE_SIZE_4K - (linear as usize % PAGE_SIZE_4K);
    // The usual case: the whole window is in one page.
    if in_page >= MAX_INSN_LEN {
        let t = translate(linear)?;
        mem.read_bytes(t.gpa, &mut buf)?;
        return Ok((buf, MAX_INSN_LEN));
    }
    let mut have = 0;
    while have < MAX_INSN_LEN {
        let in_page = PAGE_SIZE_4K - (linear as usize % PAGE_SIZE_4K);
        let n = in_page.min(MAX_INSN_LEN - have);
        let step = translate(linear).and_then(|t| mem.read_bytes(t.gpa, &mut buf[have..have + n]));
        match step {
            Ok(()) => have += n,
            Err(_) if have > 0 => break,
            Err(e) => return Err(e),
        }
        linear = linear.wrapping_add(n as u64) & addr_mask;
    }
    Ok((buf, have))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axaddrspace::test_util::HostHal;
    use axaddrspace::{GuestPhysAddrRange, MappingFlags, NestedPagingKind};

    fn gpa(a: usize) -> GuestPhysAddr {
        GuestPhysAddr::from_usize(a)
    }

    /// RAM at 0x1000..0x3000 and 0x3000..0x4000 (adjacent areas, the second
    /// lazy), a hole, then 0x10000..0x11000.
    fn space() -> DynAddrSpace<HostHal> {
        let rw = MappingFlags::READ | MappingFlags::WRITE;
        let mut a = DynAddrSpace::new(
            NestedPagingKind::Npt,
            GuestPhysAddrRange::from_start_size(gpa(0), 1 << 30),
        )
        .unwrap();
        a.map_alloc(gpa(0x1000), 0x2000, rw, true).unwrap();
        a.map_alloc(gpa(0x3000), 0x1000, rw, false).unwrap();
        a.map_alloc(gpa(0x10000), 0x1000, rw, true).unwrap();
        a
    }

    #[test]
    fn guest_memory_spans_areas_and_refuses_holes_without_writing() {
        let mut a = space();
        let m: &mut dyn GuestMemory = &mut a;
        assert!(m.contains(gpa(0x1000), 0x3000));
        assert!(!m.contains(gpa(0x1000), 0x3001));
        assert!(!m.contains(gpa(0xfff), 2));
        m.write(gpa(0x2ffe), &[1, 2, 3, 4]).unwrap();
        m.fill(gpa(0x1800), 0x2000, 0x5a).unwrap();
        let mut b = [0u8; 4];
        m.read(gpa(0x37fe), &mut b).unwrap();
        assert_eq!(b, [0x5a, 0x5a, 0, 0]);
        // Running into the hole after 0x4000: refused, nothing written.
        assert_eq!(
            m.write(gpa(0x3ffe), &[9; 4]),
            Err(Error::OutsideGuestMemory {
                gpa: gpa(0x3ffe),
                len: 4
            })
        );
        assert_eq!(
            m.fill(gpa(0x3000), 0x1001, 9),
            Err(Error::OutsideGuestMemory {
                gpa: gpa(0x3000),
                len: 0x1001
            })
        );
        m.read(gpa(0x3ffe), &mut b[..2]).unwrap();
        assert_eq!(b[..2], [0, 0]);
        assert!(m.read(gpa(0x4000), &mut b).is_err());
    }

    #[test]
    fn code_fetch_stops_at_an_unmapped_page_after_the_first() {
        let mut a = space();
        // Paging off: linear == physical. Three bytes before the hole.
        DynAddrSpace::write(&mut a, gpa(0x3ffd), &[0x90, 0x90, 0xc3]).unwrap();
        let loc = GuestCodeLocation {
            linear_rip: 0x3ffd,
            cr0: 0x11,
            cr3: 0,
            cr4: 0,
            efer: 0,
            bitness: 32,
        };
        let (bytes, len) = fetch_code(&a, &loc).unwrap();
        assert_eq!((len, &bytes[..3]), (3, &[0x90, 0x90, 0xc3][..]));
        // A first byte outside guest memory is an error.
        let loc = GuestCodeLocation {
            linear_rip: 0x5000,
            ..loc
        };
        assert_eq!(
            fetch_code(&a, &loc),
            Err(axaddrspace::Error::NotMapped { gpa: gpa(0x5000) })
        );
        // 32-bit linear addresses wrap: RIP 0x1_0001_0000 is 0x10000.
        DynAddrSpace::write(&mut a, gpa(0x10000), &[0xab]).unwrap();
        let loc = GuestCodeLocation {
            linear_rip: 0x1_0001_0000,
            ..loc
        };
        let (bytes, len) = fetch_code(&a, &loc).unwrap();
        assert_eq!((len, bytes[0]), (15, 0xab));
    }
}
