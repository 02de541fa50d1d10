//! The image loaders' view of a VM's address space.
//!
//! `axvm::loader` writes kernels and boot information through its
//! [`GuestMemory`] trait; [`LoaderMemory`] implements it over an
//! `axaddrspace` [`DynAddrSpace`] for the first-light VM runner (issue #3),
//! until `axvm`'s VM object does this itself.

use axaddrspace::{AxMmHal, DynAddrSpace, GuestPhysAddr, PAGE_SIZE_4K};
use axvm::loader::GuestMemory;

/// [`GuestMemory`] over the memory areas of an address space.
///
/// Every access is first checked to lie entirely inside the areas
/// (`axvm::Error::OutsideGuestMemory` otherwise, nothing written). A
/// failure of the address space after that check (no host frame for a
/// lazily backed page, a device area) is reported as
/// `axvm::Error::Unsupported` and logged with its cause.
#[derive(Debug)]
pub struct LoaderMemory<'a, H: AxMmHal>(pub &'a mut DynAddrSpace<H>);

fn backend_error(e: axaddrspace::Error) -> axvm::Error {
    log::error!("guest memory access failed: {e}");
    axvm::Error::Unsupported("guest memory access failed inside guest RAM (see the log)")
}

impl<H: AxMmHal> GuestMemory for LoaderMemory<'_, H> {
    fn write(&mut self, gpa: GuestPhysAddr, data: &[u8]) -> axvm::Result {
        if !self.contains(gpa, data.len()) {
            return Err(axvm::Error::OutsideGuestMemory {
                gpa,
                len: data.len(),
            });
        }
        self.0.write(gpa, data).map_err(backend_error)
    }

    fn fill(&mut self, gpa: GuestPhysAddr, len: usize, byte: u8) -> axvm::Result {
        if !self.contains(gpa, len) {
            return Err(axvm::Error::OutsideGuestMemory { gpa, len });
        }
        let chunk = [byte; PAGE_SIZE_4K];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(PAGE_SIZE_4K);
            self.0
                .write(gpa + done, &chunk[..n])
                .map_err(backend_error)?;
            done += n;
        }
        Ok(())
    }

    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> axvm::Result {
        if !self.contains(gpa, buf.len()) {
            return Err(axvm::Error::OutsideGuestMemory {
                gpa,
                len: buf.len(),
            });
        }
        self.0.read(gpa, buf).map_err(backend_error)
    }

    fn contains(&self, gpa: GuestPhysAddr, len: usize) -> bool {
        self.0.contains_range(gpa, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axaddrspace::test_util::HostHal;
    use axaddrspace::{GuestPhysAddrRange, MappingFlags, NestedPagingKind};
    use axvm::loader::{MultibootInfoBuilder, plan_raw};
    use std::vec;

    fn gpa(a: usize) -> GuestPhysAddr {
        GuestPhysAddr::from_usize(a)
    }

    fn space() -> DynAddrSpace<HostHal> {
        let mut s = DynAddrSpace::<HostHal>::new(
            NestedPagingKind::Npt,
            GuestPhysAddrRange::from_start_size(gpa(0), 1 << 32),
        )
        .unwrap();
        let rwx = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE;
        s.map_alloc(gpa(0), 0x4_0000, rwx, true).unwrap();
        s
    }

    #[test]
    fn writes_fills_and_reads_cross_pages() {
        let mut s = space();
        let mut m = LoaderMemory(&mut s);
        m.fill(gpa(0x1000), 0x3000, 0xcc).unwrap();
        m.write(gpa(0x1ffe), &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 6];
        m.read(gpa(0x1ffd), &mut b).unwrap();
        assert_eq!(b, [0xcc, 1, 2, 3, 4, 0xcc]);
        // Different host frames behind the two guest pages.
        assert_ne!(
            s.translate(gpa(0x1000)).unwrap() + 0x1000,
            s.translate(gpa(0x2000)).unwrap()
        );
    }

    #[test]
    fn accesses_outside_ram_are_refused_whole() {
        let mut s = space();
        let mut m = LoaderMemory(&mut s);
        assert!(m.contains(gpa(0x3_f000), 0x1000));
        assert!(!m.contains(gpa(0x3_f001), 0x1000));
        let e = m.write(gpa(0x3_fffe), &[9; 4]).unwrap_err();
        assert_eq!(
            e,
            axvm::Error::OutsideGuestMemory {
                gpa: gpa(0x3_fffe),
                len: 4
            }
        );
        // Nothing was written, not even the two bytes inside RAM.
        let mut b = [0xffu8; 2];
        m.read(gpa(0x3_fffe), &mut b).unwrap();
        assert_eq!(b, [0, 0]);
        assert!(m.fill(gpa(0x4_0000), 1, 0).is_err());
        assert!(m.read(gpa(0x10_0000), &mut b).is_err());
    }

    #[test]
    fn loaders_write_through_it() {
        let mut s = space();
        let image = vec![0x90u8; 0x1800];
        let plan = plan_raw(&image, gpa(0x1_0000), gpa(0x1_0000)).unwrap();
        plan.apply(&image, &mut LoaderMemory(&mut s)).unwrap();
        let info = MultibootInfoBuilder::new()
            .ram(gpa(0), 0x4_0000)
            .build(gpa(0x9000))
            .unwrap();
        assert_eq!(info.write_to(&mut LoaderMemory(&mut s)).unwrap(), 0x9000);
        assert_eq!(s.read_obj::<u8>(gpa(0x1_17ff)).unwrap(), 0x90);
        // multiboot_info.mem_upper (offset 8): 0x40000 - 1 MiB < 0 -> 0 KiB;
        // mem_lower (offset 4): 256 KiB of the 640 KiB window.
        assert_eq!(s.read_obj::<u32>(gpa(0x9004)).unwrap(), 256);
    }
}
