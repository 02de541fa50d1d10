//! Model-specific registers: numbers, bits, and the [`MsrAccess`] seam.
//!
//! `rdmsr`/`wrmsr` only work at CPL 0, so all logic in this crate reaches them
//! through [`MsrAccess`]. [`HwMsr`] is the real implementation; [`FakeMsrs`]
//! is an in-memory one for tests (here and in other crates).

use alloc::collections::BTreeMap;

/// `IA32_TIME_STAMP_COUNTER`.
pub const IA32_TSC: u32 = 0x10;
/// `IA32_APIC_BASE`.
pub const IA32_APIC_BASE: u32 = 0x1B;
/// `IA32_FEATURE_CONTROL` (Intel): lock and VMX enable bits.
pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
/// `IA32_MTRRCAP`.
pub const IA32_MTRRCAP: u32 = 0xFE;
/// `IA32_SYSENTER_CS`.
pub const IA32_SYSENTER_CS: u32 = 0x174;
/// `IA32_SYSENTER_ESP`.
pub const IA32_SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`.
pub const IA32_SYSENTER_EIP: u32 = 0x176;
/// `IA32_MISC_ENABLE`.
pub const IA32_MISC_ENABLE: u32 = 0x1A0;
/// `IA32_DEBUGCTL`.
pub const IA32_DEBUGCTL: u32 = 0x1D9;
/// `IA32_PAT`.
pub const IA32_PAT: u32 = 0x277;
/// `IA32_MTRR_DEF_TYPE`.
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2FF;
/// `IA32_VMX_BASIC`: VMCS revision, region size, memory type, TRUE controls.
pub const IA32_VMX_BASIC: u32 = 0x480;
/// `IA32_VMX_PINBASED_CTLS`.
pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
/// `IA32_VMX_PROCBASED_CTLS`.
pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
/// `IA32_VMX_EXIT_CTLS`.
pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
/// `IA32_VMX_ENTRY_CTLS`.
pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
/// `IA32_VMX_MISC`.
pub const IA32_VMX_MISC: u32 = 0x485;
/// `IA32_VMX_CR0_FIXED0`: CR0 bits that must be 1 in VMX operation.
pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
/// `IA32_VMX_CR0_FIXED1`: CR0 bits that may be 1 in VMX operation.
pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
/// `IA32_VMX_CR4_FIXED0`: CR4 bits that must be 1 in VMX operation.
pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
/// `IA32_VMX_CR4_FIXED1`: CR4 bits that may be 1 in VMX operation.
pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
/// `IA32_VMX_VMCS_ENUM`.
pub const IA32_VMX_VMCS_ENUM: u32 = 0x48A;
/// `IA32_VMX_PROCBASED_CTLS2` (exists only if PROCBASED_CTLS bit 63 is set).
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48B;
/// `IA32_VMX_EPT_VPID_CAP`.
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48C;
/// `IA32_VMX_TRUE_PINBASED_CTLS` (used when `IA32_VMX_BASIC` bit 55 is set).
pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48D;
/// `IA32_VMX_TRUE_PROCBASED_CTLS`.
pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48E;
/// `IA32_VMX_TRUE_EXIT_CTLS`.
pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48F;
/// `IA32_VMX_TRUE_ENTRY_CTLS`.
pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
/// `IA32_VMX_VMFUNC`.
pub const IA32_VMX_VMFUNC: u32 = 0x491;
/// `IA32_TSC_DEADLINE`.
pub const IA32_TSC_DEADLINE: u32 = 0x6E0;
/// First x2APIC MSR (`0x800`); the range ends at `0x8FF`.
pub const X2APIC_MSR_BASE: u32 = 0x800;
/// Last x2APIC MSR.
pub const X2APIC_MSR_LAST: u32 = 0x8FF;
/// `IA32_XSS`.
pub const IA32_XSS: u32 = 0xDA0;
/// `IA32_EFER`.
pub const IA32_EFER: u32 = 0xC000_0080;
/// `IA32_STAR`.
pub const IA32_STAR: u32 = 0xC000_0081;
/// `IA32_LSTAR`.
pub const IA32_LSTAR: u32 = 0xC000_0082;
/// `IA32_CSTAR`.
pub const IA32_CSTAR: u32 = 0xC000_0083;
/// `IA32_FMASK` (SFMASK on AMD).
pub const IA32_FMASK: u32 = 0xC000_0084;
/// `IA32_FS_BASE`.
pub const IA32_FS_BASE: u32 = 0xC000_0100;
/// `IA32_GS_BASE`.
pub const IA32_GS_BASE: u32 = 0xC000_0101;
/// `IA32_KERNEL_GS_BASE`.
pub const IA32_KERNEL_GS_BASE: u32 = 0xC000_0102;
/// `IA32_TSC_AUX`.
pub const IA32_TSC_AUX: u32 = 0xC000_0103;
/// AMD `VM_CR`: SVM lock and disable bits.
pub const AMD_VM_CR: u32 = 0xC001_0114;
/// AMD `VM_HSAVE_PA`: physical address of the host save area used by VMRUN.
pub const AMD_VM_HSAVE_PA: u32 = 0xC001_0117;

/// `IA32_EFER` bits.
pub mod efer {
    /// System-call extensions (SYSCALL/SYSRET).
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable.
    pub const NXE: u64 = 1 << 11;
    /// Secure virtual machine enable (AMD).
    pub const SVME: u64 = 1 << 12;
}

/// AMD `VM_CR` bits (APM vol. 2, 15.30.1).
pub mod vm_cr {
    /// Debug port disable.
    pub const DPD: u64 = 1 << 0;
    /// INIT redirected to #SX.
    pub const R_INIT: u64 = 1 << 1;
    /// A20M disabled.
    pub const DIS_A20M: u64 = 1 << 2;
    /// SVMDIS is read-only (locked).
    pub const LOCK: u64 = 1 << 3;
    /// SVM disabled: EFER.SVME cannot be set.
    pub const SVMDIS: u64 = 1 << 4;
}

/// Reads and writes MSRs. Implemented by [`HwMsr`] on the machine and by
/// [`FakeMsrs`] in tests.
pub trait MsrAccess {
    /// Reads MSR `msr`.
    fn read(&self, msr: u32) -> u64;
    /// Writes `value` to MSR `msr`.
    fn write(&mut self, msr: u32, value: u64);
}

/// The real MSRs of the current processor, via `rdmsr`/`wrmsr`.
#[derive(Debug)]
pub struct HwMsr {
    _private: (),
}

impl HwMsr {
    /// A handle to the current processor's MSRs.
    ///
    /// # Safety
    ///
    /// The caller runs at CPL 0, and only accesses MSRs that exist on this
    /// processor with values it accepts (otherwise `rdmsr`/`wrmsr` raise #GP).
    /// Writing MSRs can change the machine's behaviour arbitrarily.
    pub unsafe fn new() -> Self {
        Self { _private: () }
    }
}

#[cfg(target_arch = "x86_64")]
impl MsrAccess for HwMsr {
    fn read(&self, msr: u32) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: `HwMsr::new`'s contract: CPL 0 and an existing MSR.
        unsafe {
            core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi,
                options(nomem, nostack, preserves_flags));
        }
        (u64::from(hi) << 32) | u64::from(lo)
    }

    fn write(&mut self, msr: u32, value: u64) {
        // SAFETY: `HwMsr::new`'s contract: CPL 0, an existing MSR, and a value
        // the caller has decided is correct.
        unsafe {
            core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32,
                in("edx") (value >> 32) as u32, options(nostack, preserves_flags));
        }
    }
}

/// An in-memory set of MSRs for tests. Unset MSRs read as 0; every write is
/// also appended to [`FakeMsrs::writes`].
#[derive(Debug, Default, Clone)]
pub struct FakeMsrs {
    values: BTreeMap<u32, u64>,
    /// Every `(msr, value)` written through [`MsrAccess::write`], in order.
    pub writes: alloc::vec::Vec<(u32, u64)>,
}

impl FakeMsrs {
    /// An empty set (every MSR reads 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder: `msr` reads as `value`.
    pub fn with(mut self, msr: u32, value: u64) -> Self {
        self.values.insert(msr, value);
        self
    }

    /// Sets `msr` without recording a write.
    pub fn preset(&mut self, msr: u32, value: u64) {
        self.values.insert(msr, value);
    }
}

impl MsrAccess for FakeMsrs {
    fn read(&self, msr: u32) -> u64 {
        self.values.get(&msr).copied().unwrap_or(0)
    }

    fn write(&mut self, msr: u32, value: u64) {
        self.values.insert(msr, value);
        self.writes.push((msr, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_msrs_record_writes() {
        let mut m = FakeMsrs::new().with(IA32_VMX_BASIC, 0x00da_0400_0000_0004);
        assert_eq!(m.read(IA32_VMX_BASIC), 0x00da_0400_0000_0004);
        assert_eq!(m.read(IA32_EFER), 0);
        m.write(IA32_EFER, efer::SVME | efer::LME);
        assert_eq!(m.read(IA32_EFER), 0x1100);
        assert_eq!(m.writes, [(0xC000_0080, 0x1100)]);
    }

    #[test]
    fn msr_numbers_match_sdm() {
        // Intel SDM vol. 4 table 2-2 / AMD APM vol. 2 15.30.
        assert_eq!(IA32_VMX_TRUE_ENTRY_CTLS, 0x490);
        assert_eq!(IA32_VMX_CR4_FIXED1, 0x489);
        assert_eq!(AMD_VM_HSAVE_PA, 0xC001_0117);
        assert_eq!(efer::SVME, 0x1000);
        assert_eq!(efer::LMA | efer::LME, 0x500);
    }
}
