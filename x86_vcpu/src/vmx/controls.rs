//! VMX capability MSRs and the controls they allow (Intel SDM vol. 3,
//! Appendix A), control-register fixed bits, and `IA32_FEATURE_CONTROL`.

use bitflags::bitflags;

use crate::msr::{self, MsrAccess};
use crate::{Error, Result};

bitflags! {
    /// Pin-based VM-execution controls (SDM 25.6.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PinControls: u32 {
        /// External interrupts cause VM exits.
        const EXTERNAL_INTERRUPT_EXITING = 1 << 0;
        /// NMIs cause VM exits.
        const NMI_EXITING = 1 << 3;
        /// Virtual NMIs.
        const VIRTUAL_NMIS = 1 << 5;
        /// VMX-preemption timer.
        const PREEMPTION_TIMER = 1 << 6;
        /// Posted interrupts.
        const POSTED_INTERRUPTS = 1 << 7;
    }
}

bitflags! {
    /// Primary processor-based VM-execution controls (SDM 25.6.2).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ProcControls: u32 {
        /// Exit at the start of any instruction when RFLAGS.IF = 1 and nothing blocks interrupts.
        const INTERRUPT_WINDOW_EXITING = 1 << 2;
        /// TSC offsetting.
        const USE_TSC_OFFSETTING = 1 << 3;
        /// HLT exits.
        const HLT_EXITING = 1 << 7;
        /// INVLPG exits.
        const INVLPG_EXITING = 1 << 9;
        /// MWAIT exits.
        const MWAIT_EXITING = 1 << 10;
        /// RDPMC exits.
        const RDPMC_EXITING = 1 << 11;
        /// RDTSC exits.
        const RDTSC_EXITING = 1 << 12;
        /// MOV to CR3 exits.
        const CR3_LOAD_EXITING = 1 << 15;
        /// MOV from CR3 exits.
        const CR3_STORE_EXITING = 1 << 16;
        /// Tertiary controls active.
        const ACTIVATE_TERTIARY_CONTROLS = 1 << 17;
        /// MOV to CR8 exits.
        const CR8_LOAD_EXITING = 1 << 19;
        /// MOV from CR8 exits.
        const CR8_STORE_EXITING = 1 << 20;
        /// TPR shadow.
        const USE_TPR_SHADOW = 1 << 21;
        /// NMI-window exiting.
        const NMI_WINDOW_EXITING = 1 << 22;
        /// MOV DR exits.
        const MOV_DR_EXITING = 1 << 23;
        /// Every I/O instruction exits.
        const UNCOND_IO_EXITING = 1 << 24;
        /// I/O bitmaps decide.
        const USE_IO_BITMAPS = 1 << 25;
        /// Monitor trap flag.
        const MONITOR_TRAP_FLAG = 1 << 27;
        /// MSR bitmaps decide.
        const USE_MSR_BITMAPS = 1 << 28;
        /// MONITOR exits.
        const MONITOR_EXITING = 1 << 29;
        /// PAUSE exits.
        const PAUSE_EXITING = 1 << 30;
        /// Secondary controls active.
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags! {
    /// Secondary processor-based VM-execution controls (SDM 25.6.2).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SecondaryControls: u32 {
        /// Virtualize APIC accesses.
        const VIRTUALIZE_APIC = 1 << 0;
        /// EPT.
        const ENABLE_EPT = 1 << 1;
        /// Descriptor-table exiting.
        const DESC_TABLE_EXITING = 1 << 2;
        /// RDTSCP does not #UD.
        const ENABLE_RDTSCP = 1 << 3;
        /// Virtualize x2APIC mode.
        const VIRTUALIZE_X2APIC = 1 << 4;
        /// VPID.
        const ENABLE_VPID = 1 << 5;
        /// WBINVD exits.
        const WBINVD_EXITING = 1 << 6;
        /// Unrestricted guest: real mode and unpaged protected mode under EPT.
        const UNRESTRICTED_GUEST = 1 << 7;
        /// APIC-register virtualization.
        const APIC_REGISTER_VIRT = 1 << 8;
        /// Virtual-interrupt delivery.
        const VIRTUAL_INTR_DELIVERY = 1 << 9;
        /// PAUSE-loop exiting.
        const PAUSE_LOOP_EXITING = 1 << 10;
        /// RDRAND exits.
        const RDRAND_EXITING = 1 << 11;
        /// INVPCID does not #UD.
        const ENABLE_INVPCID = 1 << 12;
        /// VM functions.
        const ENABLE_VM_FUNCTIONS = 1 << 13;
        /// VMCS shadowing.
        const VMCS_SHADOWING = 1 << 14;
        /// ENCLS exiting.
        const ENCLS_EXITING = 1 << 15;
        /// RDSEED exits.
        const RDSEED_EXITING = 1 << 16;
        /// Page-modification logging.
        const ENABLE_PML = 1 << 17;
        /// EPT violations may cause #VE.
        const EPT_VIOLATION_VE = 1 << 18;
        /// Conceal VMX from Intel PT.
        const CONCEAL_VMX_FROM_PT = 1 << 19;
        /// XSAVES/XRSTORS do not #UD.
        const ENABLE_XSAVES_XRSTORS = 1 << 20;
        /// Mode-based execute control for EPT.
        const MODE_BASED_EPT_EXEC = 1 << 22;
        /// Sub-page write permissions.
        const SUB_PAGE_WRITE_PERMISSIONS = 1 << 23;
        /// Intel PT uses guest physical addresses.
        const PT_USES_GPA = 1 << 24;
        /// TSC scaling.
        const USE_TSC_SCALING = 1 << 25;
        /// UMWAIT/TPAUSE do not #UD.
        const ENABLE_USER_WAIT_PAUSE = 1 << 26;
    }
}

bitflags! {
    /// Primary VM-exit controls (SDM 25.7.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ExitControls: u32 {
        /// Save DR7 and IA32_DEBUGCTL.
        const SAVE_DEBUG_CONTROLS = 1 << 2;
        /// Host is in 64-bit mode after the exit.
        const HOST_ADDRESS_SPACE_SIZE = 1 << 9;
        /// Load IA32_PERF_GLOBAL_CTRL.
        const LOAD_PERF_GLOBAL_CTRL = 1 << 12;
        /// Acknowledge the external interrupt on exit (vector in exit info).
        const ACK_INTERRUPT_ON_EXIT = 1 << 15;
        /// Save guest IA32_PAT.
        const SAVE_IA32_PAT = 1 << 18;
        /// Load host IA32_PAT.
        const LOAD_IA32_PAT = 1 << 19;
        /// Save guest IA32_EFER.
        const SAVE_IA32_EFER = 1 << 20;
        /// Load host IA32_EFER.
        const LOAD_IA32_EFER = 1 << 21;
        /// Save the VMX-preemption timer value.
        const SAVE_PREEMPTION_TIMER = 1 << 22;
    }
}

bitflags! {
    /// VM-entry controls (SDM 25.8.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct EntryControls: u32 {
        /// Load DR7 and IA32_DEBUGCTL.
        const LOAD_DEBUG_CONTROLS = 1 << 2;
        /// The guest is in IA-32e mode after entry.
        const IA32E_MODE_GUEST = 1 << 9;
        /// Entry to SMM.
        const ENTRY_TO_SMM = 1 << 10;
        /// Deactivate dual-monitor treatment.
        const DEACTIVATE_DUAL_MONITOR = 1 << 11;
        /// Load IA32_PERF_GLOBAL_CTRL.
        const LOAD_PERF_GLOBAL_CTRL = 1 << 13;
        /// Load guest IA32_PAT.
        const LOAD_IA32_PAT = 1 << 14;
        /// Load guest IA32_EFER.
        const LOAD_IA32_EFER = 1 << 15;
    }
}

/// Computes a VMX control value from its capability MSR (SDM A.3-A.5):
/// bits 31:0 of the MSR are the allowed 0-settings (a 1 there means the
/// control must be 1), bits 63:32 the allowed 1-settings (a 0 there means the
/// control must be 0). Bits in neither `want_set` nor `want_clear` take the
/// default the processor forces (1 if must-be-1, else 0).
///
/// A bit in `want_set` the processor cannot set, or in `want_clear` it cannot
/// clear, is an [`Error::ControlNotSupported`] naming `name` and the bit.
pub fn adjust_controls(
    cap_msr_value: u64,
    want_set: u32,
    want_clear: u32,
    name: &'static str,
) -> Result<u32> {
    if want_set & want_clear != 0 {
        return Err(Error::InvalidArgument(
            "a control bit is both wanted set and wanted clear",
        ));
    }
    let must_be_one = cap_msr_value as u32;
    let may_be_one = (cap_msr_value >> 32) as u32;
    let cannot_set = want_set & !may_be_one;
    if cannot_set != 0 {
        return Err(Error::ControlNotSupported {
            control: name,
            bit: cannot_set.trailing_zeros(),
            want_set: true,
        });
    }
    let cannot_clear = want_clear & must_be_one;
    if cannot_clear != 0 {
        return Err(Error::ControlNotSupported {
            control: name,
            bit: cannot_clear.trailing_zeros(),
            want_set: false,
        });
    }
    Ok((must_be_one | want_set) & may_be_one)
}

/// Whether a control can be set to 1 according to its capability MSR value.
pub const fn control_allowed(cap_msr_value: u64, bit: u32) -> bool {
    (cap_msr_value >> 32) & (1 << bit) != 0
}

/// `IA32_VMX_BASIC` decoded (SDM A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxBasic {
    /// VMCS revision identifier (bits 30:0), written at the start of the
    /// VMXON region and of every VMCS.
    pub revision_id: u32,
    /// Bytes to allocate for the VMXON region and a VMCS (bits 44:32, at most 4096).
    pub region_size: u16,
    /// Physical addresses of VMX structures limited to 32 bits (bit 48).
    pub phys_addr_32bit: bool,
    /// Memory type the processor uses for VMX structures (bits 53:50; 6 = WB).
    pub mem_type: u8,
    /// INS/OUTS exits report instruction information (bit 54).
    pub io_exit_info: bool,
    /// The TRUE capability MSRs 0x48D-0x490 exist (bit 55).
    pub true_controls: bool,
}

impl VmxBasic {
    /// Memory type write-back.
    pub const MEM_TYPE_WB: u8 = 6;

    /// Decodes the MSR value.
    pub const fn from_raw(v: u64) -> Self {
        Self {
            revision_id: (v & 0x7fff_ffff) as u32,
            region_size: ((v >> 32) & 0x1fff) as u16,
            phys_addr_32bit: v & (1 << 48) != 0,
            mem_type: ((v >> 50) & 0xf) as u8,
            io_exit_info: v & (1 << 54) != 0,
            true_controls: v & (1 << 55) != 0,
        }
    }

    /// Checks what this crate relies on: WB structures, a region that fits
    /// one 4 KiB page, 64-bit physical addresses.
    pub fn validate(&self) -> Result {
        if self.region_size == 0 || self.region_size > 4096 {
            return Err(Error::Unsupported(
                "VMX region size is not within one 4 KiB page",
            ));
        }
        if self.mem_type != Self::MEM_TYPE_WB {
            return Err(Error::Unsupported(
                "VMX structures are not write-back memory",
            ));
        }
        if self.phys_addr_32bit {
            return Err(Error::Unsupported(
                "VMX limited to 32-bit physical addresses",
            ));
        }
        Ok(())
    }
}

/// The VMX capability MSR values of one processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxCaps {
    /// `IA32_VMX_BASIC`.
    pub basic: VmxBasic,
    /// Pin-based controls capability (TRUE MSR if available).
    pub pin: u64,
    /// Primary processor-based controls capability (TRUE MSR if available).
    pub proc: u64,
    /// Secondary controls capability, 0 if the processor has none.
    pub proc2: u64,
    /// Exit controls capability (TRUE MSR if available).
    pub exit: u64,
    /// Entry controls capability (TRUE MSR if available).
    pub entry: u64,
    /// `IA32_VMX_EPT_VPID_CAP`, 0 if neither EPT nor VPID can be enabled.
    pub ept_vpid: u64,
    /// `IA32_VMX_CR0_FIXED0`.
    pub cr0_fixed0: u64,
    /// `IA32_VMX_CR0_FIXED1`.
    pub cr0_fixed1: u64,
    /// `IA32_VMX_CR4_FIXED0`.
    pub cr4_fixed0: u64,
    /// `IA32_VMX_CR4_FIXED1`.
    pub cr4_fixed1: u64,
}

impl VmxCaps {
    /// Reads all capability MSRs, choosing the TRUE variants when
    /// `IA32_VMX_BASIC` bit 55 says they exist, and reading
    /// `IA32_VMX_PROCBASED_CTLS2` only if primary bit 31 may be 1 (MSR bit 63)
    /// and `IA32_VMX_EPT_VPID_CAP` only if EPT or VPID may be enabled.
    pub fn read(msrs: &impl MsrAccess) -> Self {
        let basic = VmxBasic::from_raw(msrs.read(msr::IA32_VMX_BASIC));
        let pick = |plain, true_msr| msrs.read(if basic.true_controls { true_msr } else { plain });
        let proc = pick(
            msr::IA32_VMX_PROCBASED_CTLS,
            msr::IA32_VMX_TRUE_PROCBASED_CTLS,
        );
        let proc2 = if control_allowed(proc, 31) {
            msrs.read(msr::IA32_VMX_PROCBASED_CTLS2)
        } else {
            0
        };
        let ept_vpid = if control_allowed(proc2, 1) || control_allowed(proc2, 5) {
            msrs.read(msr::IA32_VMX_EPT_VPID_CAP)
        } else {
            0
        };
        Self {
            basic,
            pin: pick(
                msr::IA32_VMX_PINBASED_CTLS,
                msr::IA32_VMX_TRUE_PINBASED_CTLS,
            ),
            proc,
            proc2,
            exit: pick(msr::IA32_VMX_EXIT_CTLS, msr::IA32_VMX_TRUE_EXIT_CTLS),
            entry: pick(msr::IA32_VMX_ENTRY_CTLS, msr::IA32_VMX_TRUE_ENTRY_CTLS),
            ept_vpid,
            cr0_fixed0: msrs.read(msr::IA32_VMX_CR0_FIXED0),
            cr0_fixed1: msrs.read(msr::IA32_VMX_CR0_FIXED1),
            cr4_fixed0: msrs.read(msr::IA32_VMX_CR4_FIXED0),
            cr4_fixed1: msrs.read(msr::IA32_VMX_CR4_FIXED1),
        }
    }

    /// `IA32_VMX_EPT_VPID_CAP` bit 6: 4-level EPT page walks.
    pub const fn ept_4level(&self) -> bool {
        self.ept_vpid & (1 << 6) != 0
    }

    /// `IA32_VMX_EPT_VPID_CAP` bit 14: EPT structures may be write-back.
    pub const fn ept_wb(&self) -> bool {
        self.ept_vpid & (1 << 14) != 0
    }

    /// `IA32_VMX_EPT_VPID_CAP` bit 21: EPT accessed/dirty flags.
    pub const fn ept_ad(&self) -> bool {
        self.ept_vpid & (1 << 21) != 0
    }

    /// `IA32_VMX_EPT_VPID_CAP` bit 20: INVEPT.
    pub const fn invept(&self) -> bool {
        self.ept_vpid & (1 << 20) != 0
    }

    /// `IA32_VMX_EPT_VPID_CAP` bit 25: single-context INVEPT (type 1).
    pub const fn invept_single_context(&self) -> bool {
        self.invept() && self.ept_vpid & (1 << 25) != 0
    }

    /// `IA32_VMX_EPT_VPID_CAP` bit 26: all-context INVEPT (type 2).
    pub const fn invept_all_context(&self) -> bool {
        self.invept() && self.ept_vpid & (1 << 26) != 0
    }

    /// `IA32_VMX_EPT_VPID_CAP` bit 32: INVVPID.
    pub const fn invvpid(&self) -> bool {
        self.ept_vpid & (1 << 32) != 0
    }

    /// `IA32_VMX_EPT_VPID_CAP` bit 41: single-context INVVPID (type 1).
    pub const fn invvpid_single_context(&self) -> bool {
        self.invvpid() && self.ept_vpid & (1 << 41) != 0
    }

    /// `IA32_VMX_EPT_VPID_CAP` bit 42: all-context INVVPID (type 2).
    pub const fn invvpid_all_context(&self) -> bool {
        self.invvpid() && self.ept_vpid & (1 << 42) != 0
    }
}

/// CR0 bits.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u64 = 1 << 1;
    /// Extension type (hard-wired 1 on modern processors).
    pub const ET: u64 = 1 << 4;
    /// Numeric error.
    pub const NE: u64 = 1 << 5;
    /// Write protect.
    pub const WP: u64 = 1 << 16;
    /// Not write-through.
    pub const NW: u64 = 1 << 29;
    /// Cache disable.
    pub const CD: u64 = 1 << 30;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits.
pub mod cr4 {
    /// Physical address extension.
    pub const PAE: u64 = 1 << 5;
    /// Page global enable.
    pub const PGE: u64 = 1 << 7;
    /// OS supports FXSAVE.
    pub const OSFXSR: u64 = 1 << 9;
    /// OS supports unmasked SIMD exceptions.
    pub const OSXMMEXCPT: u64 = 1 << 10;
    /// VMX enable.
    pub const VMXE: u64 = 1 << 13;
    /// OS supports XSAVE.
    pub const OSXSAVE: u64 = 1 << 18;
}

/// `value` with the bits forced by a pair of fixed-bit MSRs: bits 1 in
/// `fixed0` set, bits 0 in `fixed1` cleared (SDM A.7, A.8).
pub const fn adjust_cr(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    (value | fixed0) & fixed1
}

/// Checks `value` of control register `name` against its fixed-bit MSRs.
pub fn check_cr(name: &'static str, value: u64, fixed0: u64, fixed1: u64) -> Result {
    let must_be_one = fixed0 & !value;
    let must_be_zero = value & !fixed1;
    if must_be_one != 0 || must_be_zero != 0 {
        return Err(Error::FixedBitsViolated {
            register: name,
            value,
            must_be_one,
            must_be_zero,
        });
    }
    Ok(())
}

/// The CR0 value to run VMXON with: `cr0` with CR0.NE set when
/// `IA32_VMX_CR0_FIXED0` demands it (firmware and boot loaders often leave
/// it clear; setting it only selects native x87 error reporting). Any other
/// fixed-bit violation (PE or PG clear, a must-be-0 bit set) cannot be
/// repaired here and is returned as [`Error::FixedBitsViolated`].
pub fn cr0_for_vmxon(cr0_value: u64, fixed0: u64, fixed1: u64) -> Result<u64> {
    let value = cr0_value | (fixed0 & cr0::NE);
    check_cr("CR0", value, fixed0, fixed1)?;
    Ok(value)
}

/// The CR0 bits a *guest* must keep 1: `IA32_VMX_CR0_FIXED0`, minus PE and PG
/// when the unrestricted-guest control is used (SDM 26.3.1.1).
pub const fn guest_cr0_fixed0(caps: &VmxCaps, unrestricted_guest: bool) -> u64 {
    if unrestricted_guest {
        caps.cr0_fixed0 & !(cr0::PE | cr0::PG)
    } else {
        caps.cr0_fixed0
    }
}

/// `IA32_FEATURE_CONTROL` bits.
pub mod feature_control {
    /// Lock: the MSR cannot be written until reset.
    pub const LOCK: u64 = 1 << 0;
    /// VMXON allowed inside SMX operation.
    pub const VMX_INSIDE_SMX: u64 = 1 << 1;
    /// VMXON allowed outside SMX operation.
    pub const VMX_OUTSIDE_SMX: u64 = 1 << 2;
}

/// What to do with `IA32_FEATURE_CONTROL` before VMXON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureControlAction {
    /// Locked with VMX outside SMX on: nothing to write.
    AlreadyEnabled,
    /// Unlocked: write this value (enable VMX outside SMX, then lock).
    Write(u64),
}

/// Decides from the current `IA32_FEATURE_CONTROL` value (SDM 24.7): locked
/// with bit 2 clear is fatal ([`Error::VmxDisabledByFirmware`]); locked with
/// bit 2 set needs nothing; unlocked is enabled and locked by us.
pub fn feature_control_action(value: u64) -> Result<FeatureControlAction> {
    use feature_control::*;
    match (value & LOCK != 0, value & VMX_OUTSIDE_SMX != 0) {
        (true, true) => Ok(FeatureControlAction::AlreadyEnabled),
        (true, false) => Err(Error::VmxDisabledByFirmware(value)),
        (false, _) => Ok(FeatureControlAction::Write(value | VMX_OUTSIDE_SMX | LOCK)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::msr::FakeMsrs;

    /// Capability MSR values shaped like a Skylake-class processor's (TRUE
    /// controls, secondary controls without APIC virtualization, 4-level EPT).
    pub(crate) fn skylake_msrs() -> FakeMsrs {
        FakeMsrs::new()
            // rev 4, region 0x400 bytes, WB (6 << 50), INS/OUTS info, TRUE ctls.
            .with(msr::IA32_VMX_BASIC, 0x00da_0400_0000_0004)
            .with(msr::IA32_VMX_PINBASED_CTLS, 0x0000_007f_0000_0016)
            .with(msr::IA32_VMX_TRUE_PINBASED_CTLS, 0x0000_007f_0000_0016)
            .with(msr::IA32_VMX_PROCBASED_CTLS, 0xfff9_fffe_0401_e172)
            .with(msr::IA32_VMX_TRUE_PROCBASED_CTLS, 0xfff9_fffe_0400_6172)
            .with(msr::IA32_VMX_EXIT_CTLS, 0x01ff_ffff_0003_6dff)
            .with(msr::IA32_VMX_TRUE_EXIT_CTLS, 0x01ff_ffff_0003_6dfb)
            .with(msr::IA32_VMX_ENTRY_CTLS, 0x0003_ffff_0000_11ff)
            .with(msr::IA32_VMX_TRUE_ENTRY_CTLS, 0x0003_ffff_0000_11fb)
            .with(msr::IA32_VMX_PROCBASED_CTLS2, 0x0055_3cfe_0000_0000)
            .with(msr::IA32_VMX_EPT_VPID_CAP, 0x0000_0f01_0673_4141)
            .with(msr::IA32_VMX_CR0_FIXED0, 0x8000_0021)
            .with(msr::IA32_VMX_CR0_FIXED1, 0xffff_ffff)
            .with(msr::IA32_VMX_CR4_FIXED0, 0x2000)
            .with(msr::IA32_VMX_CR4_FIXED1, 0x0037_67ff)
    }

    #[test]
    fn adjust_keeps_must_be_one_and_adds_wanted() {
        // Pin-based: must-be-1 = 0x16 (bits 1, 2, 4), may-be-1 = 0x7f.
        let v = adjust_controls(
            0x0000_007f_0000_0016,
            PinControls::NMI_EXITING.bits(),
            0,
            "pin-based",
        )
        .unwrap();
        assert_eq!(v, 0x16 | 0x08);
        // HLT exiting and I/O bitmaps on a TRUE procbased MSR.
        let want = (ProcControls::HLT_EXITING | ProcControls::USE_IO_BITMAPS).bits();
        let v = adjust_controls(0xfff9_fffe_0400_6172, want, 0, "primary").unwrap();
        assert_eq!(v, 0x0400_6172 | (1 << 7) | (1 << 25));
        assert_ne!(v & (1 << 7), 0);
    }

    #[test]
    fn adjust_refuses_what_the_cpu_cannot_do() {
        // Secondary may-be-1 = 0x0055_3cfe... bit 0 of high half clear ->
        // VIRTUALIZE_APIC (bit 0) unsupported.
        let e = adjust_controls(
            0x0055_3cfe_0000_0000,
            SecondaryControls::VIRTUALIZE_APIC.bits(),
            0,
            "secondary",
        );
        assert_eq!(
            e,
            Err(Error::ControlNotSupported {
                control: "secondary",
                bit: 0,
                want_set: true
            })
        );
        // Must-be-1 bit 1 of pin-based (0x16) cannot be cleared.
        let e = adjust_controls(0x0000_007f_0000_0016, 0, 1 << 1, "pin-based");
        assert_eq!(
            e,
            Err(Error::ControlNotSupported {
                control: "pin-based",
                bit: 1,
                want_set: false
            })
        );
        assert!(matches!(
            adjust_controls(u64::MAX, 1, 1, "x"),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(
            alloc::format!("{}", e.unwrap_err()),
            "pin-based: bit 1 cannot be cleared"
        );
    }

    #[test]
    fn caps_use_true_msrs_when_basic_bit55_set() {
        let c = VmxCaps::read(&skylake_msrs());
        assert_eq!(c.basic.revision_id, 4);
        assert_eq!(c.basic.region_size, 0x400);
        assert_eq!(c.basic.mem_type, 6);
        assert!(c.basic.true_controls);
        assert!(c.basic.validate().is_ok());
        // TRUE procbased allows clearing CR3 load/store exiting (bits 15,16).
        assert_eq!(c.proc as u32, 0x0400_6172);
        assert_eq!(c.exit as u32, 0x0003_6dfb);
        assert_eq!(c.proc2, 0x0055_3cfe_0000_0000);
        assert!(c.ept_4level() && c.ept_wb() && c.ept_ad() && c.invept());
        // EPT_VPID_CAP 0x0000_0f01_0673_4141: bits 25, 26 (INVEPT single,
        // all), 32 (INVVPID), 41, 42 (INVVPID single, all).
        assert!(c.invept_single_context() && c.invept_all_context());
        assert!(c.invvpid() && c.invvpid_single_context() && c.invvpid_all_context());

        // Without bit 55 the plain MSRs are used.
        let mut m = skylake_msrs();
        m.preset(msr::IA32_VMX_BASIC, 0x005a_0400_0000_0004);
        let c = VmxCaps::read(&m);
        assert!(!c.basic.true_controls);
        assert_eq!(c.proc as u32, 0x0401_e172);

        // No secondary controls (bit 63 clear): PROCBASED_CTLS2 is not read.
        m.preset(msr::IA32_VMX_PROCBASED_CTLS, 0x7ff9_fffe_0401_e172);
        let c = VmxCaps::read(&m);
        assert_eq!((c.proc2, c.ept_vpid), (0, 0));
    }

    #[test]
    fn basic_validation() {
        assert!(
            VmxBasic::from_raw(0x0000_1000_0000_0001)
                .validate()
                .is_err()
        ); // UC
        assert!(
            VmxBasic::from_raw(0x0019_1000_0000_0001)
                .validate()
                .is_err()
        ); // 32-bit addr
        assert!(
            VmxBasic::from_raw(0x0018_1001_0000_0001)
                .validate()
                .is_err()
        ); // > 4096
        assert!(VmxBasic::from_raw(0x0018_1000_0000_0001).validate().is_ok());
    }

    #[test]
    fn cr_fixed_bits() {
        // CR0 fixed0 0x80000021 (PG, NE, PE), fixed1 0xffffffff.
        assert_eq!(adjust_cr(0x11, 0x8000_0021, 0xffff_ffff), 0x8000_0031);
        assert_eq!(
            check_cr("CR0", 0x11, 0x8000_0021, 0xffff_ffff),
            Err(Error::FixedBitsViolated {
                register: "CR0",
                value: 0x11,
                must_be_one: 0x8000_0020,
                must_be_zero: 0
            })
        );
        // CR4: VMXE required, bits above fixed1 0x3767ff refused.
        assert_eq!(adjust_cr(0x20, 0x2000, 0x0037_67ff), 0x2020);
        let e = check_cr("CR4", 0x2020 | (1 << 23), 0x2000, 0x0037_67ff).unwrap_err();
        assert!(matches!(
            e,
            Error::FixedBitsViolated {
                must_be_zero: 0x80_0000,
                must_be_one: 0,
                ..
            }
        ));
        assert!(check_cr("CR4", 0x2020, 0x2000, 0x0037_67ff).is_ok());
        // Unrestricted guest drops PE and PG from the guest's must-be-1 set.
        let caps = VmxCaps::read(&skylake_msrs());
        assert_eq!(guest_cr0_fixed0(&caps, true), 0x20);
        assert_eq!(guest_cr0_fixed0(&caps, false), 0x8000_0021);
    }

    #[test]
    fn cr0_for_vmxon_sets_ne_only() {
        // GRUB under Bochs leaves CR0 = 0xe0010011 (PG, CD, NW, WP, ET, PE):
        // NE is added, CD and NW stay (CR0_FIXED1 allows them).
        assert_eq!(
            cr0_for_vmxon(0xe001_0011, 0x8000_0021, 0xffff_ffff),
            Ok(0xe001_0031)
        );
        assert_eq!(
            cr0_for_vmxon(0x8005_0033, 0x8000_0021, 0xffff_ffff),
            Ok(0x8005_0033)
        );
        // Paging off cannot be repaired: PG is reported, NE already added.
        assert_eq!(
            cr0_for_vmxon(0x11, 0x8000_0021, 0xffff_ffff),
            Err(Error::FixedBitsViolated {
                register: "CR0",
                value: 0x31,
                must_be_one: 0x8000_0000,
                must_be_zero: 0
            })
        );
        // A must-be-0 bit (here CD, if FIXED1 forbade it) is refused.
        assert!(matches!(
            cr0_for_vmxon(0xc000_0031, 0x8000_0021, 0xbfff_ffff),
            Err(Error::FixedBitsViolated {
                must_be_zero: 0x4000_0000,
                ..
            })
        ));
    }

    #[test]
    fn feature_control_decisions() {
        assert_eq!(
            feature_control_action(0x5),
            Ok(FeatureControlAction::AlreadyEnabled)
        );
        assert_eq!(
            feature_control_action(0x1),
            Err(Error::VmxDisabledByFirmware(1))
        );
        assert_eq!(
            feature_control_action(0x3),
            Err(Error::VmxDisabledByFirmware(3))
        );
        assert_eq!(
            feature_control_action(0x0),
            Ok(FeatureControlAction::Write(0x5))
        );
        assert_eq!(
            feature_control_action(0x2),
            Ok(FeatureControlAction::Write(0x7))
        );
    }
}
