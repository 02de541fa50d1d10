//! Walking the guest's own page tables (guest virtual to guest physical),
//! following Intel SDM Vol. 3A chapter 4 "Paging" (AMD APM Vol. 2 chapter 5
//! is equivalent for what is done here).
//!
//! The walker reads the tables through [`GuestMemoryReader`], so it works on
//! an [`AddrSpace`](crate::AddrSpace) and on a fake memory in tests. It does
//! not set accessed/dirty bits in the guest's tables, and it reads the PAE
//! PDPTEs from memory rather than from the PDPTE registers loaded at the last
//! CR3 write.

use crate::{Error, GuestMemoryReader, GuestPhysAddr, GuestVirtAddr, MappingFlags, Result};

/// The paging mode of a guest, from CR0.PG, CR4.PAE and EFER.LMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestPagingMode {
    /// CR0.PG = 0: linear addresses are physical addresses.
    NoPaging,
    /// 32-bit paging (CR0.PG = 1, CR4.PAE = 0): two levels of 4-byte
    /// entries, 4 MiB pages when CR4.PSE = 1.
    Bits32,
    /// PAE paging (CR4.PAE = 1, EFER.LMA = 0): 4 PDPTEs, then 8-byte PD and PT.
    Pae,
    /// 4-level paging (EFER.LMA = 1, CR4.LA57 = 0): PML4, PDPT, PD, PT.
    Level4,
}

/// What the guest was doing when it used the address (for permission checks
/// and the page-fault error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GuestAccess {
    /// A write (error code bit 1).
    pub write: bool,
    /// An instruction fetch (error code bit 4).
    pub fetch: bool,
    /// A user-mode (CPL 3) access (error code bit 2).
    pub user: bool,
}

impl GuestAccess {
    /// A supervisor-mode data read.
    pub const READ: Self = Self {
        write: false,
        fetch: false,
        user: false,
    };
    /// A supervisor-mode data write.
    pub const WRITE: Self = Self {
        write: true,
        fetch: false,
        user: false,
    };
    /// A supervisor-mode instruction fetch.
    pub const FETCH: Self = Self {
        write: false,
        fetch: true,
        user: false,
    };

    /// The same access made from user mode.
    pub const fn as_user(self) -> Self {
        Self { user: true, ..self }
    }
}

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuestTranslation {
    /// The guest physical address of the byte at the virtual address.
    pub gpa: GuestPhysAddr,
    /// Combined rights of all levels: always `READ`; `WRITE` if every level
    /// has R/W = 1; `USER` if every level has U/S = 1; `EXECUTE` unless a
    /// level has XD = 1 (with EFER.NXE = 1); `UNCACHED` if the leaf has PCD.
    pub flags: MappingFlags,
    /// Size of the guest page: 4 KiB, 2 MiB, 4 MiB or 1 GiB.
    pub page_size: usize,
    /// Level of the leaf entry (1 = PTE, 2 = PDE, 3 = PDPTE).
    pub level: u8,
}

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PCD: u64 = 1 << 4;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;

const CR0_PG: u64 = 1 << 31;
const CR0_WP: u64 = 1 << 16;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// Bits `hi:lo` set (inclusive), empty if `hi < lo`.
const fn bits(hi: u32, lo: u32) -> u64 {
    if hi < lo {
        0
    } else {
        (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
    }
}

/// Walks a guest's page tables; holds the control-register state that
/// changes the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuestPageWalker {
    /// The paging mode.
    pub mode: GuestPagingMode,
    /// EFER.NXE: bit 63 is execute-disable (otherwise it is reserved).
    pub nxe: bool,
    /// CR4.PSE: 4 MiB pages in 32-bit paging.
    pub pse: bool,
    /// CR0.WP: supervisor writes honour read-only pages.
    pub wp: bool,
    /// Whether 1 GiB pages exist (CPUID 8000_0001h EDX bit 26); if not,
    /// PS = 1 in a PDPTE is a reserved bit.
    pub page_1g: bool,
    /// MAXPHYADDR of the guest (CPUID 8000_0008h, EAX bits 7:0), 32..=52: address
    /// bits at or above it are reserved in paging entries.
    pub max_phys_bits: u8,
}

impl GuestPageWalker {
    /// A walker for `mode` with EFER.NXE = 1, CR4.PSE = 1, CR0.WP = 1, 1 GiB
    /// pages and MAXPHYADDR = 52.
    pub const fn new(mode: GuestPagingMode) -> Self {
        Self {
            mode,
            nxe: true,
            pse: true,
            wp: true,
            page_1g: true,
            max_phys_bits: 52,
        }
    }

    /// Sets MAXPHYADDR (clamped to 32..=52).
    pub const fn with_max_phys_bits(mut self, bits: u8) -> Self {
        self.max_phys_bits = if bits < 32 {
            32
        } else if bits > 52 {
            52
        } else {
            bits
        };
        self
    }

    /// The walker for the guest's CR0, CR4 and EFER. 5-level paging
    /// (CR4.LA57) gives `Unsupported`.
    pub fn from_control_regs(cr0: u64, cr4: u64, efer: u64, max_phys_bits: u8) -> Result<Self> {
        let mode = if cr0 & CR0_PG == 0 {
            GuestPagingMode::NoPaging
        } else if cr4 & CR4_PAE == 0 {
            GuestPagingMode::Bits32
        } else if efer & EFER_LMA == 0 {
            GuestPagingMode::Pae
        } else if cr4 & CR4_LA57 != 0 {
            return Err(Error::Unsupported("5-level guest paging (CR4.LA57)"));
        } else {
            GuestPagingMode::Level4
        };
        let mut w = Self::new(mode).with_max_phys_bits(max_phys_bits);
        w.nxe = efer & EFER_NXE != 0;
        w.pse = cr4 & CR4_PSE != 0;
        w.wp = cr0 & CR0_WP != 0;
        Ok(w)
    }

    /// Translates `gva` with the tables rooted at `cr3`, without checking
    /// access rights. Faults are reported as for a supervisor read.
    pub fn translate<M: GuestMemoryReader + ?Sized>(
        &self,
        mem: &M,
        cr3: u64,
        gva: GuestVirtAddr,
    ) -> Result<GuestTranslation> {
        self.walk(mem, cr3, gva, GuestAccess::READ)
    }

    /// Translates `gva` for `access` and checks the combined rights, as the
    /// processor does (without SMEP, SMAP and protection keys). A violation
    /// gives `GuestPageFault` with reason `Protection`.
    pub fn translate_access<M: GuestMemoryReader + ?Sized>(
        &self,
        mem: &M,
        cr3: u64,
        gva: GuestVirtAddr,
        access: GuestAccess,
    ) -> Result<GuestTranslation> {
        let t = self.walk(mem, cr3, gva, access)?;
        let f = t.flags;
        let denied = (access.user && !f.contains(MappingFlags::USER))
            || (access.write && !f.contains(MappingFlags::WRITE) && (access.user || self.wp))
            || (access.fetch && !f.contains(MappingFlags::EXECUTE));
        if denied {
            return Err(self.fault(gva, t.level, crate::PageFaultReason::Protection, access));
        }
        Ok(t)
    }

    fn fault(
        &self,
        gva: GuestVirtAddr,
        level: u8,
        reason: crate::PageFaultReason,
        access: GuestAccess,
    ) -> Error {
        use crate::PageFaultReason as R;
        let mut code = match reason {
            R::NotPresent => 0,
            R::Protection => 1,
            R::ReservedBit => 1 | (1 << 3),
        };
        if access.write {
            code |= 1 << 1;
        }
        if access.user {
            code |= 1 << 2;
        }
        // I/D is reported when execute-disable is in use (PAE/4-level with NXE).
        if access.fetch
            && self.nxe
            && matches!(self.mode, GuestPagingMode::Pae | GuestPagingMode::Level4)
        {
            code |= 1 << 4;
        }
        Error::GuestPageFault {
            gva,
            level,
            reason,
            error_code: code,
        }
    }

    fn walk<M: GuestMemoryReader + ?Sized>(
        &self,
        mem: &M,
        cr3: u64,
        gva: GuestVirtAddr,
        access: GuestAccess,
    ) -> Result<GuestTranslation> {
        match self.mode {
            GuestPagingMode::NoPaging => Ok(GuestTranslation {
                gpa: GuestPhysAddr::from_usize(gva.as_usize()),
                flags: MappingFlags::READ
                    | MappingFlags::WRITE
                    | MappingFlags::EXECUTE
                    | MappingFlags::USER,
                page_size: 0x1000,
                level: 1,
            }),
            GuestPagingMode::Bits32 => self.walk_32(mem, cr3, gva, access),
            GuestPagingMode::Pae => self.walk_pae(mem, cr3, gva, access),
            GuestPagingMode::Level4 => self.walk_4level(mem, cr3, gva, access),
        }
    }

    /// MAXPHYADDR, kept within 32..=52 whatever the public field holds.
    fn maxphy(&self) -> u32 {
        (self.max_phys_bits as u32).clamp(32, 52)
    }

    /// Bits (MAXPHYADDR-1):12: the address field of an 8-byte entry.
    fn addr_mask(&self) -> u64 {
        bits(self.maxphy() - 1, 12)
    }

    fn walk_4level<M: GuestMemoryReader + ?Sized>(
        &self,
        mem: &M,
        cr3: u64,
        gva: GuestVirtAddr,
        access: GuestAccess,
    ) -> Result<GuestTranslation> {
        let va = gva.as_usize() as u64;
        let top = (va as i64) >> 47;
        if top != 0 && top != -1 {
            return Err(Error::NonCanonical { gva });
        }
        let m = self.maxphy();
        let addr_mask = self.addr_mask();
        let mut rsvd_common = bits(51, m);
        if !self.nxe {
            rsvd_common |= XD;
        }
        let (mut w, mut u, mut x) = (true, true, true);
        let mut table = cr3 & addr_mask;
        for level in (1..=4u8).rev() {
            let shift = 12 + 9 * (level as u32 - 1);
            let idx = (va >> shift) & 0x1ff;
            let e = mem.read_u64(GuestPhysAddr::from_usize((table + idx * 8) as usize))?;
            if e & P == 0 {
                return Err(self.fault(gva, level, crate::PageFaultReason::NotPresent, access));
            }
            let ps = e & PS != 0;
            let leaf = level == 1 || (ps && (level == 2 || level == 3));
            let mut rsvd = rsvd_common;
            match level {
                4 => rsvd |= PS,
                3 if ps && !self.page_1g => rsvd |= PS,
                3 if ps => rsvd |= bits(29, 13),
                2 if ps => rsvd |= bits(20, 13),
                _ => {}
            }
            if e & rsvd != 0 {
                return Err(self.fault(gva, level, crate::PageFaultReason::ReservedBit, access));
            }
            w &= e & RW != 0;
            u &= e & US != 0;
            x &= !(self.nxe && e & XD != 0);
            if leaf {
                let size = 1u64 << shift;
                let gpa = (e & addr_mask & !(size - 1)) | (va & (size - 1));
                return Ok(finish(gpa, w, u, x, e & PCD != 0, size, level));
            }
            table = e & addr_mask;
        }
        unreachable_walk()
    }

    fn walk_pae<M: GuestMemoryReader + ?Sized>(
        &self,
        mem: &M,
        cr3: u64,
        gva: GuestVirtAddr,
        access: GuestAccess,
    ) -> Result<GuestTranslation> {
        let va = check_32(gva)?;
        let m = self.maxphy();
        let addr_mask = self.addr_mask();
        let mut rsvd_common = bits(62, m);
        if !self.nxe {
            rsvd_common |= XD;
        }
        // PDPTE (level 3): bits 2:1, 8:5 and 63:M are reserved.
        let pdpt = cr3 & bits(31, 5);
        let pdpte = mem.read_u64(GuestPhysAddr::from_usize(
            (pdpt + ((va >> 30) & 3) * 8) as usize,
        ))?;
        if pdpte & P == 0 {
            return Err(self.fault(gva, 3, crate::PageFaultReason::NotPresent, access));
        }
        if pdpte & (bits(2, 1) | bits(8, 5) | bits(63, m)) != 0 {
            return Err(self.fault(gva, 3, crate::PageFaultReason::ReservedBit, access));
        }
        let (mut w, mut u, mut x) = (true, true, true);
        let mut table = pdpte & addr_mask;
        for level in [2u8, 1] {
            let shift = 12 + 9 * (level as u32 - 1);
            let idx = (va >> shift) & 0x1ff;
            let e = mem.read_u64(GuestPhysAddr::from_usize((table + idx * 8) as usize))?;
            if e & P == 0 {
                return Err(self.fault(gva, level, crate::PageFaultReason::NotPresent, access));
            }
            let ps = level == 2 && e & PS != 0;
            let rsvd = rsvd_common | if ps { bits(20, 13) } else { 0 };
            if e & rsvd != 0 {
                return Err(self.fault(gva, level, crate::PageFaultReason::ReservedBit, access));
            }
            w &= e & RW != 0;
            u &= e & US != 0;
            x &= !(self.nxe && e & XD != 0);
            if ps || level == 1 {
                let size = 1u64 << shift;
                let gpa = (e & addr_mask & !(size - 1)) | (va & (size - 1));
                return Ok(finish(gpa, w, u, x, e & PCD != 0, size, level));
            }
            table = e & addr_mask;
        }
        unreachable_walk()
    }

    fn walk_32<M: GuestMemoryReader + ?Sized>(
        &self,
        mem: &M,
        cr3: u64,
        gva: GuestVirtAddr,
        access: GuestAccess,
    ) -> Result<GuestTranslation> {
        let va = check_32(gva)?;
        let pd = cr3 & bits(31, 12);
        let pde = mem.read_u32(GuestPhysAddr::from_usize((pd + (va >> 22) * 4) as usize))? as u64;
        if pde & P == 0 {
            return Err(self.fault(gva, 2, crate::PageFaultReason::NotPresent, access));
        }
        if self.pse && pde & PS != 0 {
            // 4 MiB page: PDE bits 20:13 hold address bits 39:32 (PSE-36);
            // bit 21 and the bits above MAXPHYADDR (at most 40) are reserved.
            let m = self.maxphy().min(40);
            let rsvd = bits(21, m - 19);
            if pde & rsvd != 0 {
                return Err(self.fault(gva, 2, crate::PageFaultReason::ReservedBit, access));
            }
            let base = (pde & bits(31, 22)) | (((pde >> 13) & 0xff) << 32);
            let gpa = base | (va & bits(21, 0));
            return Ok(finish(
                gpa,
                pde & RW != 0,
                pde & US != 0,
                true,
                pde & PCD != 0,
                1 << 22,
                2,
            ));
        }
        let pt = pde & bits(31, 12);
        let pte = mem.read_u32(GuestPhysAddr::from_usize(
            (pt + ((va >> 12) & 0x3ff) * 4) as usize,
        ))? as u64;
        if pte & P == 0 {
            return Err(self.fault(gva, 1, crate::PageFaultReason::NotPresent, access));
        }
        let gpa = (pte & bits(31, 12)) | (va & 0xfff);
        let w = pde & pte & RW != 0;
        let u = pde & pte & US != 0;
        Ok(finish(gpa, w, u, true, pte & PCD != 0, 1 << 12, 1))
    }
}

fn finish(
    gpa: u64,
    w: bool,
    u: bool,
    x: bool,
    pcd: bool,
    size: u64,
    level: u8,
) -> GuestTranslation {
    let mut flags = MappingFlags::READ;
    if w {
        flags |= MappingFlags::WRITE;
    }
    if u {
        flags |= MappingFlags::USER;
    }
    if x {
        flags |= MappingFlags::EXECUTE;
    }
    if pcd {
        flags |= MappingFlags::UNCACHED;
    }
    GuestTranslation {
        gpa: GuestPhysAddr::from_usize(gpa as usize),
        flags,
        page_size: size as usize,
        level,
    }
}

/// The loops above always return at level 1; this keeps the compiler happy
/// without a panic path.
fn unreachable_walk() -> Result<GuestTranslation> {
    Err(Error::Unsupported("guest page walk ended without a leaf"))
}

fn check_32(gva: GuestVirtAddr) -> Result<u64> {
    u32::try_from(gva.as_usize())
        .map(u64::from)
        .map_err(|_| Error::InvalidInput("linear address above 4 GiB in a 32-bit paging mode"))
}

/// Translates `gva` in `mode` with the tables rooted at `cr3` (EFER.NXE = 1,
/// CR4.PSE = 1, MAXPHYADDR = 52; use [`GuestPageWalker`] to set these).
/// Returns the guest physical address and the combined rights.
pub fn translate_gva<M: GuestMemoryReader + ?Sized>(
    mem: &M,
    cr3: u64,
    gva: GuestVirtAddr,
    mode: GuestPagingMode,
) -> Result<(GuestPhysAddr, MappingFlags)> {
    let t = GuestPageWalker::new(mode).translate(mem, cr3, gva)?;
    Ok((t.gpa, t.flags))
}

#[cfg(test)]
#[path = "guest_walk_tests.rs"]
mod tests;
