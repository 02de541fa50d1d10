//! VMRUN, on bare metal only (`target_os = "none"`); it cannot run on the
//! host that runs the tests.
//!
//! One entry, `x86_vcpu_svm_run(vmcb_pa, regs, host_save_pa)`:
//!
//! 1. `CLGI`: no interrupt, NMI or SMI until the host state is back.
//! 2. `VMSAVE host_save_pa`: the host's FS/GS/TR/LDTR (hidden parts),
//!    KernelGsBase, STAR/LSTAR/CSTAR/SFMASK and SYSENTER MSRs, which VMRUN
//!    does not switch.
//! 3. Load the guest GPRs from `regs` (RAX and RSP come from the VMCB).
//! 4. `VMLOAD vmcb_pa`, `VMRUN vmcb_pa`: the guest runs until #VMEXIT, which
//!    restores the host RSP, RIP and RAX (= `vmcb_pa`) from `VM_HSAVE_PA`.
//! 5. `VMSAVE vmcb_pa`, store the guest GPRs into `regs`.
//! 6. `VMLOAD host_save_pa`, `STGI`: an interrupt that made the exit is taken
//!    now by the host IDT if the caller runs with RFLAGS.IF = 1.
//!
//! Not switched: the x87/SSE/AVX register state (the host target is
//! soft-float and does not touch it) and DR0-DR3. XCR0 is switched by
//! [`vmrun`] around the call when the guest set a different one.

use crate::xcr::{xgetbv0, xsetbv0};
use axaddrspace::HostPhysAddr;

use crate::regs::GeneralRegisters;
use crate::{Error, Result};

core::arch::global_asm!(
    ".global x86_vcpu_svm_run",
    "x86_vcpu_svm_run:",
    // rdi = guest VMCB pa, rsi = &mut GeneralRegisters, rdx = host save pa.
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rsi", // [rsp + 16] after the next two pushes: regs
    "push rdi", // [rsp + 8]: guest VMCB pa
    "push rdx", // [rsp]: host save pa
    "clgi",
    "mov rax, rdx",
    "vmsave rax",
    "mov rax, rsi",
    "mov rcx, [rax + 8]",
    "mov rdx, [rax + 16]",
    "mov rbx, [rax + 24]",
    "mov rbp, [rax + 40]",
    "mov rsi, [rax + 48]",
    "mov rdi, [rax + 56]",
    "mov r8, [rax + 64]",
    "mov r9, [rax + 72]",
    "mov r10, [rax + 80]",
    "mov r11, [rax + 88]",
    "mov r12, [rax + 96]",
    "mov r13, [rax + 104]",
    "mov r14, [rax + 112]",
    "mov r15, [rax + 120]",
    "mov rax, [rsp + 8]",
    "vmload rax",
    "vmrun rax",
    // #VMEXIT: RSP and RAX (= guest VMCB pa) are the host's again.
    "vmsave rax",
    "mov rax, [rsp + 16]",
    "mov [rax + 8], rcx",
    "mov [rax + 16], rdx",
    "mov [rax + 24], rbx",
    "mov [rax + 40], rbp",
    "mov [rax + 48], rsi",
    "mov [rax + 56], rdi",
    "mov [rax + 64], r8",
    "mov [rax + 72], r9",
    "mov [rax + 80], r10",
    "mov [rax + 88], r11",
    "mov [rax + 96], r12",
    "mov [rax + 104], r13",
    "mov [rax + 112], r14",
    "mov [rax + 120], r15",
    "pop rax", // host save pa
    "vmload rax",
    "stgi",
    "add rsp, 16", // guest VMCB pa, regs
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
);

unsafe extern "sysv64" {
    fn x86_vcpu_svm_run(vmcb_pa: u64, regs: *mut GeneralRegisters, host_save_pa: u64);
}

/// Runs the guest of `vmcb` until the next #VMEXIT, switching XCR0 to
/// `guest_xcr0` around it if it differs from the host's.
///
/// # Safety
///
/// CPL 0 on a CPU with EFER.SVME set and a valid VM_HSAVE_PA; `vmcb` is a
/// VMCB that passes [`super::check_vmcb`] and `host_save` a 4 KiB page owned
/// by the caller; `guest_xcr0` was validated with
/// [`crate::vcpu::validate_xcr0`].
#[inline(always)]
pub(crate) unsafe fn vmrun(
    vmcb: HostPhysAddr,
    regs: &mut GeneralRegisters,
    host_save: HostPhysAddr,
    guest_xcr0: u64,
) -> Result {
    let cr4: u64;
    // SAFETY: reading CR4 at CPL 0 has no side effect.
    unsafe {
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags))
    };
    let osxsave = cr4 & (1 << 18) != 0;
    let host_xcr0 = if osxsave { xgetbv0() } else { 1 };
    let switch = guest_xcr0 != host_xcr0;
    if switch && !osxsave {
        return Err(Error::Unsupported(
            "guest XCR0 needs the host to set CR4.OSXSAVE",
        ));
    }
    if switch {
        // SAFETY: OSXSAVE is set and the value was validated (contract).
        unsafe { xsetbv0(guest_xcr0) };
    }
    // SAFETY: the caller's contract covers the VMCB, the save page and SVM
    // being on; `regs` is a live exclusive borrow for the whole call.
    unsafe { x86_vcpu_svm_run(vmcb.as_usize() as u64, regs, host_save.as_usize() as u64) };
    if switch {
        // SAFETY: restores the host's own value.
        unsafe { xsetbv0(host_xcr0) };
    }
    Ok(())
}
