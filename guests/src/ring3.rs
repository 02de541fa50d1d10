//! The encodings a small kernel needs to run code in ring 3 (pure code,
//! host-tested): segment and TSS descriptors, the 64-bit TSS, the STAR
//! layout of SYSCALL/SYSRET, page-table entry bits, and the page-fault
//! error code.
//!
//! Layouts: Intel SDM vol. 3A, "Segment Descriptors", "TSS Descriptor in
//! 64-bit mode", "Task Management in 64-bit Mode", "Page-Fault Exception
//! (#PF)"; SYSCALL/SYSRET in vol. 2B. The AMD APM vol. 2 (4.8, 12.2, 8.4.2)
//! describes the same formats.

use core::fmt;

/// The GDT this layout assumes (selectors, RPL 0 unless noted): the
/// runtime's 64-bit kernel code and data at 0x08 and 0x10 (what SYSCALL
/// loads from `STAR[47:32]`), then three ring-3 descriptors in the order
/// SYSRET needs (`STAR[63:48]` + 8 = data, + 16 = 64-bit code), then the
/// TSS.
pub mod selector {
    /// 64-bit kernel code.
    pub const KERNEL_CODE: u16 = 0x08;
    /// Kernel data (SYSCALL's SS = `KERNEL_CODE + 8`).
    pub const KERNEL_DATA: u16 = 0x10;
    /// 32-bit user code (the SYSRET base; unused by 64-bit code).
    pub const USER_CODE32: u16 = 0x18 | 3;
    /// User data, RPL 3 (SYSRET's SS = base + 8).
    pub const USER_DATA: u16 = 0x20 | 3;
    /// 64-bit user code, RPL 3 (64-bit SYSRET's CS = base + 16).
    pub const USER_CODE: u16 = 0x28 | 3;
    /// The 16-byte 64-bit TSS descriptor.
    pub const TSS: u16 = 0x30;
}

/// Descriptor: 64-bit code, DPL 0, accessed (L = 1, P = 1, type 0xB).
pub const GDT_KERNEL_CODE: u64 = 0x00af_9b00_0000_ffff;
/// Descriptor: flat data, DPL 0, accessed.
pub const GDT_KERNEL_DATA: u64 = 0x00cf_9300_0000_ffff;
/// Descriptor: flat 32-bit code, DPL 3, accessed.
pub const GDT_USER_CODE32: u64 = 0x00cf_fb00_0000_ffff;
/// Descriptor: flat data, DPL 3, accessed.
pub const GDT_USER_DATA: u64 = 0x00cf_f300_0000_ffff;
/// Descriptor: 64-bit code, DPL 3, accessed.
pub const GDT_USER_CODE: u64 = 0x00af_fb00_0000_ffff;

/// The two quadwords of a present, available 64-bit TSS descriptor (type
/// 9, DPL 0) for a TSS at `base` with byte limit `limit`.
pub const fn tss_descriptor(base: u64, limit: u32) -> [u64; 2] {
    let low = (limit as u64 & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit as u64 >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    [low, base >> 32]
}

/// The 64-bit task-state segment (104 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
pub struct Tss {
    reserved0: u32,
    /// Stack pointers loaded on a change to CPL 0, 1, 2.
    pub rsp: [u64; 3],
    reserved1: u64,
    /// Interrupt stack table entries 1-7.
    pub ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    /// Offset of the I/O permission bitmap; at or past the limit: none.
    pub iomap_base: u16,
}

/// Size of [`Tss`] in bytes.
pub const TSS_SIZE: usize = 104;

impl Tss {
    /// A TSS whose ring-0 stack is `rsp0`, with no IST stacks and no I/O
    /// permission bitmap (ring 3 cannot use IN/OUT with IOPL 0).
    pub const fn new(rsp0: u64) -> Self {
        Self {
            reserved0: 0,
            rsp: [rsp0, 0, 0],
            reserved1: 0,
            ist: [0; 7],
            reserved2: 0,
            reserved3: 0,
            iomap_base: TSS_SIZE as u16,
        }
    }
}

/// The `IA32_STAR` value: SYSCALL loads CS = `syscall_cs` and SS =
/// `syscall_cs + 8`; 64-bit SYSRET loads CS = `sysret_base + 16` and SS =
/// `sysret_base + 8`, both with RPL 3.
pub const fn star(syscall_cs: u16, sysret_base: u16) -> u64 {
    ((sysret_base as u64) << 48) | ((syscall_cs as u64) << 32)
}

/// The SFMASK NimbOS uses: SYSCALL clears TF, IF, DF, IOPL, NT and AC.
pub const SFMASK_NIMBOS: u64 = 0x4_7700;
/// RFLAGS.DF.
pub const RFLAGS_DF: u64 = 1 << 10;

/// Page-table entry bits.
pub mod pte {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// User-accessible.
    pub const US: u64 = 1 << 2;
    /// Page size: a 1 GiB page in a PDPTE, 2 MiB in a PDE.
    pub const PS: u64 = 1 << 7;
}

/// The four page-table indices (PML4, PDPT, PD, PT) of a 48-bit address.
pub const fn table_indices(va: u64) -> [usize; 4] {
    [
        ((va >> 39) & 0x1ff) as usize,
        ((va >> 30) & 0x1ff) as usize,
        ((va >> 21) & 0x1ff) as usize,
        ((va >> 12) & 0x1ff) as usize,
    ]
}

/// A #PF error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFaultError(pub u64);

impl PageFaultError {
    /// Bit 0: a protection violation (else a not-present page).
    pub const fn present(self) -> bool {
        self.0 & 1 != 0
    }
    /// Bit 1: a write (else a read).
    pub const fn write(self) -> bool {
        self.0 & 2 != 0
    }
    /// Bit 2: the access came from CPL 3.
    pub const fn user(self) -> bool {
        self.0 & 4 != 0
    }
    /// Bit 3: a reserved bit was set in a paging entry.
    pub const fn reserved_bit(self) -> bool {
        self.0 & 8 != 0
    }
    /// Bit 4: an instruction fetch.
    pub const fn fetch(self) -> bool {
        self.0 & 16 != 0
    }
}

impl fmt::Display for PageFaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = if self.user() { "user" } else { "kernel" };
        let what = if self.fetch() {
            "fetch"
        } else if self.write() {
            "write"
        } else {
            "read"
        };
        let why = if self.reserved_bit() {
            "reserved bit set"
        } else if self.present() {
            "protection"
        } else {
            "not present"
        };
        write!(f, "{who} {what}, {why}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_sdm() {
        // Access byte: P | DPL | S | type; flags nibble: G | D/B | L.
        let access = |d: u64| ((d >> 40) & 0xff) as u8;
        let flags = |d: u64| ((d >> 52) & 0xf) as u8;
        assert_eq!(access(GDT_KERNEL_CODE), 0x9b);
        assert_eq!(flags(GDT_KERNEL_CODE), 0b1010, "G and L");
        assert_eq!(access(GDT_USER_CODE), 0xfb, "DPL 3 code");
        assert_eq!(flags(GDT_USER_CODE), 0b1010);
        assert_eq!(access(GDT_USER_DATA), 0xf3, "DPL 3 data");
        assert_eq!(flags(GDT_USER_CODE32), 0b1100, "G and D");
        // SYSRET's fixed offsets from the base selector.
        assert_eq!(selector::USER_CODE32 + 8, selector::USER_DATA);
        assert_eq!(selector::USER_CODE32 + 16, selector::USER_CODE);
        assert_eq!(selector::KERNEL_CODE + 8, selector::KERNEL_DATA);
    }

    #[test]
    fn tss_descriptor_splits_base_and_limit() {
        let [lo, hi] = tss_descriptor(0xffff_8000_1234_5678, 0x67);
        assert_eq!(lo, 0x1200_8934_5678_0067);
        assert_eq!(hi, 0xffff_8000);
        let [lo, _] = tss_descriptor(0x20_3000, 0x1_0067);
        assert_eq!((lo >> 48) & 0xf, 1, "limit bits 19:16");
        assert_eq!((lo >> 40) & 0xff, 0x89, "present available 64-bit TSS");
    }

    #[test]
    fn tss_layout() {
        assert_eq!(core::mem::size_of::<Tss>(), TSS_SIZE);
        assert_eq!(core::mem::offset_of!(Tss, rsp), 4);
        assert_eq!(core::mem::offset_of!(Tss, ist), 0x24);
        assert_eq!(core::mem::offset_of!(Tss, iomap_base), 0x66);
        let t = Tss::new(0x30_0000);
        assert_eq!({ t.rsp }[0], 0x30_0000);
        assert_eq!({ t.iomap_base }, 104);
    }

    #[test]
    fn star_layout() {
        // Linux: STAR = (__USER32_CS << 48) | (__KERNEL_CS << 32) = 0x0023_0010 << 32.
        assert_eq!(star(0x10, 0x23), 0x0023_0010_0000_0000);
        assert_eq!(
            star(selector::KERNEL_CODE, selector::USER_CODE32),
            0x001b_0008_0000_0000
        );
    }

    #[test]
    fn page_fault_error_codes() {
        let e = PageFaultError(0x4);
        assert!(e.user() && !e.present() && !e.write() && !e.fetch());
        assert_eq!(format!("{e}"), "user read, not present");
        assert_eq!(format!("{}", PageFaultError(0x7)), "user write, protection");
        assert_eq!(
            format!("{}", PageFaultError(0x19)),
            "kernel fetch, reserved bit set"
        );
        assert_eq!(table_indices(0x80_0000_3008), [1, 0, 0, 3]);
        assert_eq!(table_indices(0x100_4000_0000), [2, 1, 0, 0]);
    }
}
