//! VMCS fields (Intel SDM vol. 3, Appendix B) and the [`VmcsAccess`] seam.
//!
//! A field encoding carries its own width and type (SDM 25.11.2): bit 0 is
//! the access type (1 = high half of a 64-bit field), bits 11:10 the type
//! (0 control, 1 VM-exit information, 2 guest state, 3 host state), bits
//! 14:13 the width (0 16-bit, 1 64-bit, 2 32-bit, 3 natural width).
//! [`VmcsAccess::write`] refuses a value wider than its field and any write to
//! a read-only field before it reaches the processor.

use alloc::collections::BTreeMap;

use crate::{Error, Result};

/// Width of a VMCS field (encoding bits 14:13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldWidth {
    /// 16 bits.
    W16,
    /// 64 bits.
    W64,
    /// 32 bits.
    W32,
    /// Natural width (64 bits on x86_64).
    Natural,
}

impl FieldWidth {
    /// Number of bits.
    pub const fn bits(self) -> u32 {
        match self {
            Self::W16 => 16,
            Self::W32 => 32,
            Self::W64 | Self::Natural => 64,
        }
    }
}

/// Type of a VMCS field (encoding bits 11:10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// VM-execution, VM-exit or VM-entry control.
    Control,
    /// VM-exit information (read-only).
    ExitInfo,
    /// Guest-state area.
    Guest,
    /// Host-state area.
    Host,
}

/// A VMCS field encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct VmcsField(pub u32);

macro_rules! fields {
    ($($(#[$m:meta])* $name:ident = $val:expr;)*) => {
        impl VmcsField { $($(#[$m])* pub const $name: Self = Self($val);)* }
    };
}

fields! {
    // ---- 16-bit control ----
    /// Virtual-processor identifier.
    VPID = 0x0000;
    /// Posted-interrupt notification vector.
    POSTED_INTR_NV = 0x0002;
    /// EPTP index.
    EPTP_INDEX = 0x0004;
    // ---- 16-bit guest state ----
    /// Guest ES selector.
    GUEST_ES_SELECTOR = 0x0800;
    /// Guest CS selector.
    GUEST_CS_SELECTOR = 0x0802;
    /// Guest SS selector.
    GUEST_SS_SELECTOR = 0x0804;
    /// Guest DS selector.
    GUEST_DS_SELECTOR = 0x0806;
    /// Guest FS selector.
    GUEST_FS_SELECTOR = 0x0808;
    /// Guest GS selector.
    GUEST_GS_SELECTOR = 0x080A;
    /// Guest LDTR selector.
    GUEST_LDTR_SELECTOR = 0x080C;
    /// Guest TR selector.
    GUEST_TR_SELECTOR = 0x080E;
    /// Guest interrupt status.
    GUEST_INTERRUPT_STATUS = 0x0810;
    /// PML index.
    GUEST_PML_INDEX = 0x0812;
    // ---- 16-bit host state ----
    /// Host ES selector.
    HOST_ES_SELECTOR = 0x0C00;
    /// Host CS selector.
    HOST_CS_SELECTOR = 0x0C02;
    /// Host SS selector.
    HOST_SS_SELECTOR = 0x0C04;
    /// Host DS selector.
    HOST_DS_SELECTOR = 0x0C06;
    /// Host FS selector.
    HOST_FS_SELECTOR = 0x0C08;
    /// Host GS selector.
    HOST_GS_SELECTOR = 0x0C0A;
    /// Host TR selector.
    HOST_TR_SELECTOR = 0x0C0C;
    // ---- 64-bit control ----
    /// Address of I/O bitmap A (ports 0x0000-0x7FFF).
    IO_BITMAP_A = 0x2000;
    /// Address of I/O bitmap B (ports 0x8000-0xFFFF).
    IO_BITMAP_B = 0x2002;
    /// Address of the MSR bitmaps.
    MSR_BITMAP = 0x2004;
    /// VM-exit MSR-store address.
    VMEXIT_MSR_STORE_ADDR = 0x2006;
    /// VM-exit MSR-load address.
    VMEXIT_MSR_LOAD_ADDR = 0x2008;
    /// VM-entry MSR-load address.
    VMENTRY_MSR_LOAD_ADDR = 0x200A;
    /// Executive-VMCS pointer.
    EXECUTIVE_VMCS_PTR = 0x200C;
    /// PML address.
    PML_ADDR = 0x200E;
    /// TSC offset.
    TSC_OFFSET = 0x2010;
    /// Virtual-APIC address.
    VIRTUAL_APIC_ADDR = 0x2012;
    /// APIC-access address.
    APIC_ACCESS_ADDR = 0x2014;
    /// Posted-interrupt descriptor address.
    POSTED_INTR_DESC_ADDR = 0x2016;
    /// VM-function controls.
    VM_FUNCTION_CONTROLS = 0x2018;
    /// EPT pointer.
    EPT_POINTER = 0x201A;
    /// EOI-exit bitmap 0.
    EOI_EXIT_BITMAP0 = 0x201C;
    /// EOI-exit bitmap 1.
    EOI_EXIT_BITMAP1 = 0x201E;
    /// EOI-exit bitmap 2.
    EOI_EXIT_BITMAP2 = 0x2020;
    /// EOI-exit bitmap 3.
    EOI_EXIT_BITMAP3 = 0x2022;
    /// EPTP-list address.
    EPTP_LIST_ADDR = 0x2024;
    /// VMREAD-bitmap address.
    VMREAD_BITMAP = 0x2026;
    /// VMWRITE-bitmap address.
    VMWRITE_BITMAP = 0x2028;
    /// Virtualization-exception information address.
    VE_INFO_ADDR = 0x202A;
    /// XSS-exiting bitmap.
    XSS_EXITING_BITMAP = 0x202C;
    /// ENCLS-exiting bitmap.
    ENCLS_EXITING_BITMAP = 0x202E;
    /// TSC multiplier.
    TSC_MULTIPLIER = 0x2032;
    // ---- 64-bit read-only ----
    /// Guest-physical address of an EPT violation/misconfiguration.
    GUEST_PHYSICAL_ADDR = 0x2400;
    // ---- 64-bit guest state ----
    /// VMCS link pointer (must be all ones when unused).
    VMCS_LINK_POINTER = 0x2800;
    /// Guest IA32_DEBUGCTL.
    GUEST_IA32_DEBUGCTL = 0x2802;
    /// Guest IA32_PAT.
    GUEST_IA32_PAT = 0x2804;
    /// Guest IA32_EFER.
    GUEST_IA32_EFER = 0x2806;
    /// Guest IA32_PERF_GLOBAL_CTRL.
    GUEST_IA32_PERF_GLOBAL_CTRL = 0x2808;
    /// Guest PDPTE0.
    GUEST_PDPTE0 = 0x280A;
    /// Guest PDPTE1.
    GUEST_PDPTE1 = 0x280C;
    /// Guest PDPTE2.
    GUEST_PDPTE2 = 0x280E;
    /// Guest PDPTE3.
    GUEST_PDPTE3 = 0x2810;
    /// Guest IA32_BNDCFGS.
    GUEST_IA32_BNDCFGS = 0x2812;
    // ---- 64-bit host state ----
    /// Host IA32_PAT.
    HOST_IA32_PAT = 0x2C00;
    /// Host IA32_EFER.
    HOST_IA32_EFER = 0x2C02;
    /// Host IA32_PERF_GLOBAL_CTRL.
    HOST_IA32_PERF_GLOBAL_CTRL = 0x2C04;
    // ---- 32-bit control ----
    /// Pin-based VM-execution controls.
    PIN_BASED_VM_EXEC_CONTROL = 0x4000;
    /// Primary processor-based VM-execution controls.
    CPU_BASED_VM_EXEC_CONTROL = 0x4002;
    /// Exception bitmap.
    EXCEPTION_BITMAP = 0x4004;
    /// Page-fault error-code mask.
    PAGE_FAULT_ERROR_CODE_MASK = 0x4006;
    /// Page-fault error-code match.
    PAGE_FAULT_ERROR_CODE_MATCH = 0x4008;
    /// CR3-target count.
    CR3_TARGET_COUNT = 0x400A;
    /// Primary VM-exit controls.
    VMEXIT_CONTROLS = 0x400C;
    /// VM-exit MSR-store count.
    VMEXIT_MSR_STORE_COUNT = 0x400E;
    /// VM-exit MSR-load count.
    VMEXIT_MSR_LOAD_COUNT = 0x4010;
    /// VM-entry controls.
    VMENTRY_CONTROLS = 0x4012;
    /// VM-entry MSR-load count.
    VMENTRY_MSR_LOAD_COUNT = 0x4014;
    /// VM-entry interruption-information field.
    VMENTRY_INTERRUPTION_INFO = 0x4016;
    /// VM-entry exception error code.
    VMENTRY_EXCEPTION_ERROR_CODE = 0x4018;
    /// VM-entry instruction length.
    VMENTRY_INSTRUCTION_LEN = 0x401A;
    /// TPR threshold.
    TPR_THRESHOLD = 0x401C;
    /// Secondary processor-based VM-execution controls.
    SECONDARY_VM_EXEC_CONTROL = 0x401E;
    /// PLE gap.
    PLE_GAP = 0x4020;
    /// PLE window.
    PLE_WINDOW = 0x4022;
    // ---- 32-bit read-only ----
    /// VM-instruction error.
    VM_INSTRUCTION_ERROR = 0x4400;
    /// Exit reason.
    VM_EXIT_REASON = 0x4402;
    /// VM-exit interruption information.
    VMEXIT_INTERRUPTION_INFO = 0x4404;
    /// VM-exit interruption error code.
    VMEXIT_INTERRUPTION_ERROR_CODE = 0x4406;
    /// IDT-vectoring information.
    IDT_VECTORING_INFO = 0x4408;
    /// IDT-vectoring error code.
    IDT_VECTORING_ERROR_CODE = 0x440A;
    /// VM-exit instruction length.
    VMEXIT_INSTRUCTION_LEN = 0x440C;
    /// VM-exit instruction information.
    VMEXIT_INSTRUCTION_INFO = 0x440E;
    // ---- 32-bit guest state ----
    /// Guest ES limit.
    GUEST_ES_LIMIT = 0x4800;
    /// Guest CS limit.
    GUEST_CS_LIMIT = 0x4802;
    /// Guest SS limit.
    GUEST_SS_LIMIT = 0x4804;
    /// Guest DS limit.
    GUEST_DS_LIMIT = 0x4806;
    /// Guest FS limit.
    GUEST_FS_LIMIT = 0x4808;
    /// Guest GS limit.
    GUEST_GS_LIMIT = 0x480A;
    /// Guest LDTR limit.
    GUEST_LDTR_LIMIT = 0x480C;
    /// Guest TR limit.
    GUEST_TR_LIMIT = 0x480E;
    /// Guest GDTR limit.
    GUEST_GDTR_LIMIT = 0x4810;
    /// Guest IDTR limit.
    GUEST_IDTR_LIMIT = 0x4812;
    /// Guest ES access rights.
    GUEST_ES_ACCESS_RIGHTS = 0x4814;
    /// Guest CS access rights.
    GUEST_CS_ACCESS_RIGHTS = 0x4816;
    /// Guest SS access rights.
    GUEST_SS_ACCESS_RIGHTS = 0x4818;
    /// Guest DS access rights.
    GUEST_DS_ACCESS_RIGHTS = 0x481A;
    /// Guest FS access rights.
    GUEST_FS_ACCESS_RIGHTS = 0x481C;
    /// Guest GS access rights.
    GUEST_GS_ACCESS_RIGHTS = 0x481E;
    /// Guest LDTR access rights.
    GUEST_LDTR_ACCESS_RIGHTS = 0x4820;
    /// Guest TR access rights.
    GUEST_TR_ACCESS_RIGHTS = 0x4822;
    /// Guest interruptibility state.
    GUEST_INTERRUPTIBILITY_STATE = 0x4824;
    /// Guest activity state.
    GUEST_ACTIVITY_STATE = 0x4826;
    /// Guest SMBASE.
    GUEST_SMBASE = 0x4828;
    /// Guest IA32_SYSENTER_CS.
    GUEST_IA32_SYSENTER_CS = 0x482A;
    /// VMX-preemption timer value.
    VMX_PREEMPTION_TIMER_VALUE = 0x482E;
    // ---- 32-bit host state ----
    /// Host IA32_SYSENTER_CS.
    HOST_IA32_SYSENTER_CS = 0x4C00;
    // ---- natural-width control ----
    /// CR0 guest/host mask.
    CR0_GUEST_HOST_MASK = 0x6000;
    /// CR4 guest/host mask.
    CR4_GUEST_HOST_MASK = 0x6002;
    /// CR0 read shadow.
    CR0_READ_SHADOW = 0x6004;
    /// CR4 read shadow.
    CR4_READ_SHADOW = 0x6006;
    /// CR3-target value 0.
    CR3_TARGET_VALUE0 = 0x6008;
    // ---- natural-width read-only ----
    /// Exit qualification.
    EXIT_QUALIFICATION = 0x6400;
    /// I/O RCX.
    IO_RCX = 0x6402;
    /// I/O RSI.
    IO_RSI = 0x6404;
    /// I/O RDI.
    IO_RDI = 0x6406;
    /// I/O RIP.
    IO_RIP = 0x6408;
    /// Guest-linear address.
    GUEST_LINEAR_ADDR = 0x640A;
    // ---- natural-width guest state ----
    /// Guest CR0.
    GUEST_CR0 = 0x6800;
    /// Guest CR3.
    GUEST_CR3 = 0x6802;
    /// Guest CR4.
    GUEST_CR4 = 0x6804;
    /// Guest ES base.
    GUEST_ES_BASE = 0x6806;
    /// Guest CS base.
    GUEST_CS_BASE = 0x6808;
    /// Guest SS base.
    GUEST_SS_BASE = 0x680A;
    /// Guest DS base.
    GUEST_DS_BASE = 0x680C;
    /// Guest FS base.
    GUEST_FS_BASE = 0x680E;
    /// Guest GS base.
    GUEST_GS_BASE = 0x6810;
    /// Guest LDTR base.
    GUEST_LDTR_BASE = 0x6812;
    /// Guest TR base.
    GUEST_TR_BASE = 0x6814;
    /// Guest GDTR base.
    GUEST_GDTR_BASE = 0x6816;
    /// Guest IDTR base.
    GUEST_IDTR_BASE = 0x6818;
    /// Guest DR7.
    GUEST_DR7 = 0x681A;
    /// Guest RSP.
    GUEST_RSP = 0x681C;
    /// Guest RIP.
    GUEST_RIP = 0x681E;
    /// Guest RFLAGS.
    GUEST_RFLAGS = 0x6820;
    /// Guest pending debug exceptions.
    GUEST_PENDING_DBG_EXCEPTIONS = 0x6822;
    /// Guest IA32_SYSENTER_ESP.
    GUEST_IA32_SYSENTER_ESP = 0x6824;
    /// Guest IA32_SYSENTER_EIP.
    GUEST_IA32_SYSENTER_EIP = 0x6826;
    // ---- natural-width host state ----
    /// Host CR0.
    HOST_CR0 = 0x6C00;
    /// Host CR3.
    HOST_CR3 = 0x6C02;
    /// Host CR4.
    HOST_CR4 = 0x6C04;
    /// Host FS base.
    HOST_FS_BASE = 0x6C06;
    /// Host GS base.
    HOST_GS_BASE = 0x6C08;
    /// Host TR base.
    HOST_TR_BASE = 0x6C0A;
    /// Host GDTR base.
    HOST_GDTR_BASE = 0x6C0C;
    /// Host IDTR base.
    HOST_IDTR_BASE = 0x6C0E;
    /// Host IA32_SYSENTER_ESP.
    HOST_IA32_SYSENTER_ESP = 0x6C10;
    /// Host IA32_SYSENTER_EIP.
    HOST_IA32_SYSENTER_EIP = 0x6C12;
    /// Host RSP.
    HOST_RSP = 0x6C14;
    /// Host RIP.
    HOST_RIP = 0x6C16;
}

impl VmcsField {
    /// The field's width (encoding bits 14:13). The high half of a 64-bit
    /// field (access type bit 0 = 1) is 32 bits wide.
    pub const fn width(self) -> FieldWidth {
        if self.0 & 1 != 0 && (self.0 >> 13) & 3 == 1 {
            return FieldWidth::W32;
        }
        match (self.0 >> 13) & 3 {
            0 => FieldWidth::W16,
            1 => FieldWidth::W64,
            2 => FieldWidth::W32,
            _ => FieldWidth::Natural,
        }
    }

    /// The field's type (encoding bits 11:10).
    pub const fn field_type(self) -> FieldType {
        match (self.0 >> 10) & 3 {
            0 => FieldType::Control,
            1 => FieldType::ExitInfo,
            2 => FieldType::Guest,
            _ => FieldType::Host,
        }
    }

    /// VM-exit information fields are read-only.
    pub const fn is_read_only(self) -> bool {
        matches!(self.field_type(), FieldType::ExitInfo)
    }

    /// Checks that `value` may be written to this field: not read-only, and
    /// no bits above the field's width.
    pub fn check_write(self, value: u64) -> Result {
        if self.is_read_only() {
            return Err(Error::VmcsReadOnly(self.0));
        }
        let bits = self.width().bits();
        if bits < 64 && value >> bits != 0 {
            return Err(Error::VmcsValueTooWide {
                field: self.0,
                bits,
                value,
            });
        }
        Ok(())
    }
}

/// Reads and writes the current VMCS: `vmread`/`vmwrite` on the machine,
/// a map in tests. Implementors provide the raw operations; callers use the
/// checked [`VmcsAccess::read`]/[`VmcsAccess::write`].
pub trait VmcsAccess {
    /// VMREAD of `field` without checks.
    fn read_raw(&self, field: VmcsField) -> Result<u64>;
    /// VMWRITE of `value` to `field` without checks.
    fn write_raw(&mut self, field: VmcsField, value: u64) -> Result;

    /// Reads `field`.
    fn read(&self, field: VmcsField) -> Result<u64> {
        self.read_raw(field)
    }

    /// Writes `value` to `field` after [`VmcsField::check_write`].
    fn write(&mut self, field: VmcsField, value: u64) -> Result {
        field.check_write(value)?;
        self.write_raw(field, value)
    }
}

/// A VMCS kept in a map, for tests: unwritten fields read as
/// [`Error::VmFailValid`] 12 (unsupported component), as VMREAD would report
/// for an unknown encoding. [`FakeVmcs::set_exit_info`] fills read-only fields.
#[derive(Debug, Default, Clone)]
pub struct FakeVmcs {
    fields: BTreeMap<u32, u64>,
}

impl FakeVmcs {
    /// An empty VMCS.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a read-only field (as the processor would on a VM exit).
    pub fn set_exit_info(&mut self, field: VmcsField, value: u64) {
        self.fields.insert(field.0, value);
    }

    /// The value of `field`, or `None` if never written.
    pub fn get(&self, field: VmcsField) -> Option<u64> {
        self.fields.get(&field.0).copied()
    }

    /// Number of fields written.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// No field written.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

impl VmcsAccess for FakeVmcs {
    fn read_raw(&self, field: VmcsField) -> Result<u64> {
        self.get(field).ok_or(Error::VmFailValid(12))
    }

    fn write_raw(&mut self, field: VmcsField, value: u64) -> Result {
        self.fields.insert(field.0, value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_from_appendix_b() {
        assert_eq!(VmcsField::GUEST_RIP.0, 0x681E);
        assert_eq!(VmcsField::VM_EXIT_REASON.0, 0x4402);
        assert_eq!(VmcsField::EPT_POINTER.0, 0x201A);
        assert_eq!(VmcsField::PIN_BASED_VM_EXEC_CONTROL.0, 0x4000);
        assert_eq!(VmcsField::CPU_BASED_VM_EXEC_CONTROL.0, 0x4002);
        assert_eq!(VmcsField::SECONDARY_VM_EXEC_CONTROL.0, 0x401E);
        assert_eq!(VmcsField::EXIT_QUALIFICATION.0, 0x6400);
        assert_eq!(VmcsField::VM_INSTRUCTION_ERROR.0, 0x4400);
        assert_eq!(VmcsField::IO_BITMAP_A.0, 0x2000);
        assert_eq!(VmcsField::MSR_BITMAP.0, 0x2004);
        assert_eq!(VmcsField::GUEST_CR0.0, 0x6800);
        assert_eq!(VmcsField::HOST_RIP.0, 0x6C16);
        assert_eq!(VmcsField::VMCS_LINK_POINTER.0, 0x2800);
        assert_eq!(VmcsField::GUEST_INTERRUPTIBILITY_STATE.0, 0x4824);
    }

    #[test]
    fn width_and_type_decoding() {
        use FieldType::*;
        use FieldWidth::*;
        let cases = [
            (VmcsField::VPID, W16, Control),
            (VmcsField::GUEST_CS_SELECTOR, W16, Guest),
            (VmcsField::HOST_TR_SELECTOR, W16, Host),
            (VmcsField::EPT_POINTER, W64, Control),
            (VmcsField::GUEST_PHYSICAL_ADDR, W64, ExitInfo),
            (VmcsField::GUEST_IA32_EFER, W64, Guest),
            (VmcsField::HOST_IA32_EFER, W64, Host),
            (VmcsField::PIN_BASED_VM_EXEC_CONTROL, W32, Control),
            (VmcsField::VM_EXIT_REASON, W32, ExitInfo),
            (VmcsField::GUEST_CS_ACCESS_RIGHTS, W32, Guest),
            (VmcsField::HOST_IA32_SYSENTER_CS, W32, Host),
            (VmcsField::CR0_READ_SHADOW, Natural, Control),
            (VmcsField::EXIT_QUALIFICATION, Natural, ExitInfo),
            (VmcsField::GUEST_RIP, Natural, Guest),
            (VmcsField::HOST_RSP, Natural, Host),
        ];
        for (f, w, t) in cases {
            assert_eq!((f.width(), f.field_type()), (w, t), "field {:#x}", f.0);
        }
        // The "high" access of EPT_POINTER (0x201B) is a 32-bit access.
        assert_eq!(VmcsField(0x201B).width(), W32);
    }

    #[test]
    fn checked_writes() {
        let mut v = FakeVmcs::new();
        // 64-bit value into a 16-bit field: refused, nothing written.
        assert_eq!(
            v.write(VmcsField::GUEST_CS_SELECTOR, 0x1_0008),
            Err(Error::VmcsValueTooWide {
                field: 0x802,
                bits: 16,
                value: 0x1_0008
            })
        );
        assert!(v.is_empty());
        assert!(v.write(VmcsField::GUEST_CS_SELECTOR, 0xffff).is_ok());
        assert!(matches!(
            v.write(VmcsField::PIN_BASED_VM_EXEC_CONTROL, 1 << 32),
            Err(Error::VmcsValueTooWide { bits: 32, .. })
        ));
        assert!(
            v.write(VmcsField::PIN_BASED_VM_EXEC_CONTROL, 0xffff_ffff)
                .is_ok()
        );
        assert!(v.write(VmcsField::GUEST_RIP, u64::MAX).is_ok());
        assert_eq!(
            v.write(VmcsField::VM_EXIT_REASON, 1),
            Err(Error::VmcsReadOnly(0x4402))
        );
        assert_eq!(
            v.write(VmcsField::EXIT_QUALIFICATION, 1),
            Err(Error::VmcsReadOnly(0x6400))
        );
        assert_eq!(v.read(VmcsField::GUEST_RIP), Ok(u64::MAX));
        assert_eq!(v.read(VmcsField::GUEST_CR3), Err(Error::VmFailValid(12)));
        v.set_exit_info(VmcsField::VM_EXIT_REASON, 30);
        assert_eq!(v.read(VmcsField::VM_EXIT_REASON), Ok(30));
    }
}
