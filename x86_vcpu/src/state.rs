//! Architecture-neutral initial guest state, written into a VMCS
//! ([`crate::vmx::write_guest_state`]) or a VMCB ([`crate::svm::write_guest_state`]).

use crate::guest_msrs::SyscallMsrs;
use crate::msr::efer;
use crate::regs::GeneralRegisters;
use crate::vmx::controls::{cr0, cr4};

/// Segment access rights in the VMX format (SDM 25.4.1): type 3:0, S 4,
/// DPL 6:5, P 7, AVL 12, L 13, D/B 14, G 15, unusable 16.
pub mod ar {
    /// Present.
    pub const P: u32 = 1 << 7;
    /// Code or data (not system) segment.
    pub const S: u32 = 1 << 4;
    /// 64-bit code segment.
    pub const L: u32 = 1 << 13;
    /// 32-bit default operation size.
    pub const DB: u32 = 1 << 14;
    /// 4 KiB granularity.
    pub const G: u32 = 1 << 15;
    /// Segment unusable (VMX only).
    pub const UNUSABLE: u32 = 1 << 16;
    /// Type: execute/read code, accessed.
    pub const TYPE_CODE_RX_ACCESSED: u32 = 0xb;
    /// Type: read/write data, accessed.
    pub const TYPE_DATA_RW_ACCESSED: u32 = 0x3;
    /// Type: busy 32/64-bit TSS.
    pub const TYPE_TSS_BUSY: u32 = 0xb;
    /// Type: LDT.
    pub const TYPE_LDT: u32 = 0x2;
}

/// One segment register as the processor caches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit in bytes (already scaled by G).
    pub limit: u32,
    /// Access rights in the VMX format (see [`ar`]).
    pub access_rights: u32,
}

impl Segment {
    /// An unusable segment (null selector).
    pub const fn unusable() -> Self {
        Self {
            selector: 0,
            base: 0,
            limit: 0,
            access_rights: ar::UNUSABLE,
        }
    }

    /// A flat 4 GiB 32-bit code segment (access rights 0xC09B).
    pub const fn flat_code32(selector: u16) -> Self {
        Self {
            selector,
            base: 0,
            limit: 0xffff_ffff,
            access_rights: ar::G | ar::DB | ar::P | ar::S | ar::TYPE_CODE_RX_ACCESSED,
        }
    }

    /// A 64-bit code segment (access rights 0xA09B).
    pub const fn code64(selector: u16) -> Self {
        Self {
            selector,
            base: 0,
            limit: 0xffff_ffff,
            access_rights: ar::G | ar::L | ar::P | ar::S | ar::TYPE_CODE_RX_ACCESSED,
        }
    }

    /// A flat 4 GiB read/write data segment (access rights 0xC093).
    pub const fn flat_data(selector: u16) -> Self {
        Self {
            selector,
            base: 0,
            limit: 0xffff_ffff,
            access_rights: ar::G | ar::DB | ar::P | ar::S | ar::TYPE_DATA_RW_ACCESSED,
        }
    }

    /// A real-mode segment: base = selector * 16, 64 KiB limit.
    pub const fn real_mode(selector: u16, code: bool) -> Self {
        let ty = if code {
            ar::TYPE_CODE_RX_ACCESSED
        } else {
            ar::TYPE_DATA_RW_ACCESSED
        };
        Self {
            selector,
            base: (selector as u64) << 4,
            limit: 0xffff,
            access_rights: ar::P | ar::S | ty,
        }
    }

    /// A busy TSS (access rights 0x8B) as VM entry requires for TR.
    pub const fn tss(base: u64, limit: u32) -> Self {
        Self {
            selector: 0,
            base,
            limit,
            access_rights: ar::P | ar::TYPE_TSS_BUSY,
        }
    }

    /// A usable empty LDT (access rights 0x82).
    pub const fn empty_ldt() -> Self {
        Self {
            selector: 0,
            base: 0,
            limit: 0xffff,
            access_rights: ar::P | ar::TYPE_LDT,
        }
    }

    /// The descriptor privilege level (access rights bits 6:5).
    pub const fn dpl(&self) -> u8 {
        ((self.access_rights >> 5) & 3) as u8
    }

    /// Whether the segment is usable.
    pub const fn is_usable(&self) -> bool {
        self.access_rights & ar::UNUSABLE == 0
    }

    /// The 12-bit SVM attribute form of the access rights (APM 15.5.1):
    /// bits 7:0 = type, S, DPL, P; bits 11:8 = AVL, L, D/B, G. An unusable
    /// segment has attribute 0 (not present).
    pub const fn svm_attrib(&self) -> u16 {
        if !self.is_usable() {
            return 0;
        }
        (((self.access_rights >> 4) & 0xf00) | (self.access_rights & 0xff)) as u16
    }
}

/// GDTR or IDTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescriptorTable {
    /// Linear base address.
    pub base: u64,
    /// Limit.
    pub limit: u16,
}

/// The register state a guest starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestState {
    /// General-purpose registers (RSP is [`GuestState::rsp`]).
    pub regs: GeneralRegisters,
    /// RIP.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// RFLAGS (bit 1 is always 1).
    pub rflags: u64,
    /// CR0 as the guest should see it.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 as the guest should see it.
    pub cr4: u64,
    /// IA32_EFER (without SVME: the SVM backend adds it).
    pub efer: u64,
    /// IA32_PAT.
    pub pat: u64,
    /// DR7.
    pub dr7: u64,
    /// CS.
    pub cs: Segment,
    /// DS.
    pub ds: Segment,
    /// ES.
    pub es: Segment,
    /// FS.
    pub fs: Segment,
    /// GS.
    pub gs: Segment,
    /// SS.
    pub ss: Segment,
    /// TR.
    pub tr: Segment,
    /// LDTR.
    pub ldtr: Segment,
    /// GDTR.
    pub gdtr: DescriptorTable,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// STAR, LSTAR, CSTAR, FMASK, KERNEL_GS_BASE and TSC_AUX (0 after
    /// reset; see [`crate::guest_msrs`] for how they are switched).
    pub syscall_msrs: SyscallMsrs,
}

/// The multiboot v1 magic placed in EAX for the kernel.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u64 = 0x2BAD_B002;
/// RFLAGS bit 1, reserved, always 1.
pub const RFLAGS_RESERVED_1: u64 = 1 << 1;
/// IA32_PAT power-on value (WB, WT, UC-, UC, repeated).
pub const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;
/// DR7 reset value.
pub const DR7_DEFAULT: u64 = 0x400;

impl GuestState {
    fn base(cs: Segment, data: Segment) -> Self {
        Self {
            regs: GeneralRegisters::default(),
            rip: 0,
            rsp: 0,
            rflags: RFLAGS_RESERVED_1,
            cr0: 0,
            cr3: 0,
            cr4: 0,
            efer: 0,
            pat: PAT_DEFAULT,
            dr7: DR7_DEFAULT,
            cs,
            ds: data,
            es: data,
            fs: data,
            gs: data,
            ss: data,
            tr: Segment::tss(0, 0xffff),
            ldtr: Segment::unusable(),
            gdtr: DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            idtr: DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            syscall_msrs: SyscallMsrs::default(),
        }
    }

    /// The state a multiboot v1 loader hands to a kernel (Multiboot spec
    /// 3.2): 32-bit protected mode, paging off (CR0 = PE | ET), flat 4 GiB
    /// code and data segments, interrupts off, EAX = 0x2BADB002, EBX = the
    /// physical address of the multiboot information structure.
    pub fn multiboot(entry: u32, info_paddr: u32) -> Self {
        let mut s = Self::base(Segment::flat_code32(0x08), Segment::flat_data(0x10));
        s.rip = u64::from(entry);
        s.cr0 = cr0::PE | cr0::ET;
        s.regs.rax = MULTIBOOT_BOOTLOADER_MAGIC;
        s.regs.rbx = u64::from(info_paddr);
        s
    }

    /// 64-bit long mode at `entry` with page tables at `cr3` (which must map
    /// the entry): CR0 = PE | MP | ET | NE | WP | PG, CR4 = PAE, EFER = LME |
    /// LMA, 64-bit code segment 0x10 and flat data segments 0x18 (as the
    /// Linux 64-bit boot protocol expects; put `boot_params` in RSI).
    pub fn long_mode(entry: u64, cr3: u64) -> Self {
        let mut s = Self::base(Segment::code64(0x10), Segment::flat_data(0x18));
        s.rip = entry;
        s.cr3 = cr3;
        s.cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::PG;
        s.cr4 = cr4::PAE;
        s.efer = efer::LME | efer::LMA;
        s
    }

    /// Real mode at `cs:ip` with CR0 = ET (as after INIT, with the SIPI
    /// vector `v` giving `cs = v << 8`, `ip = 0`).
    pub fn real_mode(cs: u16, ip: u16) -> Self {
        let mut s = Self::base(Segment::real_mode(cs, true), Segment::real_mode(0, false));
        s.rip = u64::from(ip);
        s.cr0 = cr0::ET;
        s.ldtr = Segment::empty_ldt();
        s.tr = Segment::tss(0, 0xffff);
        s
    }

    /// The state after a start-up IPI with `vector`: real mode at
    /// `vector << 8 : 0` (physical address `vector << 12`).
    pub fn sipi(vector: u8) -> Self {
        Self::real_mode(u16::from(vector) << 8, 0)
    }

    /// Whether the guest runs in long mode (EFER.LMA).
    pub const fn is_long_mode(&self) -> bool {
        self.efer & efer::LMA != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiboot_state() {
        let s = GuestState::multiboot(0x10_0000, 0x9000);
        assert_eq!(s.regs.rax, 0x2BAD_B002);
        assert_eq!(s.regs.rbx, 0x9000);
        assert_eq!(s.rip, 0x10_0000);
        assert_eq!(s.cr0, 0x11);
        assert_eq!(s.rflags, 0x2);
        assert_eq!(s.cs.access_rights, 0xc09b);
        assert_eq!(s.ds.access_rights, 0xc093);
        assert_eq!(s.ss.limit, 0xffff_ffff);
        assert_eq!(s.tr.access_rights, 0x8b);
        assert!(!s.ldtr.is_usable());
        assert!(!s.is_long_mode());
        assert_eq!(s.syscall_msrs, SyscallMsrs::default());
    }

    #[test]
    fn long_mode_state() {
        let s = GuestState::long_mode(0xffff_ffff_8100_0000, 0x1000);
        assert_eq!(s.cr0, 0x8001_0033);
        assert_eq!(s.cr4, 0x20);
        assert_eq!(s.efer, 0x500);
        assert_eq!(s.cs.access_rights, 0xa09b);
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ds.selector, 0x18);
        assert!(s.is_long_mode());
    }

    #[test]
    fn sipi_state() {
        let s = GuestState::sipi(0x9f);
        assert_eq!(s.cs.selector, 0x9f00);
        assert_eq!(s.cs.base, 0x9_f000);
        assert_eq!(s.cs.limit, 0xffff);
        assert_eq!(s.cs.access_rights, 0x9b);
        assert_eq!(s.rip, 0);
        assert_eq!(s.cr0, 0x10);
    }

    #[test]
    fn svm_attribute_form() {
        assert_eq!(Segment::flat_code32(8).svm_attrib(), 0xc9b);
        assert_eq!(Segment::code64(8).svm_attrib(), 0xa9b);
        assert_eq!(Segment::flat_data(0x10).svm_attrib(), 0xc93);
        assert_eq!(Segment::tss(0, 0x67).svm_attrib(), 0x8b);
        assert_eq!(Segment::unusable().svm_attrib(), 0);
        let user = Segment {
            access_rights: 0xc0f3,
            ..Segment::flat_data(0x2b)
        };
        assert_eq!(user.dpl(), 3);
        assert_eq!(user.svm_attrib(), 0xcf3);
    }
}
