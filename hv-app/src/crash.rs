//! `crash=<kind>`: raise an exception on purpose, to test the handlers.

use core::arch::asm;

use hv_app::cmdline::CrashTest;
use hv_app::port::ExitCode;

use crate::pio;

/// A non-canonical address (bit 47 set, bits 63-48 clear): any access
/// raises #GP(0).
const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;
/// 256 GiB: below the canonical limit but past the boot identity map
/// (PML4[0] -> PDPT[256] is not present), so an access raises #PF.
const UNMAPPED: u64 = 0x40_0000_0000;

/// Raises the exception `kind` names. The handler reports it and ends the
/// run; if it ever came back, this reports that and fails the run.
pub fn trigger(kind: CrashTest) -> ! {
    log::warn!(
        "crash test {kind:?}: raising vector {} on purpose",
        kind.vector()
    );
    match kind {
        // SAFETY (all arms): each instruction only raises the exception the
        // test wants; the handler never returns (the run ends there).
        CrashTest::DivideError => unsafe {
            asm!("xor edx, edx", "xor eax, eax", "xor ecx, ecx", "div ecx",
                 out("eax") _, out("ecx") _, out("edx") _, options(nomem, nostack))
        },
        CrashTest::Breakpoint => unsafe { asm!("int3", options(nomem, nostack)) },
        CrashTest::InvalidOpcode => unsafe { asm!("ud2", options(nomem, nostack)) },
        CrashTest::GeneralProtection => unsafe {
            asm!("mov rax, [{0}]", in(reg) NON_CANONICAL, out("rax") _,
                 options(readonly, nostack))
        },
        CrashTest::PageFault => unsafe {
            asm!("mov rax, [{0}]", in(reg) UNMAPPED, out("rax") _, options(readonly, nostack))
        },
        // The push faults (#PF); delivering the #PF needs the same
        // unmapped stack, so the CPU raises #DF, which runs on IST1.
        CrashTest::DoubleFault => unsafe {
            asm!("mov rsp, {0}", "push rax", in(reg) UNMAPPED + 0x1000, options(noreturn))
        },
    }
    log::error!("crash test {kind:?}: the exception handler returned");
    pio::power_off(ExitCode::Failure)
}
