//! VM-exit information: exit reasons (SDM Appendix C), exit qualifications
//! (SDM 28.2.1), and VM-instruction error numbers (SDM 31.4).

use axaddrspace::{AccessWidth, MappingFlags};

use crate::{Error, Result};

macro_rules! numbered_enum {
    ($(#[$m:meta])* $vis:vis enum $name:ident : $ty:ty { $($(#[$vm:meta])* $var:ident = $val:expr,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($ty)]
        $vis enum $name { $($(#[$vm])* $var = $val,)* }
        impl $name {
            /// The variant with number `n`, if it is known.
            pub const fn from_raw(n: $ty) -> Option<Self> {
                match n { $($val => Some(Self::$var),)* _ => None }
            }
        }
    };
}

numbered_enum! {
    /// Basic VM-exit reasons (Intel SDM vol. 3, Appendix C).
    pub enum VmxExitReason: u16 {
        /// Exception or non-maskable interrupt.
        ExceptionNmi = 0,
        /// External interrupt.
        ExternalInterrupt = 1,
        /// Triple fault.
        TripleFault = 2,
        /// INIT signal.
        Init = 3,
        /// Start-up IPI.
        Sipi = 4,
        /// I/O system-management interrupt.
        IoSmi = 5,
        /// Other SMI.
        OtherSmi = 6,
        /// Interrupt window: the guest can now take an interrupt.
        InterruptWindow = 7,
        /// NMI window.
        NmiWindow = 8,
        /// Task switch.
        TaskSwitch = 9,
        /// CPUID.
        Cpuid = 10,
        /// GETSEC.
        Getsec = 11,
        /// HLT.
        Hlt = 12,
        /// INVD.
        Invd = 13,
        /// INVLPG.
        Invlpg = 14,
        /// RDPMC.
        Rdpmc = 15,
        /// RDTSC.
        Rdtsc = 16,
        /// RSM.
        Rsm = 17,
        /// VMCALL.
        Vmcall = 18,
        /// VMCLEAR.
        Vmclear = 19,
        /// VMLAUNCH.
        Vmlaunch = 20,
        /// VMPTRLD.
        Vmptrld = 21,
        /// VMPTRST.
        Vmptrst = 22,
        /// VMREAD.
        Vmread = 23,
        /// VMRESUME.
        Vmresume = 24,
        /// VMWRITE.
        Vmwrite = 25,
        /// VMXOFF.
        Vmxoff = 26,
        /// VMXON.
        Vmxon = 27,
        /// Control-register access.
        CrAccess = 28,
        /// MOV DR.
        DrAccess = 29,
        /// I/O instruction.
        IoInstruction = 30,
        /// RDMSR.
        Rdmsr = 31,
        /// WRMSR.
        Wrmsr = 32,
        /// VM-entry failure due to invalid guest state.
        EntryFailInvalidGuestState = 33,
        /// VM-entry failure due to MSR loading.
        EntryFailMsrLoading = 34,
        /// MWAIT.
        Mwait = 36,
        /// Monitor trap flag.
        MonitorTrapFlag = 37,
        /// MONITOR.
        Monitor = 39,
        /// PAUSE.
        Pause = 40,
        /// VM-entry failure due to machine-check event.
        EntryFailMachineCheck = 41,
        /// TPR below threshold.
        TprBelowThreshold = 43,
        /// APIC access.
        ApicAccess = 44,
        /// Virtualized EOI.
        VirtualizedEoi = 45,
        /// Access to GDTR or IDTR.
        GdtrIdtrAccess = 46,
        /// Access to LDTR or TR.
        LdtrTrAccess = 47,
        /// EPT violation.
        EptViolation = 48,
        /// EPT misconfiguration.
        EptMisconfig = 49,
        /// INVEPT.
        Invept = 50,
        /// RDTSCP.
        Rdtscp = 51,
        /// VMX-preemption timer expired.
        PreemptionTimer = 52,
        /// INVVPID.
        Invvpid = 53,
        /// WBINVD or WBNOINVD.
        Wbinvd = 54,
        /// XSETBV.
        Xsetbv = 55,
        /// APIC write.
        ApicWrite = 56,
        /// RDRAND.
        Rdrand = 57,
        /// INVPCID.
        Invpcid = 58,
        /// VMFUNC.
        Vmfunc = 59,
        /// ENCLS.
        Encls = 60,
        /// RDSEED.
        Rdseed = 61,
        /// Page-modification log full.
        PmlFull = 62,
        /// XSAVES.
        Xsaves = 63,
        /// XRSTORS.
        Xrstors = 64,
        /// SPP-related event.
        SppEvent = 66,
        /// UMWAIT.
        Umwait = 67,
        /// TPAUSE.
        Tpause = 68,
        /// LOADIWKEY.
        Loadiwkey = 69,
    }
}

/// The 32-bit VM-exit reason field (VMCS 0x4402), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReasonField {
    /// Bits 15:0, the basic exit reason.
    pub basic: u16,
    /// Bit 31: the exit happened because VM entry failed.
    pub entry_failure: bool,
    /// Bit 29: the exit came from VMX root operation (SMM dual monitor).
    pub from_root: bool,
    /// Bit 28: a monitor-trap-flag exit was pending.
    pub pending_mtf: bool,
}

impl ExitReasonField {
    /// Decodes the raw field.
    pub const fn from_raw(raw: u32) -> Self {
        Self {
            basic: raw as u16,
            entry_failure: raw & (1 << 31) != 0,
            from_root: raw & (1 << 29) != 0,
            pending_mtf: raw & (1 << 28) != 0,
        }
    }

    /// The basic reason as an enum, or [`Error::UnknownExit`].
    pub fn reason(&self) -> Result<VmxExitReason> {
        VmxExitReason::from_raw(self.basic).ok_or(Error::UnknownExit(u64::from(self.basic)))
    }
}

/// A VM entry that failed while or after loading the guest state: the
/// processor reports it as a VM exit with bit 31 of the exit reason set
/// (SDM 27.8) and the cause in the exit qualification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryFailure {
    /// The raw exit reason field (bit 31 set).
    pub raw_reason: u32,
    /// The exit qualification.
    pub qualification: u64,
}

impl EntryFailure {
    /// The failure in words: the basic reason (33 invalid guest state,
    /// 34 MSR loading, 41 machine-check event) refined by the qualification
    /// (SDM 27.8: for reason 33, 2 = loading the PDPTEs, 3 = NMI injection
    /// while blocked by STI, 4 = invalid VMCS link pointer; for reason 34
    /// the 1-based index of the failing MSR-load entry).
    pub fn description(&self) -> &'static str {
        match (
            ExitReasonField::from_raw(self.raw_reason).basic,
            self.qualification,
        ) {
            (33, 2) => "invalid guest state: loading the PDPTEs failed",
            (33, 3) => "invalid guest state: NMI injection while blocked by STI",
            (33, 4) => "invalid guest state: invalid VMCS link pointer",
            (33, _) => "invalid guest state (SDM 27.3 guest-state checks)",
            (34, _) => "MSR loading failed (the qualification is the entry index)",
            (41, _) => "machine-check event during VM entry",
            _ => "unknown VM-entry failure",
        }
    }
}

impl core::fmt::Display for EntryFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "VM-entry failure, exit reason {:#x}, qualification {:#x}: {}",
            self.raw_reason,
            self.qualification,
            self.description()
        )
    }
}

/// Exit qualification of an I/O instruction exit (SDM table 28-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoQualification {
    /// Port number (bits 31:16).
    pub port: u16,
    /// Access width (bits 2:0: 0 = 1 byte, 1 = 2 bytes, 3 = 4 bytes).
    pub width: AccessWidth,
    /// IN (bit 3 = 1) rather than OUT.
    pub is_in: bool,
    /// INS/OUTS (bit 4).
    pub is_string: bool,
    /// REP prefix (bit 5).
    pub is_rep: bool,
    /// Port given as an immediate (bit 6) rather than in DX.
    pub is_immediate: bool,
}

impl IoQualification {
    /// Decodes the qualification.
    pub fn from_raw(q: u64) -> Result<Self> {
        let width = match q & 0x7 {
            0 => AccessWidth::Byte,
            1 => AccessWidth::Word,
            3 => AccessWidth::Dword,
            _ => return Err(Error::InvalidArgument("I/O exit qualification: bad size")),
        };
        Ok(Self {
            port: (q >> 16) as u16,
            width,
            is_in: q & (1 << 3) != 0,
            is_string: q & (1 << 4) != 0,
            is_rep: q & (1 << 5) != 0,
            is_immediate: q & (1 << 6) != 0,
        })
    }
}

/// The access type of a control-register exit (bits 5:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrAccessType {
    /// MOV to CR from general-purpose register `gpr`.
    MovToCr {
        /// Source register index (0 = RAX ... 15 = R15).
        gpr: usize,
    },
    /// MOV from CR to general-purpose register `gpr`.
    MovFromCr {
        /// Destination register index.
        gpr: usize,
    },
    /// CLTS.
    Clts,
    /// LMSW with the 16-bit source value.
    Lmsw {
        /// The LMSW operand (bits 31:16).
        source: u16,
        /// Operand was in memory (bit 6) rather than a register.
        memory_operand: bool,
    },
}

/// Exit qualification of a control-register access (SDM table 28-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrQualification {
    /// The control register number (bits 3:0): 0, 3, 4 or 8.
    pub cr: u8,
    /// What the instruction did.
    pub access: CrAccessType,
}

impl CrQualification {
    /// Decodes the qualification.
    pub const fn from_raw(q: u64) -> Self {
        let gpr = ((q >> 8) & 0xf) as usize;
        let access = match (q >> 4) & 3 {
            0 => CrAccessType::MovToCr { gpr },
            1 => CrAccessType::MovFromCr { gpr },
            2 => CrAccessType::Clts,
            _ => CrAccessType::Lmsw {
                source: (q >> 16) as u16,
                memory_operand: q & (1 << 6) != 0,
            },
        };
        Self {
            cr: (q & 0xf) as u8,
            access,
        }
    }
}

/// Exit qualification of an EPT violation (SDM table 28-7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EptViolationQualification {
    /// The access that faulted: READ (bit 0), WRITE (bit 1), EXECUTE (bit 2).
    pub access: MappingFlags,
    /// What the EPT entry allowed: readable (bit 3), writable (4), executable (5).
    pub allowed: MappingFlags,
    /// The guest linear address field is valid (bit 7).
    pub linear_valid: bool,
    /// The access was to the final translated address (bit 8, valid when
    /// bit 7 is set), not to a guest paging structure.
    pub final_translation: bool,
}

impl EptViolationQualification {
    /// Decodes the qualification.
    pub fn from_raw(q: u64) -> Self {
        let flags = |r: u64, w: u64, x: u64| {
            let mut f = MappingFlags::empty();
            if q & r != 0 {
                f |= MappingFlags::READ;
            }
            if q & w != 0 {
                f |= MappingFlags::WRITE;
            }
            if q & x != 0 {
                f |= MappingFlags::EXECUTE;
            }
            f
        };
        Self {
            access: flags(1 << 0, 1 << 1, 1 << 2),
            allowed: flags(1 << 3, 1 << 4, 1 << 5),
            linear_valid: q & (1 << 7) != 0,
            final_translation: q & (1 << 8) != 0,
        }
    }
}

numbered_enum! {
    /// VM-instruction error numbers (Intel SDM vol. 3, section 31.4).
    pub enum VmInstructionError: u32 {
        /// VMCALL executed in VMX root operation.
        VmcallInRoot = 1,
        /// VMCLEAR with invalid physical address.
        VmclearInvalidAddress = 2,
        /// VMCLEAR with VMXON pointer.
        VmclearVmxonPointer = 3,
        /// VMLAUNCH with non-clear VMCS.
        VmlaunchNonClearVmcs = 4,
        /// VMRESUME with non-launched VMCS.
        VmresumeNonLaunchedVmcs = 5,
        /// VMRESUME after VMXOFF.
        VmresumeAfterVmxoff = 6,
        /// VM entry with invalid control field(s).
        EntryInvalidControlFields = 7,
        /// VM entry with invalid host-state field(s).
        EntryInvalidHostState = 8,
        /// VMPTRLD with invalid physical address.
        VmptrldInvalidAddress = 9,
        /// VMPTRLD with VMXON pointer.
        VmptrldVmxonPointer = 10,
        /// VMPTRLD with incorrect VMCS revision identifier.
        VmptrldBadRevision = 11,
        /// VMREAD/VMWRITE from/to unsupported VMCS component.
        UnsupportedVmcsComponent = 12,
        /// VMWRITE to read-only VMCS component.
        VmwriteReadOnlyComponent = 13,
        /// VMXON executed in VMX root operation.
        VmxonInRoot = 15,
        /// VM entry with invalid executive-VMCS pointer.
        EntryInvalidExecutiveVmcsPointer = 16,
        /// VM entry with non-launched executive VMCS.
        EntryNonLaunchedExecutiveVmcs = 17,
        /// VM entry with executive-VMCS pointer not VMXON pointer.
        EntryExecutiveVmcsPointerNotVmxon = 18,
        /// VMCALL with non-clear VMCS.
        VmcallNonClearVmcs = 19,
        /// VMCALL with invalid VM-exit control fields.
        VmcallInvalidExitControls = 20,
        /// VMCALL with incorrect MSEG revision identifier.
        VmcallBadMsegRevision = 22,
        /// VMXOFF under dual-monitor treatment of SMIs and SMM.
        VmxoffDualMonitor = 23,
        /// VMCALL with invalid SMM-monitor features.
        VmcallInvalidSmmMonitorFeatures = 24,
        /// VM entry with invalid VM-execution control fields in executive VMCS.
        EntryInvalidExecutiveControls = 25,
        /// VM entry with events blocked by MOV SS.
        EntryEventsBlockedByMovSs = 26,
        /// Invalid operand to INVEPT/INVVPID.
        InvalidInveptInvvpidOperand = 28,
    }
}

impl VmInstructionError {
    /// The SDM's description of this error.
    pub const fn message(self) -> &'static str {
        use VmInstructionError::*;
        match self {
            VmcallInRoot => "VMCALL executed in VMX root operation",
            VmclearInvalidAddress => "VMCLEAR with invalid physical address",
            VmclearVmxonPointer => "VMCLEAR with VMXON pointer",
            VmlaunchNonClearVmcs => "VMLAUNCH with non-clear VMCS",
            VmresumeNonLaunchedVmcs => "VMRESUME with non-launched VMCS",
            VmresumeAfterVmxoff => "VMRESUME after VMXOFF",
            EntryInvalidControlFields => "VM entry with invalid control field(s)",
            EntryInvalidHostState => "VM entry with invalid host-state field(s)",
            VmptrldInvalidAddress => "VMPTRLD with invalid physical address",
            VmptrldVmxonPointer => "VMPTRLD with VMXON pointer",
            VmptrldBadRevision => "VMPTRLD with incorrect VMCS revision identifier",
            UnsupportedVmcsComponent => "VMREAD/VMWRITE from/to unsupported VMCS component",
            VmwriteReadOnlyComponent => "VMWRITE to read-only VMCS component",
            VmxonInRoot => "VMXON executed in VMX root operation",
            EntryInvalidExecutiveVmcsPointer => "VM entry with invalid executive-VMCS pointer",
            EntryNonLaunchedExecutiveVmcs => "VM entry with non-launched executive VMCS",
            EntryExecutiveVmcsPointerNotVmxon => {
                "VM entry with executive-VMCS pointer not VMXON pointer"
            }
            VmcallNonClearVmcs => "VMCALL with non-clear VMCS",
            VmcallInvalidExitControls => "VMCALL with invalid VM-exit control fields",
            VmcallBadMsegRevision => "VMCALL with incorrect MSEG revision identifier",
            VmxoffDualMonitor => "VMXOFF under dual-monitor treatment of SMIs and SMM",
            VmcallInvalidSmmMonitorFeatures => "VMCALL with invalid SMM-monitor features",
            EntryInvalidExecutiveControls => {
                "VM entry with invalid VM-execution control fields in executive VMCS"
            }
            EntryEventsBlockedByMovSs => "VM entry with events blocked by MOV SS",
            InvalidInveptInvvpidOperand => "invalid operand to INVEPT/INVVPID",
        }
    }
}

/// The SDM's description of VM-instruction error `n`, or "unknown error".
pub fn instruction_error_message(n: u32) -> &'static str {
    match VmInstructionError::from_raw(n) {
        Some(e) => e.message(),
        None => "unknown VM-instruction error",
    }
}

impl core::fmt::Display for VmInstructionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "VM-instruction error {}: {}",
            *self as u32,
            self.message()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reason_numbers_match_appendix_c() {
        use VmxExitReason::*;
        for (n, r) in [
            (0, ExceptionNmi),
            (1, ExternalInterrupt),
            (2, TripleFault),
            (7, InterruptWindow),
            (10, Cpuid),
            (12, Hlt),
            (18, Vmcall),
            (28, CrAccess),
            (30, IoInstruction),
            (31, Rdmsr),
            (32, Wrmsr),
            (33, EntryFailInvalidGuestState),
            (48, EptViolation),
            (49, EptMisconfig),
            (52, PreemptionTimer),
            (55, Xsetbv),
        ] {
            assert_eq!(VmxExitReason::from_raw(n), Some(r));
            assert_eq!(r as u16, n);
        }
        assert_eq!(VmxExitReason::from_raw(35), None);
        assert_eq!(VmxExitReason::from_raw(65), None);
    }

    #[test]
    fn exit_reason_field_entry_failure() {
        let f = ExitReasonField::from_raw(0x8000_0021);
        assert!(f.entry_failure);
        assert_eq!(f.reason(), Ok(VmxExitReason::EntryFailInvalidGuestState));
        let e = EntryFailure {
            raw_reason: 0x8000_0021,
            qualification: 0,
        };
        assert_eq!(
            e.description(),
            "invalid guest state (SDM 27.3 guest-state checks)"
        );
        assert_eq!(
            alloc::format!("{e}"),
            "VM-entry failure, exit reason 0x80000021, qualification 0x0: \
             invalid guest state (SDM 27.3 guest-state checks)"
        );
        let link = EntryFailure {
            qualification: 4,
            ..e
        };
        assert_eq!(
            link.description(),
            "invalid guest state: invalid VMCS link pointer"
        );
        let msr = EntryFailure {
            raw_reason: 0x8000_0022,
            qualification: 1,
        };
        assert!(msr.description().starts_with("MSR loading"));
        let f = ExitReasonField::from_raw(30);
        assert!(!f.entry_failure);
        assert_eq!(f.reason(), Ok(VmxExitReason::IoInstruction));
        assert_eq!(
            ExitReasonField::from_raw(0xffff).reason(),
            Err(Error::UnknownExit(0xffff))
        );
    }

    #[test]
    fn io_qualification() {
        // out 0x3f8, al with port in DX: size 0, OUT, port 0x3f8.
        let q = IoQualification::from_raw(0x03f8_0000).unwrap();
        assert_eq!(q.port, 0x3f8);
        assert_eq!(q.width, AccessWidth::Byte);
        assert!(!q.is_in && !q.is_string && !q.is_rep && !q.is_immediate);
        // in eax, 0x71 (immediate): size 3, IN, imm.
        let q = IoQualification::from_raw((0x71 << 16) | (1 << 6) | (1 << 3) | 3).unwrap();
        assert_eq!(
            (q.port, q.width, q.is_in, q.is_immediate),
            (0x71, AccessWidth::Dword, true, true)
        );
        // rep outsw dx: size 1, string, rep.
        let q = IoQualification::from_raw((0x1f0 << 16) | (1 << 5) | (1 << 4) | 1).unwrap();
        assert_eq!(
            (q.width, q.is_string, q.is_rep, q.is_in),
            (AccessWidth::Word, true, true, false)
        );
        assert!(IoQualification::from_raw(2).is_err());
    }

    #[test]
    fn cr_qualification() {
        // mov cr3, rbx -> cr 3, type 0, gpr 3.
        let q = CrQualification::from_raw(0x303);
        assert_eq!(q.cr, 3);
        assert_eq!(q.access, CrAccessType::MovToCr { gpr: 3 });
        // mov r12, cr8 -> cr 8, type 1, gpr 12.
        let q = CrQualification::from_raw((12 << 8) | (1 << 4) | 8);
        assert_eq!((q.cr, q.access), (8, CrAccessType::MovFromCr { gpr: 12 }));
        assert_eq!(CrQualification::from_raw(0x20).access, CrAccessType::Clts);
        let q = CrQualification::from_raw((0x0001 << 16) | (1 << 6) | (3 << 4));
        assert_eq!(
            q.access,
            CrAccessType::Lmsw {
                source: 1,
                memory_operand: true
            }
        );
    }

    #[test]
    fn ept_violation_qualification() {
        // Write to a non-present page, linear address valid, final translation.
        let q = EptViolationQualification::from_raw(0x182);
        assert_eq!(q.access, MappingFlags::WRITE);
        assert_eq!(q.allowed, MappingFlags::empty());
        assert!(q.linear_valid && q.final_translation);
        // Instruction fetch from a readable+writable page.
        let q = EptViolationQualification::from_raw(0x1c | 0x80);
        assert_eq!(q.access, MappingFlags::EXECUTE);
        assert_eq!(q.allowed, MappingFlags::READ | MappingFlags::WRITE);
        assert!(!q.final_translation);
        assert_eq!(
            EptViolationQualification::from_raw(1).access,
            MappingFlags::READ
        );
    }

    #[test]
    fn instruction_errors() {
        let e = VmInstructionError::from_raw(7).unwrap();
        assert_eq!(e, VmInstructionError::EntryInvalidControlFields);
        assert_eq!(e.message(), "VM entry with invalid control field(s)");
        assert_eq!(
            VmInstructionError::from_raw(12),
            Some(VmInstructionError::UnsupportedVmcsComponent)
        );
        assert_eq!(
            VmInstructionError::from_raw(28),
            Some(VmInstructionError::InvalidInveptInvvpidOperand)
        );
        assert_eq!(VmInstructionError::from_raw(14), None);
        assert_eq!(VmInstructionError::from_raw(0), None);
        assert_eq!(
            instruction_error_message(13),
            "VMWRITE to read-only VMCS component"
        );
        assert_eq!(
            instruction_error_message(14),
            "unknown VM-instruction error"
        );
        assert_eq!(
            alloc::format!("{}", Error::VmFailValid(8)),
            "VMX instruction failed with error 8: VM entry with invalid host-state field(s)"
        );
        assert_eq!(
            alloc::format!("{}", VmInstructionError::VmlaunchNonClearVmcs),
            "VM-instruction error 4: VMLAUNCH with non-clear VMCS"
        );
    }
}
