//! Filling a VMCB (controls and guest state) and checking it the way VMRUN
//! does (APM 15.5.1, "Canonicalization and Consistency Checks").

use super::bitmap::{IOPM_SIZE, MSRPM_SIZE};
use super::vmcb::{InterceptMisc1, InterceptMisc2, Vmcb, VmcbSegment, tlb_control, vintr};
use crate::msr::efer;
use crate::state::{GuestState, Segment};
use crate::vmx::controls::{cr0, cr4};
use crate::{Error, Result};

/// Physical addresses and the ASID the VMCB controls point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvmControlsConfig {
    /// I/O permission map (12 KiB, 4 KiB aligned).
    pub iopm_pa: u64,
    /// MSR permission map (8 KiB, 4 KiB aligned).
    pub msrpm_pa: u64,
    /// Guest ASID (non-zero).
    pub asid: u32,
    /// Nested page table root (nCR3).
    pub n_cr3: u64,
}

/// The intercepts this hypervisor always sets in vector 3.
pub const DEFAULT_MISC1: InterceptMisc1 = InterceptMisc1::INTR
    .union(InterceptMisc1::NMI)
    .union(InterceptMisc1::SMI)
    .union(InterceptMisc1::INIT)
    .union(InterceptMisc1::CPUID)
    .union(InterceptMisc1::HLT)
    .union(InterceptMisc1::INVD)
    .union(InterceptMisc1::IOIO_PROT)
    .union(InterceptMisc1::MSR_PROT)
    .union(InterceptMisc1::SHUTDOWN);

/// The intercepts this hypervisor always sets in vector 4: every SVM
/// instruction (the guest does not get nested virtualization), VMMCALL
/// (hypercalls) and XSETBV (the processor does not switch XCR0 on VMRUN).
pub const DEFAULT_MISC2: InterceptMisc2 = InterceptMisc2::VMRUN
    .union(InterceptMisc2::VMMCALL)
    .union(InterceptMisc2::VMLOAD)
    .union(InterceptMisc2::VMSAVE)
    .union(InterceptMisc2::STGI)
    .union(InterceptMisc2::CLGI)
    .union(InterceptMisc2::SKINIT)
    .union(InterceptMisc2::XSETBV);

/// Writes the control area: intercepts, permission maps, ASID, nested paging
/// on with `n_cr3`, virtual interrupt masking, a full TLB flush on the first
/// VMRUN, and clean bits 0 (nothing cached).
pub fn write_controls(vmcb: &mut Vmcb, cfg: &SvmControlsConfig) -> Result {
    for (addr, what) in [
        (cfg.iopm_pa, "IOPM not page aligned"),
        (cfg.msrpm_pa, "MSRPM not page aligned"),
        (cfg.n_cr3, "nested page table root not page aligned"),
    ] {
        if addr & 0xfff != 0 || addr == 0 {
            return Err(Error::InvalidArgument(what));
        }
    }
    if cfg.asid == 0 {
        return Err(Error::InvalidArgument("ASID 0 belongs to the host"));
    }
    let c = &mut vmcb.control;
    c.intercept_cr = 0;
    c.intercept_dr = 0;
    // #MC goes to the host.
    c.intercept_exceptions = 1 << 18;
    c.intercept_misc1 = DEFAULT_MISC1.bits();
    c.intercept_misc2 = DEFAULT_MISC2.bits();
    c.intercept_misc3 = 0;
    c.iopm_base_pa = cfg.iopm_pa;
    c.msrpm_base_pa = cfg.msrpm_pa;
    c.tsc_offset = 0;
    c.guest_asid = cfg.asid;
    c.tlb_control = tlb_control::FLUSH_ALL;
    c.vintr = vintr::V_INTR_MASKING;
    c.interrupt_shadow = 0;
    c.np_enable = 1;
    c.n_cr3 = cfg.n_cr3;
    c.event_inj = 0;
    c.vmcb_clean = 0;
    Ok(())
}

fn seg(s: &Segment) -> VmcbSegment {
    VmcbSegment {
        selector: s.selector,
        attrib: s.svm_attrib(),
        limit: s.limit,
        base: s.base,
    }
}

/// DR6 reset value.
pub const DR6_DEFAULT: u64 = 0xffff_0ff0;

/// Writes the state save area from `s`; EFER gets SVME (required by VMRUN),
/// CPL is SS.DPL (0 in real mode), RAX comes from `s.regs` (VMRUN loads it
/// from the VMCB; the other GPRs are the run loop's business). STAR, LSTAR,
/// CSTAR, SFMASK and KERNEL_GS_BASE come from `s.syscall_msrs` (refused if
/// WRMSR would refuse them, [`crate::SyscallMsrs::validate`]).
pub fn write_guest_state(vmcb: &mut Vmcb, s: &GuestState) -> Result {
    let v = &mut vmcb.save;
    v.es = seg(&s.es);
    v.cs = seg(&s.cs);
    v.ss = seg(&s.ss);
    v.ds = seg(&s.ds);
    v.fs = seg(&s.fs);
    v.gs = seg(&s.gs);
    v.ldtr = seg(&s.ldtr);
    v.tr = seg(&s.tr);
    v.gdtr = VmcbSegment {
        base: s.gdtr.base,
        limit: s.gdtr.limit.into(),
        ..Default::default()
    };
    v.idtr = VmcbSegment {
        base: s.idtr.base,
        limit: s.idtr.limit.into(),
        ..Default::default()
    };
    v.cpl = if s.cr0 & cr0::PE != 0 { s.ss.dpl() } else { 0 };
    v.efer = s.efer | efer::SVME;
    v.cr0 = s.cr0;
    v.cr3 = s.cr3;
    v.cr4 = s.cr4;
    v.dr6 = DR6_DEFAULT;
    v.dr7 = s.dr7;
    v.rflags = s.rflags | crate::state::RFLAGS_RESERVED_1;
    v.rip = s.rip;
    v.rsp = s.rsp;
    v.rax = s.regs.rax;
    v.g_pat = s.pat;
    v.cr2 = 0;
    // Switched by VMLOAD/VMSAVE around VMRUN (TSC_AUX is not: the vCPU
    // switches it, see `crate::guest_msrs`).
    s.syscall_msrs.validate()?;
    v.star = s.syscall_msrs.star;
    v.lstar = s.syscall_msrs.lstar;
    v.cstar = s.syscall_msrs.cstar;
    v.sfmask = s.syscall_msrs.fmask;
    v.kernel_gs_base = s.syscall_msrs.kernel_gs_base;
    Ok(())
}

/// The architectural limit of physical addresses (52 bits).
const MAX_PHYS_ADDR: u64 = 1 << 52;

/// Whether `pat` is a valid PAT value: each of the 8 entries is a memory
/// type 0 (UC), 1 (WC), 4 (WT), 5 (WP), 6 (WB) or 7 (UC-), and bits 7:3 of
/// each byte are zero (AMD APM vol. 2, 7.8.1; G_PAT follows the same rules,
/// 15.25.8).
pub fn pat_is_valid(pat: u64) -> bool {
    pat.to_le_bytes()
        .iter()
        .all(|&t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7))
}

/// Checks the VMCB as VMRUN would (APM 15.5.1, and 15.25.8 for G_PAT with
/// nested paging); a VMCB that passes does not exit with VMEXIT_INVALID for
/// these reasons. The error names the failed check.
pub fn check_vmcb(vmcb: &Vmcb) -> Result {
    let s = &vmcb.save;
    let c = &vmcb.control;
    if s.efer & efer::SVME == 0 {
        return Err(Error::InvalidVmcb("EFER.SVME is zero"));
    }
    if s.cr0 & cr0::CD == 0 && s.cr0 & cr0::NW != 0 {
        return Err(Error::InvalidVmcb("CR0.CD is zero and CR0.NW is set"));
    }
    if s.cr0 >> 32 != 0 {
        return Err(Error::InvalidVmcb("CR0[63:32] are not zero"));
    }
    if s.cr3 >> 52 != 0 {
        return Err(Error::InvalidVmcb("CR3 MBZ bits are set"));
    }
    if s.cr4 >> 32 != 0 {
        return Err(Error::InvalidVmcb("CR4 reserved bits are set"));
    }
    if s.dr6 >> 32 != 0 || s.dr7 >> 32 != 0 {
        return Err(Error::InvalidVmcb("DR6[63:32] or DR7[63:32] are not zero"));
    }
    // EFER bits 1-7 and 9 are MBZ, as is the upper half.
    if s.efer & 0x2fe != 0 || s.efer >> 32 != 0 {
        return Err(Error::InvalidVmcb("EFER MBZ bits are set"));
    }
    let lme_pg = s.efer & efer::LME != 0 && s.cr0 & cr0::PG != 0;
    if lme_pg && s.cr4 & cr4::PAE == 0 {
        return Err(Error::InvalidVmcb(
            "EFER.LME and CR0.PG set with CR4.PAE clear",
        ));
    }
    if lme_pg && s.cr0 & cr0::PE == 0 {
        return Err(Error::InvalidVmcb(
            "EFER.LME and CR0.PG set with CR0.PE clear",
        ));
    }
    let cs_l = s.cs.attrib & (1 << 9) != 0;
    let cs_d = s.cs.attrib & (1 << 10) != 0;
    if lme_pg && s.cr4 & cr4::PAE != 0 && cs_l && cs_d {
        return Err(Error::InvalidVmcb("long mode with CS.L and CS.D both set"));
    }
    if c.intercept_misc2 & InterceptMisc2::VMRUN.bits() == 0 {
        return Err(Error::InvalidVmcb("the VMRUN intercept is clear"));
    }
    if c.guest_asid == 0 {
        return Err(Error::InvalidVmcb("ASID is zero"));
    }
    // The permission maps must end below the largest physical address
    // (52 bits architecturally; a processor may have fewer).
    if (c.iopm_base_pa & !0xfff) + IOPM_SIZE as u64 > MAX_PHYS_ADDR
        || (c.msrpm_base_pa & !0xfff) + MSRPM_SIZE as u64 > MAX_PHYS_ADDR
    {
        return Err(Error::InvalidVmcb(
            "the IOPM or MSRPM extends beyond the physical address space",
        ));
    }
    if c.np_enable & 1 != 0 {
        if !pat_is_valid(s.g_pat) {
            return Err(Error::InvalidVmcb(
                "G_PAT has a reserved memory type or a reserved bit set",
            ));
        }
        if c.n_cr3 >> 52 != 0 {
            return Err(Error::InvalidVmcb("nCR3 MBZ bits are set"));
        }
    }
    if c.event_inj & super::event::EVENTINJ_VALID != 0
        && super::SvmEvent::from_raw(c.event_inj).is_none()
    {
        return Err(Error::InvalidVmcb("EVENTINJ has a reserved type"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;

    fn cfg() -> SvmControlsConfig {
        SvmControlsConfig {
            iopm_pa: 0x10_0000,
            msrpm_pa: 0x10_3000,
            asid: 1,
            n_cr3: 0x20_0000,
        }
    }

    fn vmcb_for(s: &GuestState) -> Box<Vmcb> {
        let mut v = Box::new(Vmcb::zeroed());
        write_controls(&mut v, &cfg()).unwrap();
        write_guest_state(&mut v, s).unwrap();
        v
    }

    #[test]
    fn controls() {
        let v = vmcb_for(&GuestState::multiboot(0x10_0000, 0x9000));
        let c = &v.control;
        assert_ne!(c.intercept_misc2 & 1, 0, "VMRUN intercept is mandatory");
        assert_ne!(c.intercept_misc2 & 2, 0, "VMMCALL intercepted");
        for bit in [18, 24, 27, 28, 31] {
            assert_ne!(c.intercept_misc1 & (1 << bit), 0, "misc1 bit {bit}");
        }
        assert_eq!(c.iopm_base_pa, 0x10_0000);
        assert_eq!(c.msrpm_base_pa, 0x10_3000);
        assert_eq!(c.guest_asid, 1);
        assert_eq!(c.np_enable, 1);
        assert_eq!(c.n_cr3, 0x20_0000);
        assert_eq!(c.tlb_control, 1);
        assert_eq!(c.vintr, 1 << 24);
        let mut w = Box::new(Vmcb::zeroed());
        assert!(write_controls(&mut w, &SvmControlsConfig { asid: 0, ..cfg() }).is_err());
        assert!(
            write_controls(
                &mut w,
                &SvmControlsConfig {
                    n_cr3: 0x20_0008,
                    ..cfg()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn multiboot_state_in_vmcb() {
        let v = vmcb_for(&GuestState::multiboot(0x10_0000, 0x9000));
        let s = &v.save;
        assert_eq!(s.cr0, 0x11);
        assert_eq!(s.efer, 0x1000);
        assert_eq!(s.rax, 0x2bad_b002);
        assert_eq!(s.rip, 0x10_0000);
        assert_eq!(s.rflags, 2);
        assert_eq!(
            s.cs,
            VmcbSegment {
                selector: 8,
                attrib: 0xc9b,
                limit: 0xffff_ffff,
                base: 0
            }
        );
        assert_eq!(s.ss.attrib, 0xc93);
        assert_eq!(s.ldtr.attrib, 0);
        assert_eq!(s.tr.attrib, 0x8b);
        assert_eq!(s.cpl, 0);
        assert_eq!(s.dr6, 0xffff_0ff0);
        assert_eq!(s.g_pat, 0x0007_0406_0007_0406);
        assert_eq!(check_vmcb(&v), Ok(()));
    }

    #[test]
    fn long_mode_and_real_mode_state_pass_checks() {
        let v = vmcb_for(&GuestState::long_mode(0x20_0000, 0x1000));
        assert_eq!(v.save.efer, 0x1500);
        assert_eq!(v.save.cs.attrib, 0xa9b);
        assert_eq!(check_vmcb(&v), Ok(()));
        let v = vmcb_for(&GuestState::sipi(0x9f));
        assert_eq!(v.save.cs.base, 0x9_f000);
        assert_eq!(v.save.cs.attrib, 0x09b);
        assert_eq!(check_vmcb(&v), Ok(()));
    }

    #[test]
    fn consistency_checks_catch_each_rule() {
        let good = vmcb_for(&GuestState::long_mode(0x20_0000, 0x1000));
        let bad = |f: &dyn Fn(&mut Vmcb), why: &str| {
            let mut v = good.clone();
            f(&mut v);
            match check_vmcb(&v) {
                Err(Error::InvalidVmcb(m)) => assert!(m.contains(why), "{m} vs {why}"),
                other => panic!("{why}: expected InvalidVmcb, got {other:?}"),
            }
        };
        bad(&|v| v.save.efer &= !0x1000, "SVME");
        bad(&|v| v.save.cr0 |= 1 << 29, "CR0.NW");
        bad(&|v| v.save.cr0 |= 1 << 32, "CR0[63:32]");
        bad(&|v| v.save.cr4 &= !0x20, "CR4.PAE");
        bad(&|v| v.save.cs.attrib |= 1 << 10, "CS.L and CS.D");
        bad(&|v| v.control.intercept_misc2 &= !1, "VMRUN");
        bad(&|v| v.control.guest_asid = 0, "ASID");
        bad(&|v| v.save.efer |= 1 << 9, "EFER MBZ");
        bad(&|v| v.save.dr7 |= 1 << 40, "DR7");
        bad(&|v| v.control.event_inj = 0x8000_0130, "EVENTINJ");
        // PAT type 2 and 3 are reserved (APM 7.8.1), as is bit 3 of an entry.
        bad(&|v| v.save.g_pat = 0x0007_0406_0007_0402, "G_PAT");
        bad(&|v| v.save.g_pat = 0x0007_0406_0007_0403, "G_PAT");
        bad(&|v| v.save.g_pat = 0x0007_0406_0007_040e, "G_PAT");
        bad(&|v| v.control.n_cr3 = 1 << 52, "nCR3");
        bad(&|v| v.control.msrpm_base_pa = (1 << 52) - 0x1000, "MSRPM");
        bad(&|v| v.control.iopm_base_pa = (1 << 52) - 0x2000, "IOPM");
        // Without nested paging, G_PAT is not used and not checked.
        let mut v = good.clone();
        v.control.np_enable = 0;
        v.save.g_pat = 0x0007_0406_0007_0402;
        assert_eq!(check_vmcb(&v), Ok(()));
    }

    #[test]
    fn pat_validity() {
        // The reset value (APM 7.8.2): WB, WT, UC-, UC, twice.
        assert!(pat_is_valid(0x0007_0406_0007_0406));
        // Linux's PAT: WB, WC, UC-, UC, WB, WP, UC-, WT.
        assert!(pat_is_valid(0x0407_0500_0007_0106));
        assert!(!pat_is_valid(0x0007_0406_0007_0408));
        assert!(!pat_is_valid(0x0207_0406_0007_0406));
    }
}
