//! The VMCB (AMD APM vol. 2, Appendix B): control area at 0x000-0x3FF, state
//! save area from 0x400, 4 KiB in all.

use bitflags::bitflags;

use crate::{Error, Result};

/// One segment in the state save area (APM table B-2): selector, attribute,
/// limit, base.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VmcbSegment {
    /// Selector.
    pub selector: u16,
    /// Attributes in the 12-bit SVM format (see [`crate::state::Segment::svm_attrib`]).
    pub attrib: u16,
    /// Limit.
    pub limit: u32,
    /// Base.
    pub base: u64,
}

/// The control area (APM table B-1).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VmcbControl {
    /// 0x000: intercept reads (bits 15:0) and writes (bits 31:16) of CR0-CR15.
    pub intercept_cr: u32,
    /// 0x004: intercept reads (15:0) and writes (31:16) of DR0-DR15.
    pub intercept_dr: u32,
    /// 0x008: intercept exception vectors 0-31.
    pub intercept_exceptions: u32,
    /// 0x00C: intercept vector 3 ([`InterceptMisc1`]).
    pub intercept_misc1: u32,
    /// 0x010: intercept vector 4 ([`InterceptMisc2`]).
    pub intercept_misc2: u32,
    /// 0x014: intercept vector 5 (INVLPGB, INVPCID, MCOMMIT, TLBSYNC, ...).
    pub intercept_misc3: u32,
    _reserved_018: [u8; 0x24],
    /// 0x03C: PAUSE filter threshold.
    pub pause_filter_threshold: u16,
    /// 0x03E: PAUSE filter count.
    pub pause_filter_count: u16,
    /// 0x040: physical base address of the I/O permission map.
    pub iopm_base_pa: u64,
    /// 0x048: physical base address of the MSR permission map.
    pub msrpm_base_pa: u64,
    /// 0x050: TSC offset.
    pub tsc_offset: u64,
    /// 0x058: guest ASID (must not be 0).
    pub guest_asid: u32,
    /// 0x05C: TLB control ([`tlb_control`]).
    pub tlb_control: u8,
    _reserved_05d: [u8; 3],
    /// 0x060: virtual interrupt control ([`vintr`]).
    pub vintr: u64,
    /// 0x068: bit 0 interrupt shadow, bit 1 guest interrupt mask.
    pub interrupt_shadow: u64,
    /// 0x070: exit code.
    pub exit_code: u64,
    /// 0x078: EXITINFO1.
    pub exit_info_1: u64,
    /// 0x080: EXITINFO2.
    pub exit_info_2: u64,
    /// 0x088: EXITINTINFO (an event being delivered when the exit happened).
    pub exit_int_info: u64,
    /// 0x090: bit 0 enables nested paging.
    pub np_enable: u64,
    /// 0x098: AVIC APIC_BAR.
    pub avic_apic_bar: u64,
    /// 0x0A0: guest physical address of the GHCB (SEV-ES).
    pub ghcb_pa: u64,
    /// 0x0A8: event injection ([`super::SvmEvent`]).
    pub event_inj: u64,
    /// 0x0B0: nested page table root (nCR3).
    pub n_cr3: u64,
    /// 0x0B8: LBR virtualization enable.
    pub lbr_virt_enable: u64,
    /// 0x0C0: VMCB clean bits (0 = everything must be reloaded).
    pub vmcb_clean: u32,
    _reserved_0c4: u32,
    /// 0x0C8: next sequential RIP (only with NRIP save).
    pub next_rip: u64,
    /// 0x0D0: number of guest instruction bytes fetched (decode assists).
    pub insn_len: u8,
    /// 0x0D1: guest instruction bytes (decode assists).
    pub insn_bytes: [u8; 15],
    /// 0x0E0: AVIC backing page pointer.
    pub avic_backing_page: u64,
    _reserved_0e8: u64,
    /// 0x0F0: AVIC logical table pointer.
    pub avic_logical_table: u64,
    /// 0x0F8: AVIC physical table pointer.
    pub avic_physical_table: u64,
    _reserved_100: u64,
    /// 0x108: VMSA pointer (SEV-ES).
    pub vmsa_pa: u64,
    _reserved_110: [u8; 0x400 - 0x110],
}

/// The state save area (APM table B-2), at VMCB offset 0x400.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VmcbSaveArea {
    /// 0x400: ES.
    pub es: VmcbSegment,
    /// 0x410: CS.
    pub cs: VmcbSegment,
    /// 0x420: SS.
    pub ss: VmcbSegment,
    /// 0x430: DS.
    pub ds: VmcbSegment,
    /// 0x440: FS.
    pub fs: VmcbSegment,
    /// 0x450: GS.
    pub gs: VmcbSegment,
    /// 0x460: GDTR (only base and limit used).
    pub gdtr: VmcbSegment,
    /// 0x470: LDTR.
    pub ldtr: VmcbSegment,
    /// 0x480: IDTR (only base and limit used).
    pub idtr: VmcbSegment,
    /// 0x490: TR.
    pub tr: VmcbSegment,
    _reserved_4a0: [u8; 0x2a],
    /// 0x4CA: VMPL (SEV-SNP).
    pub vmpl: u8,
    /// 0x4CB: current privilege level.
    pub cpl: u8,
    _reserved_4cc: u32,
    /// 0x4D0: EFER (SVME must be 1).
    pub efer: u64,
    _reserved_4d8: [u8; 0x70],
    /// 0x548: CR4.
    pub cr4: u64,
    /// 0x550: CR3.
    pub cr3: u64,
    /// 0x558: CR0.
    pub cr0: u64,
    /// 0x560: DR7.
    pub dr7: u64,
    /// 0x568: DR6.
    pub dr6: u64,
    /// 0x570: RFLAGS.
    pub rflags: u64,
    /// 0x578: RIP.
    pub rip: u64,
    _reserved_580: [u8; 0x58],
    /// 0x5D8: RSP.
    pub rsp: u64,
    /// 0x5E0: S_CET.
    pub s_cet: u64,
    /// 0x5E8: SSP.
    pub ssp: u64,
    /// 0x5F0: ISST_ADDR.
    pub isst_addr: u64,
    /// 0x5F8: RAX.
    pub rax: u64,
    /// 0x600: STAR.
    pub star: u64,
    /// 0x608: LSTAR.
    pub lstar: u64,
    /// 0x610: CSTAR.
    pub cstar: u64,
    /// 0x618: SFMASK.
    pub sfmask: u64,
    /// 0x620: KernelGsBase.
    pub kernel_gs_base: u64,
    /// 0x628: SYSENTER_CS.
    pub sysenter_cs: u64,
    /// 0x630: SYSENTER_ESP.
    pub sysenter_esp: u64,
    /// 0x638: SYSENTER_EIP.
    pub sysenter_eip: u64,
    /// 0x640: CR2.
    pub cr2: u64,
    _reserved_648: [u8; 0x20],
    /// 0x668: guest PAT (used with nested paging).
    pub g_pat: u64,
    /// 0x670: DBGCTL.
    pub dbgctl: u64,
    /// 0x678: BR_FROM.
    pub br_from: u64,
    /// 0x680: BR_TO.
    pub br_to: u64,
    /// 0x688: LASTEXCPFROM.
    pub last_excp_from: u64,
    /// 0x690: LASTEXCPTO.
    pub last_excp_to: u64,
}

/// A whole VMCB: one 4 KiB page.
#[repr(C, align(4096))]
#[derive(Debug, Clone, Copy)]
pub struct Vmcb {
    /// Control area, 0x000-0x3FF.
    pub control: VmcbControl,
    /// State save area, from 0x400.
    pub save: VmcbSaveArea,
    _reserved_698: [u8; 0x1000 - 0x698],
}

impl Vmcb {
    /// An all-zero VMCB.
    pub const fn zeroed() -> Self {
        // SAFETY: every field is an integer or an array of integers, for
        // which all-zero bytes are a valid value.
        unsafe { core::mem::zeroed() }
    }

    /// Views the first 4096 bytes of `bytes` (4 KiB aligned) as a VMCB.
    pub fn from_bytes_mut(bytes: &mut [u8]) -> Result<&mut Self> {
        if bytes.len() < core::mem::size_of::<Self>() {
            return Err(Error::InvalidArgument("VMCB storage smaller than 4 KiB"));
        }
        if bytes.as_ptr() as usize % core::mem::align_of::<Self>() != 0 {
            return Err(Error::InvalidArgument("VMCB storage not 4 KiB aligned"));
        }
        // SAFETY: size and alignment were checked; every bit pattern is a
        // valid `Vmcb` (integers only); the returned borrow is tied to the
        // exclusive borrow of `bytes`.
        Ok(unsafe { &mut *(bytes.as_mut_ptr() as *mut Self) })
    }
}

bitflags! {
    /// Intercept vector 3, VMCB offset 0x00C (APM table B-1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct InterceptMisc1: u32 {
        /// Physical INTR.
        const INTR = 1 << 0;
        /// Physical NMI.
        const NMI = 1 << 1;
        /// Physical SMI.
        const SMI = 1 << 2;
        /// Physical INIT.
        const INIT = 1 << 3;
        /// Virtual INTR (interrupt window).
        const VINTR = 1 << 4;
        /// CR0 writes that change bits other than TS or MP.
        const CR0_SEL_WRITE = 1 << 5;
        /// IDTR reads.
        const IDTR_READ = 1 << 6;
        /// GDTR reads.
        const GDTR_READ = 1 << 7;
        /// LDTR reads.
        const LDTR_READ = 1 << 8;
        /// TR reads.
        const TR_READ = 1 << 9;
        /// IDTR writes.
        const IDTR_WRITE = 1 << 10;
        /// GDTR writes.
        const GDTR_WRITE = 1 << 11;
        /// LDTR writes.
        const LDTR_WRITE = 1 << 12;
        /// TR writes.
        const TR_WRITE = 1 << 13;
        /// RDTSC.
        const RDTSC = 1 << 14;
        /// RDPMC.
        const RDPMC = 1 << 15;
        /// PUSHF.
        const PUSHF = 1 << 16;
        /// POPF.
        const POPF = 1 << 17;
        /// CPUID.
        const CPUID = 1 << 18;
        /// RSM.
        const RSM = 1 << 19;
        /// IRET.
        const IRET = 1 << 20;
        /// INTn.
        const INTN = 1 << 21;
        /// INVD.
        const INVD = 1 << 22;
        /// PAUSE.
        const PAUSE = 1 << 23;
        /// HLT.
        const HLT = 1 << 24;
        /// INVLPG.
        const INVLPG = 1 << 25;
        /// INVLPGA.
        const INVLPGA = 1 << 26;
        /// IN/OUT through the I/O permission map.
        const IOIO_PROT = 1 << 27;
        /// RDMSR/WRMSR through the MSR permission map.
        const MSR_PROT = 1 << 28;
        /// Task switches.
        const TASK_SWITCH = 1 << 29;
        /// FERR_FREEZE.
        const FERR_FREEZE = 1 << 30;
        /// Shutdown events (triple fault).
        const SHUTDOWN = 1 << 31;
    }
}

bitflags! {
    /// Intercept vector 4, VMCB offset 0x010 (APM table B-1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct InterceptMisc2: u32 {
        /// VMRUN (must be set, or VMRUN fails with VMEXIT_INVALID).
        const VMRUN = 1 << 0;
        /// VMMCALL.
        const VMMCALL = 1 << 1;
        /// VMLOAD.
        const VMLOAD = 1 << 2;
        /// VMSAVE.
        const VMSAVE = 1 << 3;
        /// STGI.
        const STGI = 1 << 4;
        /// CLGI.
        const CLGI = 1 << 5;
        /// SKINIT.
        const SKINIT = 1 << 6;
        /// RDTSCP.
        const RDTSCP = 1 << 7;
        /// ICEBP.
        const ICEBP = 1 << 8;
        /// WBINVD/WBNOINVD.
        const WBINVD = 1 << 9;
        /// MONITOR/MONITORX.
        const MONITOR = 1 << 10;
        /// MWAIT/MWAITX unconditionally.
        const MWAIT = 1 << 11;
        /// MWAIT/MWAITX if armed.
        const MWAIT_CONDITIONAL = 1 << 12;
        /// XSETBV.
        const XSETBV = 1 << 13;
        /// RDPRU.
        const RDPRU = 1 << 14;
        /// EFER writes after completion.
        const EFER_WRITE_TRAP = 1 << 15;
    }
}

/// TLB_CONTROL values (VMCB offset 0x05C).
pub mod tlb_control {
    /// Do nothing.
    pub const DO_NOTHING: u8 = 0;
    /// Flush the entire TLB (all ASIDs) on VMRUN.
    pub const FLUSH_ALL: u8 = 1;
    /// Flush this guest's ASID.
    pub const FLUSH_ASID: u8 = 3;
    /// Flush this guest's non-global entries.
    pub const FLUSH_ASID_NON_GLOBAL: u8 = 7;
}

/// Virtual interrupt control bits (VMCB offset 0x060).
pub mod vintr {
    /// Virtual TPR (bits 7:0).
    pub const V_TPR_MASK: u64 = 0xff;
    /// A virtual interrupt is pending.
    pub const V_IRQ: u64 = 1 << 8;
    /// Virtual interrupt priority (bits 19:16).
    pub const V_INTR_PRIO_SHIFT: u32 = 16;
    /// Ignore the virtual TPR for the pending virtual interrupt.
    pub const V_IGN_TPR: u64 = 1 << 20;
    /// Virtualize interrupt masking: guest RFLAGS.IF masks only virtual
    /// interrupts, the host's IF masks physical ones.
    pub const V_INTR_MASKING: u64 = 1 << 24;
    /// Virtual interrupt vector (bits 39:32).
    pub const V_INTR_VECTOR_SHIFT: u32 = 32;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn control_area_offsets_match_apm_table_b1() {
        assert_eq!(offset_of!(VmcbControl, intercept_cr), 0x000);
        assert_eq!(offset_of!(VmcbControl, intercept_dr), 0x004);
        assert_eq!(offset_of!(VmcbControl, intercept_exceptions), 0x008);
        assert_eq!(offset_of!(VmcbControl, intercept_misc1), 0x00C);
        assert_eq!(offset_of!(VmcbControl, intercept_misc2), 0x010);
        assert_eq!(offset_of!(VmcbControl, pause_filter_threshold), 0x03C);
        assert_eq!(offset_of!(VmcbControl, pause_filter_count), 0x03E);
        assert_eq!(offset_of!(VmcbControl, iopm_base_pa), 0x040);
        assert_eq!(offset_of!(VmcbControl, msrpm_base_pa), 0x048);
        assert_eq!(offset_of!(VmcbControl, tsc_offset), 0x050);
        assert_eq!(offset_of!(VmcbControl, guest_asid), 0x058);
        assert_eq!(offset_of!(VmcbControl, tlb_control), 0x05C);
        assert_eq!(offset_of!(VmcbControl, vintr), 0x060);
        assert_eq!(offset_of!(VmcbControl, interrupt_shadow), 0x068);
        assert_eq!(offset_of!(VmcbControl, exit_code), 0x070);
        assert_eq!(offset_of!(VmcbControl, exit_info_1), 0x078);
        assert_eq!(offset_of!(VmcbControl, exit_info_2), 0x080);
        assert_eq!(offset_of!(VmcbControl, exit_int_info), 0x088);
        assert_eq!(offset_of!(VmcbControl, np_enable), 0x090);
        assert_eq!(offset_of!(VmcbControl, event_inj), 0x0A8);
        assert_eq!(offset_of!(VmcbControl, n_cr3), 0x0B0);
        assert_eq!(offset_of!(VmcbControl, vmcb_clean), 0x0C0);
        assert_eq!(offset_of!(VmcbControl, next_rip), 0x0C8);
        assert_eq!(offset_of!(VmcbControl, insn_len), 0x0D0);
        assert_eq!(offset_of!(VmcbControl, insn_bytes), 0x0D1);
        assert_eq!(offset_of!(VmcbControl, avic_backing_page), 0x0E0);
        assert_eq!(offset_of!(VmcbControl, vmsa_pa), 0x108);
        assert_eq!(size_of::<VmcbControl>(), 0x400);
    }

    #[test]
    fn save_area_offsets_match_apm_table_b2() {
        let at = |o: usize| 0x400 + o;
        assert_eq!(size_of::<VmcbSegment>(), 16);
        assert_eq!(offset_of!(Vmcb, save), 0x400);
        assert_eq!(at(offset_of!(VmcbSaveArea, es)), 0x400);
        assert_eq!(at(offset_of!(VmcbSaveArea, cs)), 0x410);
        assert_eq!(at(offset_of!(VmcbSaveArea, ss)), 0x420);
        assert_eq!(at(offset_of!(VmcbSaveArea, ds)), 0x430);
        assert_eq!(at(offset_of!(VmcbSaveArea, fs)), 0x440);
        assert_eq!(at(offset_of!(VmcbSaveArea, gs)), 0x450);
        assert_eq!(at(offset_of!(VmcbSaveArea, gdtr)), 0x460);
        assert_eq!(at(offset_of!(VmcbSaveArea, ldtr)), 0x470);
        assert_eq!(at(offset_of!(VmcbSaveArea, idtr)), 0x480);
        assert_eq!(at(offset_of!(VmcbSaveArea, tr)), 0x490);
        assert_eq!(at(offset_of!(VmcbSaveArea, cpl)), 0x4CB);
        assert_eq!(at(offset_of!(VmcbSaveArea, efer)), 0x4D0);
        assert_eq!(at(offset_of!(VmcbSaveArea, cr4)), 0x548);
        assert_eq!(at(offset_of!(VmcbSaveArea, cr3)), 0x550);
        assert_eq!(at(offset_of!(VmcbSaveArea, cr0)), 0x558);
        assert_eq!(at(offset_of!(VmcbSaveArea, dr7)), 0x560);
        assert_eq!(at(offset_of!(VmcbSaveArea, dr6)), 0x568);
        assert_eq!(at(offset_of!(VmcbSaveArea, rflags)), 0x570);
        assert_eq!(at(offset_of!(VmcbSaveArea, rip)), 0x578);
        assert_eq!(at(offset_of!(VmcbSaveArea, rsp)), 0x5D8);
        assert_eq!(at(offset_of!(VmcbSaveArea, rax)), 0x5F8);
        assert_eq!(at(offset_of!(VmcbSaveArea, star)), 0x600);
        assert_eq!(at(offset_of!(VmcbSaveArea, lstar)), 0x608);
        assert_eq!(at(offset_of!(VmcbSaveArea, cstar)), 0x610);
        assert_eq!(at(offset_of!(VmcbSaveArea, sfmask)), 0x618);
        assert_eq!(at(offset_of!(VmcbSaveArea, kernel_gs_base)), 0x620);
        assert_eq!(at(offset_of!(VmcbSaveArea, sysenter_cs)), 0x628);
        assert_eq!(at(offset_of!(VmcbSaveArea, cr2)), 0x640);
        assert_eq!(at(offset_of!(VmcbSaveArea, g_pat)), 0x668);
        assert_eq!(at(offset_of!(VmcbSaveArea, dbgctl)), 0x670);
        assert_eq!(size_of::<Vmcb>(), 4096);
        assert_eq!(core::mem::align_of::<Vmcb>(), 4096);
    }

    #[test]
    fn intercept_bits_match_apm() {
        assert_eq!(InterceptMisc1::CPUID.bits(), 1 << 18);
        assert_eq!(InterceptMisc1::HLT.bits(), 1 << 24);
        assert_eq!(InterceptMisc1::IOIO_PROT.bits(), 1 << 27);
        assert_eq!(InterceptMisc1::MSR_PROT.bits(), 1 << 28);
        assert_eq!(InterceptMisc1::SHUTDOWN.bits(), 1 << 31);
        assert_eq!(InterceptMisc2::VMRUN.bits(), 1);
        assert_eq!(InterceptMisc2::VMMCALL.bits(), 2);
    }

    #[test]
    fn from_bytes_checks_size_and_alignment() {
        let mut page = std::boxed::Box::new(Vmcb::zeroed());
        let bytes = unsafe_bytes(&mut page);
        let v = Vmcb::from_bytes_mut(bytes).unwrap();
        v.save.rip = 0x1234;
        assert_eq!(page.save.rip, 0x1234);
        let mut small = [0u8; 64];
        assert!(Vmcb::from_bytes_mut(&mut small).is_err());
    }

    fn unsafe_bytes(v: &mut Vmcb) -> &mut [u8] {
        // SAFETY: a `Vmcb` is 4096 plain bytes.
        unsafe { core::slice::from_raw_parts_mut(v as *mut Vmcb as *mut u8, 4096) }
    }
}
