//! The axhv hypercall ABI as a guest sees it.
//!
//! Registers: the number in RAX, arguments in RDI, RSI, RDX (then R10, R8,
//! R9, unused here); the result comes back in RAX. The instruction is
//! `vmmcall` (`0F 01 D9`) on AMD-like CPUs and `vmcall` (`0F 01 C1`) on
//! Intel (and any other vendor), chosen from the CPUID vendor string.
//! Errors are negative Linux errno values in RAX.

use core::sync::atomic::{AtomicU8, Ordering};

use crate::cpu::VendorId;

/// `HC_VERSION`: returns the ABI version.
pub const HC_VERSION: u64 = 0;

/// The ABI version `HC_VERSION` returns: major 1, minor 0
/// (`major << 16 | minor`).
pub const ABI_VERSION: u64 = 0x0001_0000;

/// Linux `ENOSYS`: the result of an unknown hypercall number is `-ENOSYS`.
pub const ENOSYS: i64 = 38;

/// The hypercall instruction of a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Instruction {
    /// Intel `vmcall` (`0F 01 C1`).
    Vmcall = 1,
    /// AMD `vmmcall` (`0F 01 D9`).
    Vmmcall = 2,
}

impl Instruction {
    /// The instruction for a CPU of `vendor`: `vmmcall` on AMD and Hygon,
    /// `vmcall` otherwise.
    pub fn for_vendor(vendor: &VendorId) -> Self {
        if vendor.is_amd_like() {
            Self::Vmmcall
        } else {
            Self::Vmcall
        }
    }

    /// The instruction's encoding.
    pub const fn bytes(self) -> [u8; 3] {
        match self {
            Self::Vmcall => [0x0f, 0x01, 0xc1],
            Self::Vmmcall => [0x0f, 0x01, 0xd9],
        }
    }

    /// The instruction's mnemonic.
    pub const fn mnemonic(self) -> &'static str {
        match self {
            Self::Vmcall => "vmcall",
            Self::Vmmcall => "vmmcall",
        }
    }
}

/// The instruction chosen for this CPU, 0 until the first [`instruction`]
/// call (CPUID causes an exit under a hypervisor, so ask once).
static INSTRUCTION: AtomicU8 = AtomicU8::new(0);

/// The hypercall instruction for this CPU, from CPUID on first use.
pub fn instruction() -> Instruction {
    match INSTRUCTION.load(Ordering::Relaxed) {
        1 => Instruction::Vmcall,
        2 => Instruction::Vmmcall,
        _ => {
            let insn = Instruction::for_vendor(&crate::cpu::vendor());
            INSTRUCTION.store(insn as u8, Ordering::Relaxed);
            insn
        }
    }
}

/// Makes hypercall `nr` with arguments `a0`, `a1`, `a2` and returns RAX.
///
/// Without a hypervisor the instruction raises #UD, which the runtime's
/// handler reports as exception 6. RDI, RSI and RDX are treated as
/// clobbered; memory is assumed read and written (a hypercall may take
/// guest buffers).
pub fn hypercall(nr: u64, a0: u64, a1: u64, a2: u64) -> u64 {
    let ret: u64;
    match instruction() {
        // SAFETY: vmmcall exits to the hypervisor, which only changes the
        // registers listed here (and memory the arguments name); without
        // one it raises #UD, a handled exception.
        Instruction::Vmmcall => unsafe {
            core::arch::asm!("vmmcall", inout("rax") nr => ret,
                inout("rdi") a0 => _, inout("rsi") a1 => _, inout("rdx") a2 => _,
                options(nostack));
        },
        // SAFETY: as above, for vmcall on Intel VMX.
        Instruction::Vmcall => unsafe {
            core::arch::asm!("vmcall", inout("rax") nr => ret,
                inout("rdi") a0 => _, inout("rsi") a1 => _, inout("rdx") a2 => _,
                options(nostack));
        },
    }
    ret
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{AMD, HYGON, INTEL};

    #[test]
    fn vendor_selects_the_instruction() {
        assert_eq!(Instruction::for_vendor(&AMD), Instruction::Vmmcall);
        assert_eq!(Instruction::for_vendor(&HYGON), Instruction::Vmmcall);
        assert_eq!(Instruction::for_vendor(&INTEL), Instruction::Vmcall);
    }

    #[test]
    fn encodings_match_the_manuals() {
        // AMD APM vol. 3 VMMCALL: 0F 01 D9; Intel SDM vol. 2 VMCALL: 0F 01 C1.
        assert_eq!(Instruction::Vmmcall.bytes(), [0x0f, 0x01, 0xd9]);
        assert_eq!(Instruction::Vmcall.bytes(), [0x0f, 0x01, 0xc1]);
    }

    #[test]
    fn unknown_number_result_is_minus_38() {
        assert_eq!((-ENOSYS) as u64, 0xffff_ffff_ffff_ffda);
    }
}
