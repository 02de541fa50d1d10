//! `usermode`: what a small Unix-like kernel (NimbOS) needs from the CPU
//! and the hypervisor, step by step:
//!
//! 1. CPUID leaf 0x16 (reached through the maximum basic leaf of leaf 0)
//!    reports the TSC base frequency, in agreement with the hypervisor's
//!    leaf 0x4000_0010.
//! 2. STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE (and TSC_AUX) start at 0:
//!    nothing left over from a VM that ran before on the same CPU.
//! 3. EFER.SCE, STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE, FS_BASE and
//!    TSC_AUX written, a CPUID (a VM exit) in between, read back unchanged;
//!    RDTSCP returns the TSC_AUX written.
//! 4. A GDT with ring-3 code and data descriptors and a 64-bit TSS whose
//!    RSP0 is the kernel's trap stack; an IDT with the #PF handler and an
//!    `int 0x80` gate of DPL 3.
//! 5. User pages at 0x80_0000_0000 (code, read-only; stack, writable; the
//!    page after them left unmapped). IRETQ to ring 3. The user task calls
//!    `syscall` (with SWAPGS in the entry, the kernel's per-CPU data from
//!    KERNEL_GS_BASE): report its CPL, write a string through the kernel,
//!    getpid (callee-saved registers and RSP kept; SFMASK clears DF in the
//!    kernel, SYSRETQ brings it back from R11), getpid again through
//!    `int 0x80`; then it reads the unmapped page: the kernel's #PF handler
//!    checks CR2 and the error code (user, read, not present) and ends the
//!    task.
//! 6. If CPUID 0x8000_0001 EDX[26] offers 1 GiB pages: maps the first GiB
//!    at 0x100_0000_0000 with one PDPTE.PS page and reads and writes
//!    through it.
//!
//! Each step prints a line; a failure prints `usermode: FAIL <step>: ...`
//! and exits 1, success prints `usermode: ok` and exits 0.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::idt::{DescriptorTablePointer, Gate, KERNEL_CS, load_idt};
use guest_rt::multiboot::HEADER_MAGIC;
use guest_rt::ring3::{
    GDT_KERNEL_CODE, GDT_KERNEL_DATA, GDT_USER_CODE, GDT_USER_CODE32, GDT_USER_DATA,
    PageFaultError, RFLAGS_DF, SFMASK_NIMBOS, TSS_SIZE, Tss, pte, selector, star, table_indices,
    tss_descriptor,
};
use guest_rt::{EXIT_FAIL, EXIT_PASS, entry, exit, println};

entry!(main);

const IA32_EFER: u32 = 0xC000_0080;
const IA32_STAR: u32 = 0xC000_0081;
const IA32_LSTAR: u32 = 0xC000_0082;
const IA32_CSTAR: u32 = 0xC000_0083;
const IA32_FMASK: u32 = 0xC000_0084;
const IA32_FS_BASE: u32 = 0xC000_0100;
const IA32_GS_BASE: u32 = 0xC000_0101;
const IA32_KERNEL_GS_BASE: u32 = 0xC000_0102;
const IA32_TSC_AUX: u32 = 0xC000_0103;
const EFER_SCE: u64 = 1;

/// The user region: PML4 entry 1.
const USER_BASE: u64 = 0x80_0000_0000;
/// The user code page (read-only, user).
const USER_CODE_VA: u64 = USER_BASE;
/// The user stack page (writable, user).
const USER_STACK_VA: u64 = USER_BASE + 0x1000;
/// Not mapped: the user task reads it and faults.
const USER_UNMAPPED_VA: u64 = USER_BASE + 0x3000;
/// Where the user task reads in the unmapped page.
const FAULT_ADDR: u64 = USER_UNMAPPED_VA + 8;
/// The first GiB, mapped again with one 1 GiB page (PML4 entry 2).
const GIANT_VA: u64 = 0x100_0000_0000;

/// System call numbers (Linux's where there is one).
const SYS_WRITE: u64 = 1;
const SYS_GETPID: u64 = 39;
const SYS_EXIT: u64 = 60;
const SYS_REPORT: u64 = 500;
/// The length of the user task's string.
const USER_MSG_LEN: u64 = 29;
/// What getpid returns.
const PID: u64 = 42;
/// `-ENOSYS`.
const ENOSYS: u64 = -38i64 as u64;
/// `enter_user`'s result when the task died of a page fault.
const KILLED_BY_PF: u64 = 0x1_0000 | 14;

/// What the user task reports (`SYS_REPORT key value`).
const R_CPL: usize = 0;
const R_WRITE: usize = 1;
const R_REGS_KEPT: usize = 2;
const R_GETPID: usize = 3;
const R_DF_AFTER_SYSRET: usize = 4;
const R_GETPID_INT80: usize = 5;
const REPORTS: usize = 6;
static REPORT: [AtomicU64; REPORTS] = [const { AtomicU64::new(u64::MAX) }; REPORTS];
/// RFLAGS inside the kernel during the last `syscall` getpid.
static KERNEL_RFLAGS: AtomicU64 = AtomicU64::new(u64::MAX);
/// The last user page fault: CR2, error code, RIP.
static PF_CR2: AtomicU64 = AtomicU64::new(0);
static PF_ERROR: AtomicU64 = AtomicU64::new(0);
static PF_RIP: AtomicU64 = AtomicU64::new(0);

fn fail(step: &str, detail: core::fmt::Arguments<'_>) -> ! {
    println!("usermode: FAIL {step}: {detail}");
    exit(EXIT_FAIL)
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: CPL 0; every MSR read here exists on an x86_64 CPU (TSC_AUX
    // only after CPUID reported RDTSCP).
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

fn wrmsr(msr: u32, value: u64) {
    // SAFETY: CPL 0; the values written are canonical addresses or valid
    // selector/flag layouts, and none of these MSRs affects the code
    // running now (SYSCALL is not used until ring 3 runs).
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32,
            in("edx") (value >> 32) as u32, options(nostack, preserves_flags));
    }
}

fn cpuid(leaf: u32) -> core::arch::x86_64::CpuidResult {
    core::arch::x86_64::__cpuid_count(leaf, 0)
}

fn has_rdtscp() -> bool {
    cpuid(0x8000_0000).eax >= 0x8000_0001 && cpuid(0x8000_0001).edx & (1 << 27) != 0
}

/// A 4 KiB page of memory.
#[repr(C, align(4096))]
struct Page([u64; 512]);

impl Page {
    const ZERO: Self = Self([0; 512]);
}

/// Memory the CPU reads on its own (page tables, GDT, TSS, IDT) or the
/// user task uses. Written only by `main` before ring 3 runs (one CPU).
struct Tables {
    user_pdpt: Page,
    user_pd: Page,
    user_pt: Page,
    user_stack: Page,
    giant_pdpt: Page,
    gdt: [u64; 8],
    tss: Tss,
    idt: [Gate; 256],
}

#[repr(C, align(4096))]
struct TablesCell(core::cell::UnsafeCell<Tables>);

// SAFETY: one CPU; see `Tables`.
unsafe impl Sync for TablesCell {}

static TABLES: TablesCell = TablesCell(core::cell::UnsafeCell::new(Tables {
    user_pdpt: Page::ZERO,
    user_pd: Page::ZERO,
    user_pt: Page::ZERO,
    user_stack: Page::ZERO,
    giant_pdpt: Page::ZERO,
    gdt: [0; 8],
    tss: Tss::new(0),
    idt: [Gate::MISSING; 256],
}));

/// The trap stack (TSS RSP0 and the SYSCALL entry's stack).
#[repr(C, align(16))]
struct Stack([u8; 16384]);
static mut TRAP_STACK: Stack = Stack([0; 16384]);

/// The per-CPU data the SYSCALL entry reaches through GS after SWAPGS
/// (its address is KERNEL_GS_BASE): `[0]` = kernel stack top, `[8]` =
/// the user RSP while in the kernel.
#[repr(C)]
struct PerCpu {
    kernel_rsp: AtomicU64,
    user_rsp: AtomicU64,
}
static PERCPU: PerCpu = PerCpu {
    kernel_rsp: AtomicU64::new(0),
    user_rsp: AtomicU64::new(0),
};

/// A value read through the 1 GiB page.
static GIANT_CELL: AtomicU64 = AtomicU64::new(0x1d1d_2e2e_3f3f_4a4a);

core::arch::global_asm!(
    r#"
    .section .text.usermode_kernel, "ax"
    .code64

    /* enter_user(rip, rsp) -> u64: IRETQ to ring 3; comes back through
       usermode_resume_kernel with its value. */
    .global usermode_enter_user
usermode_enter_user:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov [rip + usermode_kernel_rsp], rsp
    push {user_ds}
    push rsi
    push 0x2
    push {user_cs}
    push rdi
    iretq

    /* resume_kernel(value, swapgs): back on the stack enter_user saved. */
    .global usermode_resume_kernel
usermode_resume_kernel:
    test rsi, rsi
    jz 2f
    swapgs
2:
    mov rax, rdi
    mov rsp, [rip + usermode_kernel_rsp]
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

    /* SYSCALL: RCX = user RIP, R11 = user RFLAGS, RSP still the user's. */
    .global usermode_syscall_entry
usermode_syscall_entry:
    swapgs
    mov gs:[8], rsp
    mov rsp, gs:[0]
    push qword ptr gs:[8]
    push rcx
    push r11
    push rdi
    push rsi
    push rdx
    push r8
    push r9
    push r10
    mov rcx, rdx
    mov rdx, rsi
    mov rsi, rdi
    mov rdi, rax
    xor r8d, r8d
    sub rsp, 8
    call {dispatch}
    add rsp, 8
    pop r10
    pop r9
    pop r8
    pop rdx
    pop rsi
    pop rdi
    pop r11
    pop rcx
    pop rsp
    swapgs
    sysretq

    /* int 0x80 (DPL 3 gate): the CPU switched to RSP0 and pushed SS, RSP,
       RFLAGS, CS, RIP (RSP aligned to 16 first). */
    .global usermode_int80_entry
usermode_int80_entry:
    push rdi
    push rsi
    push rdx
    push rcx
    push r8
    push r9
    push r10
    push r11
    mov rcx, rdx
    mov rdx, rsi
    mov rsi, rdi
    mov rdi, rax
    mov r8d, 1
    sub rsp, 8
    call {dispatch}
    add rsp, 8
    pop r11
    pop r10
    pop r9
    pop r8
    pop rcx
    pop rdx
    pop rsi
    pop rdi
    iretq

    /* #PF: error code on top of the CPU's frame. */
    .global usermode_pf_entry
usermode_pf_entry:
    cld
    mov rdi, rsp
    and rsp, -16
    call {page_fault}
    mov rdi, rax
    xor esi, esi
    jmp usermode_resume_kernel

    .section .bss.usermode_kernel_rsp, "aw", @nobits
    .balign 8
usermode_kernel_rsp:
    .skip 8

    /* The user task: one page, mapped alone at USER_CODE_VA. Everything
       it reaches is RIP-relative or a constant address. */
    .section .text.usermode_user, "ax"
    .balign 4096
    .global usermode_user_start
usermode_user_start:
    mov ax, cs
    movzx esi, ax
    and esi, 3
    mov edi, {r_cpl}
    mov eax, {sys_report}
    syscall

    mov rbx, 0x1122334455667788
    mov r12, rsp
    mov eax, {sys_write}
    lea rdi, [rip + usermode_user_msg]
    mov esi, {msg_len}
    syscall
    mov rsi, rax
    mov edi, {r_write}
    mov eax, {sys_report}
    syscall

    xor esi, esi
    mov r14, 0x1122334455667788
    cmp rbx, r14
    jne 5f
    cmp r12, rsp
    jne 5f
    mov esi, 1
5:
    mov edi, {r_regs_kept}
    mov eax, {sys_report}
    syscall

    std
    mov eax, {sys_getpid}
    syscall
    pushfq
    pop r13
    cld
    mov rsi, rax
    mov edi, {r_getpid}
    mov eax, {sys_report}
    syscall
    mov rsi, r13
    shr rsi, 10
    and esi, 1
    mov edi, {r_df}
    mov eax, {sys_report}
    syscall

    mov eax, {sys_getpid}
    int 0x80
    mov rsi, rax
    mov edi, {r_getpid_int80}
    mov eax, {sys_report}
    syscall

    mov rax, {fault_addr}
    mov rax, [rax]

    /* Not reached: the read above must fault. */
    mov edi, 99
    mov eax, {sys_exit}
    syscall
    ud2
usermode_user_msg:
    .ascii "hello from ring 3 via syscall"
usermode_user_msg_end:
    .ifne (usermode_user_msg_end - usermode_user_msg) - {msg_len}
    .error "USER_MSG_LEN does not match the string"
    .endif
    .balign 4096
"#,
    user_ds = const selector::USER_DATA,
    user_cs = const selector::USER_CODE,
    dispatch = sym usermode_syscall,
    page_fault = sym usermode_page_fault,
    r_cpl = const R_CPL,
    r_write = const R_WRITE,
    r_regs_kept = const R_REGS_KEPT,
    r_getpid = const R_GETPID,
    r_df = const R_DF_AFTER_SYSRET,
    r_getpid_int80 = const R_GETPID_INT80,
    sys_report = const SYS_REPORT,
    sys_write = const SYS_WRITE,
    sys_getpid = const SYS_GETPID,
    sys_exit = const SYS_EXIT,
    fault_addr = const FAULT_ADDR,
    msg_len = const USER_MSG_LEN,
);

unsafe extern "C" {
    fn usermode_enter_user(rip: u64, rsp: u64) -> u64;
    fn usermode_resume_kernel(value: u64, swapgs: u64) -> !;
    fn usermode_syscall_entry();
    fn usermode_int80_entry();
    fn usermode_pf_entry();
    fn usermode_user_start();
}

fn rflags() -> u64 {
    let v: u64;
    // SAFETY: PUSHFQ/POP only read RFLAGS through the stack.
    unsafe { core::arch::asm!("pushfq", "pop {}", out(reg) v, options(nomem, preserves_flags)) };
    v
}

/// The system calls, from `syscall` (`via_int80` = 0) and `int 0x80` (1).
extern "C" fn usermode_syscall(nr: u64, a0: u64, a1: u64, _a2: u64, via_int80: u64) -> u64 {
    match nr {
        SYS_WRITE => {
            let in_user = a0 >= USER_BASE
                && a1 <= 256
                && a0.checked_add(a1).is_some_and(|end| end <= USER_STACK_VA);
            if !in_user {
                return -14i64 as u64; // -EFAULT
            }
            // SAFETY: the range lies in the user code page, mapped and
            // readable (the kernel runs without SMAP).
            let bytes = unsafe { core::slice::from_raw_parts(a0 as *const u8, a1 as usize) };
            match core::str::from_utf8(bytes) {
                Ok(s) => println!("usermode: user says: {s}"),
                Err(_) => println!("usermode: user wrote {a1} bytes that are not UTF-8"),
            }
            a1
        }
        SYS_GETPID => {
            if via_int80 == 0 {
                KERNEL_RFLAGS.store(rflags(), Ordering::SeqCst);
            }
            PID
        }
        SYS_REPORT => {
            if let Some(slot) = REPORT.get(a0 as usize) {
                slot.store(a1, Ordering::SeqCst);
            }
            0
        }
        SYS_EXIT => {
            // SAFETY: called from a system call of the task `enter_user`
            // started; SYSCALL's entry swapped GS, `int 0x80`'s did not.
            unsafe { usermode_resume_kernel(a0 & 0xff, u64::from(via_int80 == 0)) }
        }
        _ => ENOSYS,
    }
}

/// The CPU's #PF frame with the error code on top.
#[repr(C)]
struct PfFrame {
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 at CPL 0 has no side effect.
    unsafe {
        core::arch::asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// The name of the step running, for a page fault in the kernel.
static STEP: AtomicU64 = AtomicU64::new(0);
const STEPS: [&str; 3] = ["setup", "ring 3", "1 GiB page"];

/// #PF: a fault of the user task ends it; one in the kernel fails the run.
extern "C" fn usermode_page_fault(frame: &PfFrame) -> u64 {
    let addr = cr2();
    if frame.cs & 3 != 3 {
        let step = STEPS[STEP.load(Ordering::SeqCst) as usize % STEPS.len()];
        fail(
            step,
            format_args!(
                "kernel #PF at RIP {:#x}, CR2 {addr:#x}, error {:#x} ({})",
                frame.rip,
                frame.error,
                PageFaultError(frame.error)
            ),
        );
    }
    PF_CR2.store(addr, Ordering::SeqCst);
    PF_ERROR.store(frame.error, Ordering::SeqCst);
    PF_RIP.store(frame.rip, Ordering::SeqCst);
    let _ = (frame.rflags, frame.rsp, frame.ss);
    KILLED_BY_PF
}

/// Step 1: CPUID leaf 0x16 against the hypervisor's timing leaf.
fn check_frequency_leaf() {
    let max = cpuid(0).eax;
    let under_hypervisor = cpuid(1).ecx & (1 << 31) != 0;
    let hv_max = if under_hypervisor {
        cpuid(0x4000_0000).eax
    } else {
        0
    };
    let tsc_khz = if (0x4000_0010..0x5000_0000).contains(&hv_max) {
        cpuid(0x4000_0010).eax
    } else {
        0
    };
    if tsc_khz == 0 {
        println!("usermode: no TSC frequency from the hypervisor, leaf 0x16 not checked");
        return;
    }
    if max < 0x16 {
        fail(
            "cpuid leaf 0x16",
            format_args!("maximum basic leaf {max:#x} < 0x16"),
        );
    }
    let f = cpuid(0x16);
    let (base, top, bus) = (f.eax & 0xffff, f.ebx & 0xffff, f.ecx & 0xffff);
    if base == 0 || (base * 1000).abs_diff(tsc_khz) > 500 {
        fail(
            "cpuid leaf 0x16",
            format_args!("base {base} MHz does not match the TSC's {tsc_khz} kHz"),
        );
    }
    println!(
        "usermode: cpuid leaf 0x16 base {base} MHz, max {top} MHz, bus {bus} MHz \
         (max basic leaf {max:#x}, 0x40000010 TSC {tsc_khz} kHz) ok"
    );
}

/// Step 2: nothing inherited.
fn check_msrs_start_at_zero(rdtscp: bool) {
    let mut msrs = [
        ("STAR", IA32_STAR),
        ("LSTAR", IA32_LSTAR),
        ("CSTAR", IA32_CSTAR),
        ("SFMASK", IA32_FMASK),
        ("KERNEL_GS_BASE", IA32_KERNEL_GS_BASE),
        ("TSC_AUX", IA32_TSC_AUX),
    ]
    .as_slice();
    if !rdtscp {
        msrs = &msrs[..5];
    }
    for &(name, msr) in msrs {
        let v = rdmsr(msr);
        if v != 0 {
            fail(
                "initial MSRs",
                format_args!("{name} is {v:#x} at boot, expected 0"),
            );
        }
    }
    println!("usermode: syscall MSRs start at 0");
}

/// Step 3: the MSRs the kernel needs, written, a VM exit, read back.
fn set_and_check_msrs(rdtscp: bool) {
    wrmsr(IA32_EFER, rdmsr(IA32_EFER) | EFER_SCE);
    let values: [(&str, u32, u64); 8] = [
        (
            "STAR",
            IA32_STAR,
            star(selector::KERNEL_CODE, selector::USER_CODE32),
        ),
        (
            "LSTAR",
            IA32_LSTAR,
            usermode_syscall_entry as *const () as u64,
        ),
        // Compatibility-mode SYSCALL is not used; any canonical value.
        ("CSTAR", IA32_CSTAR, 0xffff_8000_0c57_a000),
        ("SFMASK", IA32_FMASK, SFMASK_NIMBOS),
        (
            "KERNEL_GS_BASE",
            IA32_KERNEL_GS_BASE,
            &PERCPU as *const PerCpu as u64,
        ),
        ("GS_BASE", IA32_GS_BASE, 0),
        ("FS_BASE", IA32_FS_BASE, 0x7f12_3456_7000),
        ("TSC_AUX", IA32_TSC_AUX, 0x2a),
    ];
    let n = if rdtscp { 8 } else { 7 };
    for &(_, msr, v) in &values[..n] {
        wrmsr(msr, v);
    }
    // A VM exit between the writes and the reads.
    let _ = cpuid(0);
    if rdmsr(IA32_EFER) & EFER_SCE == 0 {
        fail("MSRs across exits", format_args!("EFER.SCE lost"));
    }
    for &(name, msr, v) in &values[..n] {
        let got = rdmsr(msr);
        if got != v {
            fail(
                "MSRs across exits",
                format_args!("{name} reads {got:#x}, wrote {v:#x}"),
            );
        }
    }
    if rdtscp {
        let aux: u32;
        // SAFETY: RDTSCP exists (CPUID) and only writes EDX:EAX and ECX.
        unsafe {
            core::arch::asm!("rdtscp", out("eax") _, out("edx") _, out("ecx") aux,
                options(nomem, nostack, preserves_flags));
        }
        if aux != 0x2a {
            fail(
                "MSRs across exits",
                format_args!("RDTSCP returns TSC_AUX {aux:#x}, wrote 0x2a"),
            );
        }
    }
    println!(
        "usermode: MSRs persist across exits ok (EFER.SCE STAR LSTAR CSTAR SFMASK \
         KERNEL_GS_BASE FS_BASE{})",
        if rdtscp {
            " TSC_AUX, RDTSCP"
        } else {
            "; no RDTSCP"
        }
    );
}

fn cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 at CPL 0 has no side effect.
    unsafe {
        core::arch::asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

fn flush_tlb() {
    // SAFETY: reloading CR3 with its own value only drops cached
    // translations.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) cr3(), options(nostack, preserves_flags)) };
}

/// The runtime's PML4 (identity mapped, from CR3).
fn pml4() -> *mut u64 {
    (cr3() & 0x000f_ffff_ffff_f000) as *mut u64
}

/// Step 4: GDT, TSS, IDT.
fn install_descriptor_tables(t: &mut Tables) -> u64 {
    let rsp0 = (&raw const TRAP_STACK as u64) + core::mem::size_of::<Stack>() as u64;
    PERCPU.kernel_rsp.store(rsp0, Ordering::SeqCst);
    t.tss = Tss::new(rsp0);
    let [tss_lo, tss_hi] = tss_descriptor(&raw const t.tss as u64, TSS_SIZE as u32 - 1);
    t.gdt = [
        0,
        GDT_KERNEL_CODE,
        GDT_KERNEL_DATA,
        GDT_USER_CODE32,
        GDT_USER_DATA,
        GDT_USER_CODE,
        tss_lo,
        tss_hi,
    ];
    let gdtr = DescriptorTablePointer {
        limit: (core::mem::size_of_val(&t.gdt) - 1) as u16,
        base: t.gdt.as_ptr() as u64,
    };
    // SAFETY: the new GDT keeps the runtime's kernel code and data
    // descriptors at the same selectors, so reloading CS (far return),
    // SS and DS/ES changes nothing for the running code; the TSS
    // descriptor points at a static TSS; `t` is static and stays loaded.
    unsafe {
        core::arch::asm!(
            "lgdt [{gdtr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov {tmp:e}, {ds}",
            "mov ss, {tmp:e}",
            "mov ds, {tmp:e}",
            "mov es, {tmp:e}",
            "mov {tmp:e}, {tss}",
            "ltr {tmp:x}",
            gdtr = in(reg) &gdtr,
            cs = const selector::KERNEL_CODE,
            ds = const selector::KERNEL_DATA,
            tss = const selector::TSS,
            tmp = out(reg) _,
        );
    }

    // The IDT: the runtime's exception gates, our #PF, `int 0x80` for ring 3.
    let mut cur = DescriptorTablePointer { limit: 0, base: 0 };
    // SAFETY: SIDT stores the 10-byte IDTR into `cur`.
    unsafe {
        core::arch::asm!("sidt [{}]", in(reg) &mut cur, options(nostack, preserves_flags));
    }
    let n = ((usize::from(cur.limit) + 1) / core::mem::size_of::<Gate>()).min(32);
    for i in 0..n {
        // SAFETY: the runtime's IDT holds `n` gates at its base.
        t.idt[i] = unsafe { (cur.base as *const Gate).add(i).read() };
    }
    t.idt[14] = Gate::interrupt(usermode_pf_entry as *const () as u64, KERNEL_CS);
    t.idt[0x80] = Gate::interrupt(usermode_int80_entry as *const () as u64, KERNEL_CS).with_dpl(3);
    let idtr = DescriptorTablePointer {
        limit: (core::mem::size_of_val(&t.idt) - 1) as u16,
        base: t.idt.as_ptr() as u64,
    };
    // SAFETY: the table is static and complete for every vector used.
    unsafe { load_idt(&idtr) };
    rsp0
}

/// Step 5 (mapping): the user pages under PML4 entry 1.
fn map_user_pages(t: &mut Tables) {
    let code = usermode_user_start as *const () as u64;
    if code & 0xfff != 0 {
        fail(
            "user mapping",
            format_args!("user code at {code:#x} is not page aligned"),
        );
    }
    let user_table = pte::P | pte::RW | pte::US;
    let [l4, l3, l2, l1] = table_indices(USER_CODE_VA);
    t.user_pdpt.0[l3] = (&raw const t.user_pd as u64) | user_table;
    t.user_pd.0[l2] = (&raw const t.user_pt as u64) | user_table;
    t.user_pt.0[l1] = code | pte::P | pte::US;
    t.user_pt.0[table_indices(USER_STACK_VA)[3]] =
        (&raw const t.user_stack as u64) | pte::P | pte::RW | pte::US;
    t.user_pt.0[table_indices(USER_UNMAPPED_VA)[3]] = 0;
    // SAFETY: the runtime's PML4 is identity mapped and writable; entry 1
    // is unused by it (it maps only the first 4 GiB through entry 0).
    unsafe {
        pml4()
            .add(l4)
            .write_volatile((&raw const t.user_pdpt as u64) | user_table)
    };
    flush_tlb();
}

/// Step 5: ring 3.
fn run_user_task() {
    // The per-CPU data `swapgs` brings in must have kept its address.
    let kgs = rdmsr(IA32_KERNEL_GS_BASE);
    if kgs != &PERCPU as *const PerCpu as u64 {
        fail("ring 3", format_args!("KERNEL_GS_BASE is {kgs:#x}"));
    }
    // SAFETY: the GDT, TSS, IDT, SYSCALL MSRs and user pages are set up;
    // the task only returns through `usermode_resume_kernel`.
    let result = unsafe { usermode_enter_user(USER_CODE_VA, USER_STACK_VA + 0x1000) };
    let r = |i: usize| REPORT[i].load(Ordering::SeqCst);
    if result != KILLED_BY_PF {
        fail(
            "ring 3",
            format_args!(
                "the task ended with {result:#x}, not by the #PF (reports {:x?})",
                REPORT.each_ref().map(|a| a.load(Ordering::SeqCst))
            ),
        );
    }
    if rdmsr(IA32_GS_BASE) != 0 || rdmsr(IA32_KERNEL_GS_BASE) != kgs {
        fail("ring 3", format_args!("GS bases not back after the task"));
    }
    let msg_len = USER_MSG_LEN;
    let kernel_df = KERNEL_RFLAGS.load(Ordering::SeqCst) & RFLAGS_DF;
    let checks = [
        ("CPL in ring 3", r(R_CPL) == 3),
        ("write result", r(R_WRITE) == msg_len),
        ("RBX/R12/RSP kept across syscall", r(R_REGS_KEPT) == 1),
        ("getpid via syscall", r(R_GETPID) == PID),
        ("SFMASK clears DF in the kernel", kernel_df == 0),
        ("SYSRETQ restores DF from R11", r(R_DF_AFTER_SYSRET) == 1),
        ("getpid via int 0x80", r(R_GETPID_INT80) == PID),
    ];
    for (what, ok) in checks {
        if !ok {
            fail(
                "ring 3",
                format_args!(
                    "{what} (reports {:x?}, kernel RFLAGS {:#x})",
                    REPORT.each_ref().map(|a| a.load(Ordering::SeqCst)),
                    KERNEL_RFLAGS.load(Ordering::SeqCst)
                ),
            );
        }
    }
    println!(
        "usermode: ring 3 ok: CPL {}, write -> {}, getpid -> {} (syscall), {} (int 0x80), \
         registers kept, SFMASK cleared DF, SYSRETQ restored it",
        r(R_CPL),
        r(R_WRITE),
        r(R_GETPID),
        r(R_GETPID_INT80)
    );
    let (addr, err, rip) = (
        PF_CR2.load(Ordering::SeqCst),
        PageFaultError(PF_ERROR.load(Ordering::SeqCst)),
        PF_RIP.load(Ordering::SeqCst),
    );
    if addr != FAULT_ADDR || !err.user() || err.present() || err.write() || err.fetch() {
        fail(
            "user #PF",
            format_args!("CR2 {addr:#x}, error {:#x} ({err})", err.0),
        );
    }
    if !(USER_CODE_VA..USER_CODE_VA + 0x1000).contains(&rip) {
        fail(
            "user #PF",
            format_args!("RIP {rip:#x} outside the user code"),
        );
    }
    println!(
        "usermode: user #PF ok: CR2 {addr:#x}, error {:#x} ({err}), RIP {rip:#x}",
        err.0
    );
}

/// Step 6: one 1 GiB page.
fn check_giant_page(t: &mut Tables) {
    let ext = cpuid(0x8000_0000).eax >= 0x8000_0001;
    if !ext || cpuid(0x8000_0001).edx & (1 << 26) == 0 {
        println!("usermode: 1 GiB pages not offered (CPUID 0x80000001 EDX[26] = 0), skipped");
        return;
    }
    println!("usermode: 1 GiB pages offered (CPUID 0x80000001 EDX[26] = 1)");
    let [l4, l3, _, _] = table_indices(GIANT_VA);
    t.giant_pdpt.0[l3] = pte::P | pte::RW | pte::PS; // physical 0
    // SAFETY: as in `map_user_pages`, PML4 entry 2 is unused.
    unsafe {
        pml4()
            .add(l4)
            .write_volatile((&raw const t.giant_pdpt as u64) | pte::P | pte::RW)
    };
    flush_tlb();
    let header = GIANT_VA + 0x20_0000;
    let cell = &GIANT_CELL as *const AtomicU64 as u64;
    // SAFETY: both addresses lie in the first GiB, mapped by the new PDPTE
    // onto the image start (the multiboot header) and `GIANT_CELL`; the
    // cell is an atomic, so writing it through another address is sound.
    let (magic, value) = unsafe {
        (
            ((header) as *const u32).read_volatile(),
            ((GIANT_VA + cell) as *const u64).read_volatile(),
        )
    };
    if magic != HEADER_MAGIC || value != GIANT_CELL.load(Ordering::SeqCst) {
        fail(
            "1 GiB page",
            format_args!("read {magic:#x} and {value:#x} through it"),
        );
    }
    // SAFETY: as above.
    unsafe { ((GIANT_VA + cell) as *mut u64).write_volatile(0x600d_f00d_0000_0001) };
    if GIANT_CELL.load(Ordering::SeqCst) != 0x600d_f00d_0000_0001 {
        fail(
            "1 GiB page",
            format_args!("a write through it was not seen"),
        );
    }
    println!("usermode: read and wrote through a 1 GiB page ok");
}

fn main(_mb_info: u32) -> ! {
    check_frequency_leaf();
    let rdtscp = has_rdtscp();
    check_msrs_start_at_zero(rdtscp);
    set_and_check_msrs(rdtscp);
    // SAFETY: one CPU, nothing else touches the tables; the CPU reads them
    // once they are loaded, and they are static.
    let t = unsafe { &mut *TABLES.0.get() };
    let rsp0 = install_descriptor_tables(t);
    map_user_pages(t);
    println!("usermode: GDT with ring-3 segments, TSS RSP0 {rsp0:#x}; entering ring 3 with IRETQ");
    STEP.store(1, Ordering::SeqCst);
    run_user_task();
    STEP.store(2, Ordering::SeqCst);
    check_giant_page(t);
    println!("usermode: ok");
    exit(EXIT_PASS)
}
