//! SVM exit codes (AMD APM vol. 2, Appendix C) and EXITINFO decoding.

use axaddrspace::{AccessWidth, MappingFlags};

use crate::{Error, Result};

/// The exit code of a failed VMRUN (`VMEXIT_INVALID`, -1).
pub const VMEXIT_INVALID: u64 = u64::MAX;

/// Raw values of the exit codes the vCPU dispatches on directly (APM vol.
/// 2, Appendix C); [`SvmExitCode::from_raw`] decodes every code.
pub mod code {
    /// CPUID.
    pub const CPUID: u64 = 0x72;
    /// HLT.
    pub const HLT: u64 = 0x78;
    /// IN/OUT (IOIO).
    pub const IOIO: u64 = 0x7b;
    /// RDMSR/WRMSR.
    pub const MSR: u64 = 0x7c;
    /// VMMCALL.
    pub const VMMCALL: u64 = 0x81;
    /// Nested page fault.
    pub const NPF: u64 = 0x400;
}

/// An SVM exit code, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvmExitCode {
    /// 0x00-0x0F: read of CRn.
    CrRead(u8),
    /// 0x10-0x1F: write of CRn.
    CrWrite(u8),
    /// 0x20-0x2F: read of DRn.
    DrRead(u8),
    /// 0x30-0x3F: write of DRn.
    DrWrite(u8),
    /// 0x40-0x5F: exception vector n.
    Exception(u8),
    /// 0x60: physical INTR.
    Intr,
    /// 0x61: physical NMI.
    Nmi,
    /// 0x62: physical SMI.
    Smi,
    /// 0x63: physical INIT.
    Init,
    /// 0x64: virtual INTR (interrupt window).
    Vintr,
    /// 0x65: selective CR0 write.
    Cr0SelWrite,
    /// 0x6E: RDTSC.
    Rdtsc,
    /// 0x6F: RDPMC.
    Rdpmc,
    /// 0x70: PUSHF.
    Pushf,
    /// 0x71: POPF.
    Popf,
    /// 0x72: CPUID.
    Cpuid,
    /// 0x73: RSM.
    Rsm,
    /// 0x74: IRET.
    Iret,
    /// 0x75: INTn.
    Swint,
    /// 0x76: INVD.
    Invd,
    /// 0x77: PAUSE.
    Pause,
    /// 0x78: HLT.
    Hlt,
    /// 0x79: INVLPG.
    Invlpg,
    /// 0x7A: INVLPGA.
    Invlpga,
    /// 0x7B: IN/OUT.
    Ioio,
    /// 0x7C: RDMSR/WRMSR.
    Msr,
    /// 0x7D: task switch.
    TaskSwitch,
    /// 0x7E: FERR_FREEZE.
    FerrFreeze,
    /// 0x7F: shutdown (triple fault).
    Shutdown,
    /// 0x80: VMRUN.
    Vmrun,
    /// 0x81: VMMCALL.
    Vmmcall,
    /// 0x82: VMLOAD.
    Vmload,
    /// 0x83: VMSAVE.
    Vmsave,
    /// 0x84: STGI.
    Stgi,
    /// 0x85: CLGI.
    Clgi,
    /// 0x86: SKINIT.
    Skinit,
    /// 0x87: RDTSCP.
    Rdtscp,
    /// 0x88: ICEBP.
    Icebp,
    /// 0x89: WBINVD.
    Wbinvd,
    /// 0x8A: MONITOR.
    Monitor,
    /// 0x8B: MWAIT.
    Mwait,
    /// 0x8C: MWAIT conditional.
    MwaitConditional,
    /// 0x8D: XSETBV.
    Xsetbv,
    /// 0x8E: RDPRU.
    Rdpru,
    /// 0x8F: EFER write trap.
    EferWriteTrap,
    /// 0x400: nested page fault.
    Npf,
    /// 0x401: AVIC incomplete IPI.
    AvicIncompleteIpi,
    /// 0x402: AVIC unaccelerated access.
    AvicNoAccel,
    /// 0x403: VMGEXIT.
    Vmgexit,
    /// -1: invalid guest state in the VMCB (`VMEXIT_INVALID`, also
    /// recognized in its 32-bit form `0xFFFF_FFFF`).
    Invalid,
    /// -2: busy bit set in the VMSA.
    Busy,
    /// Any other code (descriptor-table accesses, CR write traps, ...).
    Other(u64),
}

impl SvmExitCode {
    /// Decodes the EXITCODE field.
    pub const fn from_raw(code: u64) -> Self {
        use SvmExitCode::*;
        match code {
            0x00..=0x0f => CrRead(code as u8),
            0x10..=0x1f => CrWrite((code - 0x10) as u8),
            0x20..=0x2f => DrRead((code - 0x20) as u8),
            0x30..=0x3f => DrWrite((code - 0x30) as u8),
            0x40..=0x5f => Exception((code - 0x40) as u8),
            0x60 => Intr,
            0x61 => Nmi,
            0x62 => Smi,
            0x63 => Init,
            0x64 => Vintr,
            0x65 => Cr0SelWrite,
            0x6e => Rdtsc,
            0x6f => Rdpmc,
            0x70 => Pushf,
            0x71 => Popf,
            0x72 => Cpuid,
            0x73 => Rsm,
            0x74 => Iret,
            0x75 => Swint,
            0x76 => Invd,
            0x77 => Pause,
            0x78 => Hlt,
            0x79 => Invlpg,
            0x7a => Invlpga,
            0x7b => Ioio,
            0x7c => Msr,
            0x7d => TaskSwitch,
            0x7e => FerrFreeze,
            0x7f => Shutdown,
            0x80 => Vmrun,
            0x81 => Vmmcall,
            0x82 => Vmload,
            0x83 => Vmsave,
            0x84 => Stgi,
            0x85 => Clgi,
            0x86 => Skinit,
            0x87 => Rdtscp,
            0x88 => Icebp,
            0x89 => Wbinvd,
            0x8a => Monitor,
            0x8b => Mwait,
            0x8c => MwaitConditional,
            0x8d => Xsetbv,
            0x8e => Rdpru,
            0x8f => EferWriteTrap,
            0x400 => Npf,
            0x401 => AvicIncompleteIpi,
            0x402 => AvicNoAccel,
            0x403 => Vmgexit,
            // QEMU's TCG (7.2 at least) stores its 32-bit exit code
            // zero-extended: VMEXIT_INVALID arrives as 0xFFFF_FFFF. These
            // two values are no other architectural exit code.
            u64::MAX | 0xffff_ffff => Invalid,
            0xffff_ffff_ffff_fffe | 0xffff_fffe => Busy,
            other => Other(other),
        }
    }
}

/// EXITINFO1 of an IOIO intercept (APM 15.10.2, figure 15-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoioInfo {
    /// Port (bits 31:16).
    pub port: u16,
    /// IN (bit 0 = 1) rather than OUT.
    pub is_in: bool,
    /// String instruction (bit 2).
    pub is_string: bool,
    /// REP prefix (bit 3).
    pub is_rep: bool,
    /// Operand size: SZ8 (bit 4), SZ16 (bit 5), SZ32 (bit 6).
    pub width: AccessWidth,
    /// Address size in bits: A16 (bit 7), A32 (bit 8), A64 (bit 9); `None`
    /// when no bit is set. It only matters for string I/O, and QEMU's TCG
    /// sets it for none (`gen_check_io` passes operand size, REP and
    /// string only), so its absence is not an error.
    pub address_size: Option<u8>,
}

impl IoioInfo {
    /// Decodes EXITINFO1.
    #[inline]
    pub fn from_raw(info1: u64) -> Result<Self> {
        let width = match (info1 >> 4) & 7 {
            1 => AccessWidth::Byte,
            2 => AccessWidth::Word,
            4 => AccessWidth::Dword,
            _ => return Err(Error::InvalidArgument("IOIO EXITINFO1: bad operand size")),
        };
        let address_size = match (info1 >> 7) & 7 {
            0 => None,
            1 => Some(16),
            2 => Some(32),
            4 => Some(64),
            _ => {
                return Err(Error::InvalidArgument(
                    "IOIO EXITINFO1: more than one address size",
                ));
            }
        };
        Ok(Self {
            port: (info1 >> 16) as u16,
            is_in: info1 & 1 != 0,
            is_string: info1 & (1 << 2) != 0,
            is_rep: info1 & (1 << 3) != 0,
            width,
            address_size,
        })
    }
}

/// Nested page fault error code bits (EXITINFO1, APM 15.25.6).
pub mod npf {
    /// The page was present (a protection violation, not a missing page).
    pub const PRESENT: u64 = 1 << 0;
    /// Write access.
    pub const WRITE: u64 = 1 << 1;
    /// User access.
    pub const USER: u64 = 1 << 2;
    /// Reserved bit set in a nested page table entry.
    pub const RSV: u64 = 1 << 3;
    /// Instruction fetch.
    pub const FETCH: u64 = 1 << 4;
    /// Fault on the final guest physical address.
    pub const FINAL_ADDRESS: u64 = 1 << 32;
    /// Fault while walking the guest's page tables.
    pub const PAGE_TABLE_WALK: u64 = 1 << 33;
}

/// The access that caused a nested page fault: WRITE for a write, EXECUTE
/// for an instruction fetch, READ otherwise.
#[inline]
pub fn npf_access_flags(info1: u64) -> MappingFlags {
    if info1 & npf::WRITE != 0 {
        MappingFlags::WRITE
    } else if info1 & npf::FETCH != 0 {
        MappingFlags::EXECUTE
    } else {
        MappingFlags::READ
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_match_appendix_c() {
        use SvmExitCode::*;
        for (raw, code) in [
            (0x72, Cpuid),
            (0x78, Hlt),
            (0x7b, Ioio),
            (0x7c, Msr),
            (0x7f, Shutdown),
            (0x81, Vmmcall),
            (0x400, Npf),
            (0x60, Intr),
            (0x64, Vintr),
            (0x8d, Xsetbv),
            (u64::MAX, Invalid),
            (0xffff_ffff, Invalid), // as QEMU TCG stores it
            (u64::MAX - 1, Busy),
            (0xffff_fffe, Busy),
        ] {
            assert_eq!(SvmExitCode::from_raw(raw), code, "code {raw:#x}");
        }
        assert_eq!(SvmExitCode::from_raw(0x13), CrWrite(3));
        assert_eq!(SvmExitCode::from_raw(0x0e), CrRead(14));
        assert_eq!(SvmExitCode::from_raw(0x4e), Exception(14));
        assert_eq!(SvmExitCode::from_raw(0x37), DrWrite(7));
        assert_eq!(SvmExitCode::from_raw(0x66), Other(0x66));
        // The raw constants of the fast dispatch agree with the decoder.
        for (raw, decoded) in [
            (code::CPUID, Cpuid),
            (code::HLT, Hlt),
            (code::IOIO, Ioio),
            (code::MSR, Msr),
            (code::VMMCALL, Vmmcall),
            (code::NPF, Npf),
        ] {
            assert_eq!(SvmExitCode::from_raw(raw), decoded);
        }
    }

    #[test]
    fn ioio_decoding() {
        // out dx, al to 0x3f8: OUT, SZ8, A64 (bit 9).
        let i = IoioInfo::from_raw((0x3f8 << 16) | (1 << 9) | (1 << 4)).unwrap();
        assert_eq!(i.port, 0x3f8);
        assert!(!i.is_in && !i.is_string && !i.is_rep);
        assert_eq!((i.width, i.address_size), (AccessWidth::Byte, Some(64)));
        // in eax, 0xcfc: IN, SZ32, A32.
        let i = IoioInfo::from_raw((0xcfc << 16) | (1 << 8) | (1 << 6) | 1).unwrap();
        assert_eq!(
            (i.port, i.is_in, i.width, i.address_size),
            (0xcfc, true, AccessWidth::Dword, Some(32))
        );
        // rep insw: IN, STR, REP, SZ16, A16.
        let i = IoioInfo::from_raw((0x1f0 << 16) | (1 << 7) | (1 << 5) | (1 << 3) | (1 << 2) | 1)
            .unwrap();
        assert!(i.is_string && i.is_rep && i.is_in);
        assert_eq!(i.width, AccessWidth::Word);
        assert_eq!(i.address_size, Some(16));
        // QEMU TCG's `out dx, al`: port, SZ8, no address size bit.
        let i = IoioInfo::from_raw((0x3f8 << 16) | (1 << 4)).unwrap();
        assert_eq!(
            (i.port, i.width, i.address_size),
            (0x3f8, AccessWidth::Byte, None)
        );
        // No operand size, or two address sizes: malformed.
        assert!(IoioInfo::from_raw(0x3f8 << 16).is_err());
        assert!(IoioInfo::from_raw((1 << 4) | (3 << 7)).is_err());
    }

    #[test]
    fn npf_flags() {
        // Write to a non-present page at the final address.
        assert_eq!(
            npf_access_flags(npf::FINAL_ADDRESS | npf::WRITE | npf::USER),
            MappingFlags::WRITE
        );
        assert_eq!(
            npf_access_flags(npf::FINAL_ADDRESS | npf::FETCH | npf::PRESENT),
            MappingFlags::EXECUTE
        );
        assert_eq!(npf_access_flags(npf::FINAL_ADDRESS), MappingFlags::READ);
    }
}
