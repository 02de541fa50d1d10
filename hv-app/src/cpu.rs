//! The privileged instructions hv-app's own setup needs, one thin function
//! each: control registers, MSRs, descriptor-table loads, CPUID. All the
//! logic around them (encodings, layouts) is in the host-tested library.

use core::arch::asm;

use hv_app::descriptor::DescriptorTablePointer;
use hv_app::exception::ControlRegs;

/// CR0, CR2, CR3 and CR4.
pub fn control_regs() -> ControlRegs {
    let (cr0, cr2, cr3, cr4): (u64, u64, u64, u64);
    // SAFETY: reading control registers at CPL 0 has no side effects.
    unsafe {
        asm!(
            "mov {0}, cr0",
            "mov {1}, cr2",
            "mov {2}, cr3",
            "mov {3}, cr4",
            out(reg) cr0, out(reg) cr2, out(reg) cr3, out(reg) cr4,
            options(nomem, nostack, preserves_flags)
        );
    }
    ControlRegs { cr0, cr2, cr3, cr4 }
}

/// Reads MSR `msr`.
///
/// # Safety
///
/// `msr` exists on this CPU (a missing one raises #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; rdmsr at CPL 0 only
    // reads it.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi,
             options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes `value` to MSR `msr`.
///
/// # Safety
///
/// `msr` exists, `value` is valid for it, and the change keeps the
/// machine in a state the rest of hv-app expects.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    };
}

/// CPUID leaf `leaf`, subleaf 0: `[eax, ebx, ecx, edx]`.
pub fn cpuid(leaf: u32) -> [u32; 4] {
    // SAFETY: CPUID is available on every x86_64 CPU and only reads. (The
    // intrinsic is safe since Rust 1.87; the block keeps 1.85 building.)
    #[allow(unused_unsafe)]
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, 0) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Loads the GDT, reloads CS with `code` (far return) and DS, ES, SS with
/// `data`; FS and GS get the null selector (their bases are MSRs).
///
/// # Safety
///
/// `gdt` describes a table that stays valid and in place for as long as
/// this CPU runs, with a 64-bit code segment at `code` and a data segment
/// at `data`.
pub unsafe fn load_gdt(gdt: &DescriptorTablePointer, code: u16, data: u16) {
    // SAFETY: the caller's contract; the far return lands on the next
    // instruction with the new CS.
    unsafe {
        asm!(
            "lgdt [{gdt}]",
            "push {code}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {data:x}",
            "mov es, {data:x}",
            "mov ss, {data:x}",
            "xor {tmp:e}, {tmp:e}",
            "mov fs, {tmp:x}",
            "mov gs, {tmp:x}",
            gdt = in(reg) gdt,
            code = in(reg) u64::from(code),
            data = in(reg) data,
            tmp = out(reg) _,
            options(preserves_flags)
        );
    }
}

/// Loads the task register with `selector`.
///
/// # Safety
///
/// The current GDT has an available 64-bit TSS descriptor at `selector`
/// whose TSS stays valid for as long as this CPU runs.
pub unsafe fn load_tr(selector: u16) {
    // SAFETY: the caller's contract.
    unsafe { asm!("ltr {0:x}", in(reg) selector, options(nostack, preserves_flags)) };
}

/// Loads the IDT.
///
/// # Safety
///
/// `idt` describes a table of valid gates that stays in place for as long
/// as this CPU runs.
pub unsafe fn load_idt(idt: &DescriptorTablePointer) {
    // SAFETY: the caller's contract.
    unsafe { asm!("lidt [{0}]", in(reg) idt, options(readonly, nostack, preserves_flags)) };
}

/// The task register's selector (`str`).
pub fn task_register() -> u16 {
    let tr: u16;
    // SAFETY: `str` only reads the task register.
    unsafe { asm!("str {0:x}", out(reg) tr, options(nomem, nostack, preserves_flags)) };
    tr
}
