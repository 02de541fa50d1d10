//! Filling a VMCS: controls, guest state, host state. Pure functions over
//! [`VmcsAccess`], tested against [`crate::vmx::FakeVmcs`].

use super::controls::{
    EntryControls, ExitControls, PinControls, ProcControls, SecondaryControls, VmxCaps,
    adjust_controls, control_allowed, cr0, guest_cr0_fixed0,
};
use super::vmcs::{VmcsAccess, VmcsField as F};
use crate::state::{GuestState, Segment};
use crate::{Error, Result};

/// Physical addresses and tags the controls point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxControlsConfig {
    /// I/O bitmap A (4 KiB aligned).
    pub io_bitmap_a: u64,
    /// I/O bitmap B (4 KiB aligned).
    pub io_bitmap_b: u64,
    /// MSR bitmap (4 KiB aligned).
    pub msr_bitmap: u64,
    /// EPT pointer (see [`crate::vmx::eptp`]).
    pub eptp: u64,
    /// VPID to tag this vCPU's TLB entries (non-zero), or `None`.
    pub vpid: Option<u16>,
    /// The guest starts in long mode ("IA-32e mode guest" entry control).
    pub guest_long_mode: bool,
}

/// The control values written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxControlValues {
    /// Pin-based controls.
    pub pin: u32,
    /// Primary processor-based controls.
    pub proc: u32,
    /// Secondary processor-based controls.
    pub proc2: u32,
    /// VM-exit controls.
    pub exit: u32,
    /// VM-entry controls.
    pub entry: u32,
}

fn check_page(addr: u64, what: &'static str) -> Result {
    if addr & 0xfff != 0 || addr == 0 {
        return Err(Error::InvalidArgument(what));
    }
    Ok(())
}

/// Chooses and writes the execution, exit and entry controls.
///
/// Required: external-interrupt and NMI exiting, HLT exiting, I/O and MSR
/// bitmaps, secondary controls with EPT and unrestricted guest, a 64-bit host
/// that acknowledges interrupts on exit, PAT and EFER loaded/saved on both
/// sides. Used when available: RDTSCP, INVPCID, XSAVES (so guests that probe
/// them do not #UD), VPID. With TRUE capability MSRs, CR3-load/store exiting
/// is turned off (EPT makes it useless).
pub fn write_controls(
    vmcs: &mut impl VmcsAccess,
    caps: &VmxCaps,
    cfg: &VmxControlsConfig,
) -> Result<VmxControlValues> {
    check_page(cfg.io_bitmap_a, "I/O bitmap A not page aligned")?;
    check_page(cfg.io_bitmap_b, "I/O bitmap B not page aligned")?;
    check_page(cfg.msr_bitmap, "MSR bitmap not page aligned")?;
    if cfg.vpid == Some(0) {
        return Err(Error::InvalidArgument("VPID 0 is reserved for the host"));
    }

    let pin = adjust_controls(
        caps.pin,
        (PinControls::EXTERNAL_INTERRUPT_EXITING | PinControls::NMI_EXITING).bits(),
        0,
        "pin-based controls",
    )?;
    let proc_clear = if caps.basic.true_controls {
        (ProcControls::CR3_LOAD_EXITING | ProcControls::CR3_STORE_EXITING).bits()
    } else {
        0
    };
    let proc = adjust_controls(
        caps.proc,
        (ProcControls::HLT_EXITING
            | ProcControls::USE_IO_BITMAPS
            | ProcControls::USE_MSR_BITMAPS
            | ProcControls::ACTIVATE_SECONDARY_CONTROLS)
            .bits(),
        proc_clear | ProcControls::UNCOND_IO_EXITING.bits(),
        "primary processor-based controls",
    )?;
    let mut want2 = SecondaryControls::ENABLE_EPT | SecondaryControls::UNRESTRICTED_GUEST;
    for opt in [
        SecondaryControls::ENABLE_RDTSCP,
        SecondaryControls::ENABLE_INVPCID,
        SecondaryControls::ENABLE_XSAVES_XRSTORS,
    ] {
        if control_allowed(caps.proc2, opt.bits().trailing_zeros()) {
            want2 |= opt;
        }
    }
    if cfg.vpid.is_some() {
        want2 |= SecondaryControls::ENABLE_VPID;
    }
    let proc2 = adjust_controls(
        caps.proc2,
        want2.bits(),
        0,
        "secondary processor-based controls",
    )?;
    let exit = adjust_controls(
        caps.exit,
        (ExitControls::HOST_ADDRESS_SPACE_SIZE
            | ExitControls::ACK_INTERRUPT_ON_EXIT
            | ExitControls::SAVE_IA32_PAT
            | ExitControls::LOAD_IA32_PAT
            | ExitControls::SAVE_IA32_EFER
            | ExitControls::LOAD_IA32_EFER)
            .bits(),
        0,
        "VM-exit controls",
    )?;
    let ia32e = EntryControls::IA32E_MODE_GUEST.bits();
    let (entry_set, entry_clear) = if cfg.guest_long_mode {
        (ia32e, 0)
    } else {
        (0, ia32e)
    };
    let entry = adjust_controls(
        caps.entry,
        (EntryControls::LOAD_IA32_PAT | EntryControls::LOAD_IA32_EFER).bits() | entry_set,
        entry_clear,
        "VM-entry controls",
    )?;

    vmcs.write(F::PIN_BASED_VM_EXEC_CONTROL, pin.into())?;
    vmcs.write(F::CPU_BASED_VM_EXEC_CONTROL, proc.into())?;
    vmcs.write(F::SECONDARY_VM_EXEC_CONTROL, proc2.into())?;
    vmcs.write(F::VMEXIT_CONTROLS, exit.into())?;
    vmcs.write(F::VMENTRY_CONTROLS, entry.into())?;
    vmcs.write(F::EXCEPTION_BITMAP, 0)?;
    vmcs.write(F::PAGE_FAULT_ERROR_CODE_MASK, 0)?;
    vmcs.write(F::PAGE_FAULT_ERROR_CODE_MATCH, 0)?;
    vmcs.write(F::CR3_TARGET_COUNT, 0)?;
    vmcs.write(F::VMEXIT_MSR_STORE_COUNT, 0)?;
    vmcs.write(F::VMEXIT_MSR_LOAD_COUNT, 0)?;
    vmcs.write(F::VMENTRY_MSR_LOAD_COUNT, 0)?;
    vmcs.write(F::VMENTRY_INTERRUPTION_INFO, 0)?;
    vmcs.write(F::IO_BITMAP_A, cfg.io_bitmap_a)?;
    vmcs.write(F::IO_BITMAP_B, cfg.io_bitmap_b)?;
    vmcs.write(F::MSR_BITMAP, cfg.msr_bitmap)?;
    vmcs.write(F::EPT_POINTER, cfg.eptp)?;
    vmcs.write(F::TSC_OFFSET, 0)?;
    if let Some(vpid) = cfg.vpid {
        vmcs.write(F::VPID, vpid.into())?;
    }
    Ok(VmxControlValues {
        pin,
        proc,
        proc2,
        exit,
        entry,
    })
}

fn write_segment(vmcs: &mut impl VmcsAccess, fields: [F; 4], seg: &Segment) -> Result {
    vmcs.write(fields[0], seg.selector.into())?;
    vmcs.write(fields[1], seg.base)?;
    vmcs.write(fields[2], seg.limit.into())?;
    vmcs.write(fields[3], seg.access_rights.into())
}

/// The VMCS values of a guest control register: (value loaded, guest/host
/// mask, read shadow). Bits the fixed-bit MSRs force are owned by the host:
/// they are set in the mask so the guest reads its own wish from the shadow
/// and a change causes a CR-access exit.
pub fn guest_cr_values(
    name: &'static str,
    wanted: u64,
    fixed0: u64,
    fixed1: u64,
) -> Result<(u64, u64, u64)> {
    let must_be_zero = wanted & !fixed1;
    if must_be_zero != 0 {
        return Err(Error::FixedBitsViolated {
            register: name,
            value: wanted,
            must_be_one: 0,
            must_be_zero,
        });
    }
    Ok((wanted | fixed0, fixed0 | !fixed1, wanted))
}

/// Writes the guest-state area from `s`. Needs unrestricted guest (set by
/// [`write_controls`]) for guests without paging; `unrestricted` says whether
/// it is on, and without it a guest with CR0.PE or CR0.PG clear is refused.
pub fn write_guest_state(
    vmcs: &mut impl VmcsAccess,
    caps: &VmxCaps,
    unrestricted: bool,
    s: &GuestState,
) -> Result {
    if !unrestricted && s.cr0 & (cr0::PE | cr0::PG) != (cr0::PE | cr0::PG) {
        return Err(Error::Unsupported(
            "guest without paging needs the unrestricted-guest control",
        ));
    }
    if s.cr0 & cr0::PG != 0 && s.cr0 & cr0::PE == 0 {
        return Err(Error::InvalidArgument("CR0.PG set without CR0.PE"));
    }
    let (cr0, cr0_mask, cr0_shadow) = guest_cr_values(
        "CR0",
        s.cr0,
        guest_cr0_fixed0(caps, unrestricted),
        caps.cr0_fixed1,
    )?;
    let (cr4, cr4_mask, cr4_shadow) =
        guest_cr_values("CR4", s.cr4, caps.cr4_fixed0, caps.cr4_fixed1)?;
    vmcs.write(F::GUEST_CR0, cr0)?;
    vmcs.write(F::CR0_GUEST_HOST_MASK, cr0_mask)?;
    vmcs.write(F::CR0_READ_SHADOW, cr0_shadow)?;
    vmcs.write(F::GUEST_CR4, cr4)?;
    vmcs.write(F::CR4_GUEST_HOST_MASK, cr4_mask)?;
    vmcs.write(F::CR4_READ_SHADOW, cr4_shadow)?;
    vmcs.write(F::GUEST_CR3, s.cr3)?;

    let segs = [
        (
            [
                F::GUEST_ES_SELECTOR,
                F::GUEST_ES_BASE,
                F::GUEST_ES_LIMIT,
                F::GUEST_ES_ACCESS_RIGHTS,
            ],
            &s.es,
        ),
        (
            [
                F::GUEST_CS_SELECTOR,
                F::GUEST_CS_BASE,
                F::GUEST_CS_LIMIT,
                F::GUEST_CS_ACCESS_RIGHTS,
            ],
            &s.cs,
        ),
        (
            [
                F::GUEST_SS_SELECTOR,
                F::GUEST_SS_BASE,
                F::GUEST_SS_LIMIT,
                F::GUEST_SS_ACCESS_RIGHTS,
            ],
            &s.ss,
        ),
        (
            [
                F::GUEST_DS_SELECTOR,
                F::GUEST_DS_BASE,
                F::GUEST_DS_LIMIT,
                F::GUEST_DS_ACCESS_RIGHTS,
            ],
            &s.ds,
        ),
        (
            [
                F::GUEST_FS_SELECTOR,
                F::GUEST_FS_BASE,
                F::GUEST_FS_LIMIT,
                F::GUEST_FS_ACCESS_RIGHTS,
            ],
            &s.fs,
        ),
        (
            [
                F::GUEST_GS_SELECTOR,
                F::GUEST_GS_BASE,
                F::GUEST_GS_LIMIT,
                F::GUEST_GS_ACCESS_RIGHTS,
            ],
            &s.gs,
        ),
        (
            [
                F::GUEST_LDTR_SELECTOR,
                F::GUEST_LDTR_BASE,
                F::GUEST_LDTR_LIMIT,
                F::GUEST_LDTR_ACCESS_RIGHTS,
            ],
            &s.ldtr,
        ),
        (
            [
                F::GUEST_TR_SELECTOR,
                F::GUEST_TR_BASE,
                F::GUEST_TR_LIMIT,
                F::GUEST_TR_ACCESS_RIGHTS,
            ],
            &s.tr,
        ),
    ];
    for (fields, seg) in segs {
        write_segment(vmcs, fields, seg)?;
    }
    vmcs.write(F::GUEST_GDTR_BASE, s.gdtr.base)?;
    vmcs.write(F::GUEST_GDTR_LIMIT, s.gdtr.limit.into())?;
    vmcs.write(F::GUEST_IDTR_BASE, s.idtr.base)?;
    vmcs.write(F::GUEST_IDTR_LIMIT, s.idtr.limit.into())?;

    vmcs.write(F::GUEST_RIP, s.rip)?;
    vmcs.write(F::GUEST_RSP, s.rsp)?;
    vmcs.write(F::GUEST_RFLAGS, s.rflags | crate::state::RFLAGS_RESERVED_1)?;
    vmcs.write(F::GUEST_DR7, s.dr7)?;
    vmcs.write(F::GUEST_IA32_EFER, s.efer)?;
    vmcs.write(F::GUEST_IA32_PAT, s.pat)?;
    vmcs.write(F::GUEST_IA32_DEBUGCTL, 0)?;
    vmcs.write(F::GUEST_IA32_SYSENTER_CS, 0)?;
    vmcs.write(F::GUEST_IA32_SYSENTER_ESP, 0)?;
    vmcs.write(F::GUEST_IA32_SYSENTER_EIP, 0)?;
    vmcs.write(F::VMCS_LINK_POINTER, u64::MAX)?;
    vmcs.write(F::GUEST_INTERRUPTIBILITY_STATE, 0)?;
    vmcs.write(F::GUEST_ACTIVITY_STATE, 0)?;
    vmcs.write(F::GUEST_PENDING_DBG_EXCEPTIONS, 0)?;
    for f in [
        F::GUEST_PDPTE0,
        F::GUEST_PDPTE1,
        F::GUEST_PDPTE2,
        F::GUEST_PDPTE3,
    ] {
        vmcs.write(f, 0)?;
    }
    Ok(())
}

/// The host state VM exits return to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostState {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CS selector (non-zero, RPL 0, GDT).
    pub cs: u16,
    /// SS selector.
    pub ss: u16,
    /// DS selector.
    pub ds: u16,
    /// ES selector.
    pub es: u16,
    /// FS selector.
    pub fs: u16,
    /// GS selector.
    pub gs: u16,
    /// TR selector (non-zero).
    pub tr: u16,
    /// FS base.
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
    /// TR base.
    pub tr_base: u64,
    /// GDTR base.
    pub gdtr_base: u64,
    /// IDTR base.
    pub idtr_base: u64,
    /// GDTR limit. Not in the VMCS: VM exits set the limit to 0xFFFF
    /// (SDM 28.5.2), so the entry path loads the GDTR again with it.
    pub gdtr_limit: u16,
    /// IDTR limit, reloaded after exits like [`HostState::gdtr_limit`].
    pub idtr_limit: u16,
    /// IA32_EFER.
    pub efer: u64,
    /// IA32_PAT.
    pub pat: u64,
    /// IA32_SYSENTER_CS.
    pub sysenter_cs: u32,
    /// IA32_SYSENTER_ESP.
    pub sysenter_esp: u64,
    /// IA32_SYSENTER_EIP.
    pub sysenter_eip: u64,
    /// RSP at VM exit. The entry assembly writes the real value just
    /// before each entry (it depends on the call depth).
    pub rsp: u64,
    /// RIP at VM exit (the exit handler entry).
    pub rip: u64,
}

/// The base address in a 16-byte 64-bit system-segment descriptor (TSS or
/// LDT; SDM vol. 3 figure 8-4): bits 15:0 in bits 31:16 of the low
/// quadword, bits 23:16 in bits 39:32, bits 31:24 in bits 63:56, bits 63:32
/// in the low half of the high quadword. VM exits need it as the host TR
/// base, which no instruction reads directly.
pub const fn system_descriptor_base(low: u64, high: u64) -> u64 {
    ((low >> 16) & 0xff_ffff) | (((low >> 56) & 0xff) << 24) | ((high & 0xffff_ffff) << 32)
}

/// Writes the host-state area. Host selectors must have RPL 0 and TI 0 and
/// CS and TR must be non-null (SDM 27.2.3); the base addresses and
/// SYSENTER_ESP/EIP must be canonical (SDM 27.2.2/27.2.3).
pub fn write_host_state(vmcs: &mut impl VmcsAccess, h: &HostState) -> Result {
    let canonical = |a: u64| ((a as i64) << 16 >> 16) as u64 == a;
    for a in [
        h.fs_base,
        h.gs_base,
        h.tr_base,
        h.gdtr_base,
        h.idtr_base,
        h.sysenter_esp,
        h.sysenter_eip,
        h.rip,
    ] {
        if !canonical(a) {
            return Err(Error::InvalidArgument("non-canonical host address"));
        }
    }
    for sel in [h.cs, h.ss, h.ds, h.es, h.fs, h.gs, h.tr] {
        if sel & 7 != 0 {
            return Err(Error::InvalidArgument("host selector with RPL or TI set"));
        }
    }
    if h.cs == 0 || h.tr == 0 {
        return Err(Error::InvalidArgument("host CS and TR must not be null"));
    }
    let w16 = [
        (F::HOST_CS_SELECTOR, h.cs),
        (F::HOST_SS_SELECTOR, h.ss),
        (F::HOST_DS_SELECTOR, h.ds),
        (F::HOST_ES_SELECTOR, h.es),
        (F::HOST_FS_SELECTOR, h.fs),
        (F::HOST_GS_SELECTOR, h.gs),
        (F::HOST_TR_SELECTOR, h.tr),
    ];
    for (f, v) in w16 {
        vmcs.write(f, v.into())?;
    }
    let wn = [
        (F::HOST_CR0, h.cr0),
        (F::HOST_CR3, h.cr3),
        (F::HOST_CR4, h.cr4),
        (F::HOST_FS_BASE, h.fs_base),
        (F::HOST_GS_BASE, h.gs_base),
        (F::HOST_TR_BASE, h.tr_base),
        (F::HOST_GDTR_BASE, h.gdtr_base),
        (F::HOST_IDTR_BASE, h.idtr_base),
        (F::HOST_IA32_EFER, h.efer),
        (F::HOST_IA32_PAT, h.pat),
        (F::HOST_IA32_SYSENTER_ESP, h.sysenter_esp),
        (F::HOST_IA32_SYSENTER_EIP, h.sysenter_eip),
        (F::HOST_IA32_SYSENTER_CS, h.sysenter_cs.into()),
        (F::HOST_RSP, h.rsp),
        (F::HOST_RIP, h.rip),
    ];
    for (f, v) in wn {
        vmcs.write(f, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::controls::tests::skylake_msrs;
    use crate::vmx::vmcs::FakeVmcs;

    fn cfg(long: bool) -> VmxControlsConfig {
        VmxControlsConfig {
            io_bitmap_a: 0x10_0000,
            io_bitmap_b: 0x10_1000,
            msr_bitmap: 0x10_2000,
            eptp: 0x20_001e,
            vpid: Some(1),
            guest_long_mode: long,
        }
    }

    #[test]
    fn controls_on_skylake() {
        let caps = VmxCaps::read(&skylake_msrs());
        let mut v = FakeVmcs::new();
        let c = write_controls(&mut v, &caps, &cfg(false)).unwrap();
        // Pin: must-be-1 0x16 plus ext-int (0) and NMI (3) exiting.
        assert_eq!(c.pin, 0x1f);
        // Primary: HLT(7), IO bitmaps(25), MSR bitmaps(28), secondary(31),
        // plus TRUE must-be-1 0x04006172 minus CR3 load/store (15, 16).
        assert_eq!(
            c.proc,
            (0x0400_6172 | (1 << 7) | (1 << 25) | (1 << 28) | (1 << 31)) & !(3 << 15)
        );
        assert_eq!(
            c.proc & (1 << 24),
            0,
            "unconditional I/O exiting must be off"
        );
        // Secondary: EPT(1), RDTSCP(3), VPID(5), unrestricted(7), INVPCID(12), XSAVES(20).
        assert_eq!(
            c.proc2,
            (1 << 1) | (1 << 3) | (1 << 5) | (1 << 7) | (1 << 12) | (1 << 20)
        );
        // Exit: host 64-bit (9), ack (15), PAT (18, 19), EFER (20, 21) + TRUE default 0x36dfb.
        assert_eq!(c.exit, 0x0003_6dfb | (1 << 9) | (1 << 15) | (0xf << 18));
        // Entry: not IA-32e, load PAT (14) and EFER (15) + default 0x11fb.
        assert_eq!(c.entry, 0x11fb | (1 << 14) | (1 << 15));
        assert_eq!(c.entry & (1 << 9), 0);
        assert_eq!(v.get(F::EPT_POINTER), Some(0x20_001e));
        assert_eq!(v.get(F::IO_BITMAP_B), Some(0x10_1000));
        assert_eq!(v.get(F::VPID), Some(1));
        assert_eq!(v.get(F::CPU_BASED_VM_EXEC_CONTROL), Some(c.proc.into()));

        let c = write_controls(&mut FakeVmcs::new(), &caps, &cfg(true)).unwrap();
        assert_ne!(c.entry & (1 << 9), 0);
    }

    #[test]
    fn controls_fail_without_ept() {
        let mut m = skylake_msrs();
        // Secondary allowed-1 without bit 1 (EPT).
        m.preset(crate::msr::IA32_VMX_PROCBASED_CTLS2, 0x0055_3cfc_0000_0000);
        let caps = VmxCaps::read(&m);
        let e = write_controls(&mut FakeVmcs::new(), &caps, &cfg(false)).unwrap_err();
        assert_eq!(
            e,
            Error::ControlNotSupported {
                control: "secondary processor-based controls",
                bit: 1,
                want_set: true
            }
        );
        let bad = VmxControlsConfig {
            msr_bitmap: 0x10_2010,
            ..cfg(false)
        };
        assert!(write_controls(&mut FakeVmcs::new(), &caps, &bad).is_err());
        let bad = VmxControlsConfig {
            vpid: Some(0),
            ..cfg(false)
        };
        assert!(write_controls(&mut FakeVmcs::new(), &caps, &bad).is_err());
    }

    #[test]
    fn multiboot_guest_state() {
        let caps = VmxCaps::read(&skylake_msrs());
        let mut v = FakeVmcs::new();
        let s = GuestState::multiboot(0x10_0000, 0x9500);
        write_guest_state(&mut v, &caps, true, &s).unwrap();
        // CR0 = PE|ET plus NE forced by CR0_FIXED0 (PG, PE relaxed).
        assert_eq!(v.get(F::GUEST_CR0), Some(0x31));
        assert_eq!(v.get(F::CR0_READ_SHADOW), Some(0x11));
        assert_ne!(v.get(F::CR0_GUEST_HOST_MASK).unwrap() & 0x20, 0);
        assert_eq!(v.get(F::CR0_GUEST_HOST_MASK).unwrap() & 0x8000_0001, 0);
        // CR4: VMXE forced and hidden.
        assert_eq!(v.get(F::GUEST_CR4), Some(0x2000));
        assert_eq!(v.get(F::CR4_READ_SHADOW), Some(0));
        assert_ne!(v.get(F::CR4_GUEST_HOST_MASK).unwrap() & 0x2000, 0);
        assert_eq!(v.get(F::GUEST_CS_SELECTOR), Some(0x08));
        assert_eq!(v.get(F::GUEST_CS_ACCESS_RIGHTS), Some(0xc09b));
        assert_eq!(v.get(F::GUEST_CS_LIMIT), Some(0xffff_ffff));
        assert_eq!(v.get(F::GUEST_SS_ACCESS_RIGHTS), Some(0xc093));
        assert_eq!(v.get(F::GUEST_TR_ACCESS_RIGHTS), Some(0x8b));
        assert_eq!(v.get(F::GUEST_LDTR_ACCESS_RIGHTS), Some(0x1_0000));
        assert_eq!(v.get(F::GUEST_RIP), Some(0x10_0000));
        assert_eq!(v.get(F::GUEST_RFLAGS), Some(0x2));
        assert_eq!(v.get(F::VMCS_LINK_POINTER), Some(u64::MAX));
        assert_eq!(v.get(F::GUEST_IA32_EFER), Some(0));
        // Without unrestricted guest, an unpaged guest is refused.
        assert!(matches!(
            write_guest_state(&mut FakeVmcs::new(), &caps, false, &s),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn long_mode_guest_state() {
        let caps = VmxCaps::read(&skylake_msrs());
        let mut v = FakeVmcs::new();
        let s = GuestState::long_mode(0x20_0000, 0x1000);
        write_guest_state(&mut v, &caps, false, &s).unwrap();
        assert_eq!(v.get(F::GUEST_CR0), Some(0x8001_0033));
        assert_eq!(v.get(F::GUEST_CR4), Some(0x2020));
        assert_eq!(v.get(F::GUEST_CR3), Some(0x1000));
        assert_eq!(v.get(F::GUEST_IA32_EFER), Some(0x500));
        assert_eq!(v.get(F::GUEST_CS_ACCESS_RIGHTS), Some(0xa09b));
        // CR4 bits the processor cannot set are an error, not silently dropped.
        let mut bad = s.clone();
        bad.cr4 |= 1 << 23;
        assert!(matches!(
            write_guest_state(&mut FakeVmcs::new(), &caps, false, &bad),
            Err(Error::FixedBitsViolated {
                register: "CR4",
                ..
            })
        ));
    }

    #[test]
    fn host_state_checks() {
        let h = HostState {
            cs: 0x08,
            ss: 0x10,
            tr: 0x18,
            cr0: 0x8005_0033,
            cr4: 0x2020,
            rip: 0xffff_8000_0010_0000,
            rsp: 0xffff_8000_0020_0000,
            ..Default::default()
        };
        let mut v = FakeVmcs::new();
        write_host_state(&mut v, &h).unwrap();
        assert_eq!(v.get(F::HOST_CS_SELECTOR), Some(8));
        assert_eq!(v.get(F::HOST_TR_SELECTOR), Some(0x18));
        assert_eq!(v.get(F::HOST_RIP), Some(0xffff_8000_0010_0000));
        assert_eq!(v.get(F::HOST_CR4), Some(0x2020));
        assert!(write_host_state(&mut FakeVmcs::new(), &HostState { cs: 0x0b, ..h }).is_err());
        assert!(write_host_state(&mut FakeVmcs::new(), &HostState { tr: 0, ..h }).is_err());
        let bad = HostState {
            gs_base: 0x0000_8000_0000_0000,
            ..h
        };
        assert!(write_host_state(&mut FakeVmcs::new(), &bad).is_err());
        let h = HostState {
            sysenter_cs: 0x10,
            sysenter_esp: 0xffff_8000_0000_2000,
            sysenter_eip: 0xffff_8000_0000_3000,
            gs_base: 0x19b000,
            ..h
        };
        write_host_state(&mut v, &h).unwrap();
        assert_eq!(v.get(F::HOST_IA32_SYSENTER_CS), Some(0x10));
        assert_eq!(
            v.get(F::HOST_IA32_SYSENTER_EIP),
            Some(0xffff_8000_0000_3000)
        );
        assert_eq!(v.get(F::HOST_GS_BASE), Some(0x19b000));
    }

    #[test]
    fn tss_descriptor_base() {
        // A 64-bit TSS at 0xffff_8000_1234_5678, limit 0x67, type 9, present
        // (SDM figure 8-4): low = base[31:24] << 56 | 0x89 << 40 |
        // base[23:16] << 32 | base[15:0] << 16 | limit, high = base[63:32].
        let low = (0x12u64 << 56) | (0x89 << 40) | (0x34 << 32) | (0x5678 << 16) | 0x67;
        let high = 0xffff_8000u64;
        assert_eq!(system_descriptor_base(low, high), 0xffff_8000_1234_5678);
        // hv-app's TSS at 0x1f0080 (no high bits).
        let low = (0x89u64 << 40) | (0x1f << 32) | (0x0080 << 16) | 0x67;
        assert_eq!(system_descriptor_base(low, 0), 0x1f_0080);
    }
}
