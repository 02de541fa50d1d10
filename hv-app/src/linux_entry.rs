//! The Type-1.5 Linux entry: Linux resumed as the root VM (AMD SVM here,
//! Intel VMX in [`vmx`]).
//!
//! The `axhv` kernel module copies the flat image of the Linux-linked
//! variant (`linker-linux.ld`, linked at the reserved region's physical
//! base) to offset 0 of the region, finds [the header](#header) and calls
//! `entry(cpu, region_phys, region_size)` on every online CPU at once, with
//! interrupts off, from its own (executable) kernel mapping of the region.
//!
//! Per CPU the entry:
//!
//! 1. saves Linux's callee-saved registers on Linux's stack and checks that
//!    the region is where the image was linked (else `-EINVAL`) and that
//!    the CPU number is below [`MAX_CPUS`];
//! 2. maps the page of its CR3-switch code at the kernel address it is
//!    running from in hv-app's own page table (whose entry 0 maps the first
//!    512 GiB 1:1 with 1 GiB pages), loads that CR3 and jumps to the
//!    linked (= physical) address, onto its own per-CPU stack;
//! 3. in Rust ([`linux_cpu_enter`]): copies Linux's kernel half (PML4
//!    entries 256-511) into hv-app's page table, so Linux's GDT/TSS can be
//!    read; checks SVM and nested paging (or VMX, see [`vmx`]); the first
//!    CPU builds the root VM's nested page table or EPT (1:1 over 512
//!    GiB, 1 GiB pages, 2 MiB pages in the first GiB, the hypervisor
//!    region left out) and runs `hv_main` (frame
//!    allocator and heap over the rest of the region, the VM table of
//!    `linux_vms`); sets EFER.SVME and VM_HSAVE_PA; fills the VMCB with
//!    the live Linux state (segments from the GDT, GDTR/IDTR, TR, LDTR,
//!    CR0/CR2/CR3/CR4, EFER, RFLAGS, DR6/DR7, FS/GS/KERNEL_GS bases,
//!    STAR/LSTAR/CSTAR/SFMASK, SYSENTER_*, PAT) with RIP = the module's
//!    return address, RSP = Linux's stack after the return, the
//!    callee-saved registers as Linux had them, RAX = 0 (no instruction of
//!    the region, which the root VM cannot reach, runs in guest mode);
//! 4. runs the root vCPU: the only intercepts are VMRUN, VMMCALL (the
//!    hypercalls of `linux_vms`), CPUID (the SVM bit is hidden), RDMSR and
//!    WRMSR of EFER (SVME is hidden) and SHUTDOWN, plus nested page faults
//!    (an access to the hypervisor region is reported and answered with
//!    #GP), and `HLT` on a CPU offered for a guest VM. No INTR intercept and
//!    no V_INTR_MASKING: Linux's interrupts go straight to Linux.
//!
//! If anything fails before the first VMRUN, the CPU switches back to
//! Linux's CR3 and stack and the entry returns the error to the module.
//! `leave` (disable) returns the CPU to native; a CPU given to a guest VM
//! leaves SVM when the VM ends and waits for Linux's INIT/SIPI.
//!
//! The region must end below 1 GiB.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU32, Ordering};

use x86_vcpu::svm::{InterceptMisc1, InterceptMisc2, Vmcb, VmcbSegment};

use crate::linux_vms::{self, CpuState, MAX_CPUS};
/// Host stack per CPU.
const STACK_SIZE: usize = 32 * 1024;
/// Private hypercall number of `leave` (outside the public ABI's range).
const HC_LEAVE: u32 = 0x4158_0001;

const EINVAL: i64 = -22;
const EIO: i64 = -5;
const EOPNOTSUPP: i64 = -95;
const EPERM: i64 = -1;
const ENOMEM: i64 = -12;
const EBUSY: i64 = -16;

#[repr(C, align(4096))]
struct Table([u64; 512]);

#[repr(C, align(16))]
struct Stacks([[u8; STACK_SIZE]; MAX_CPUS]);

const fn ident_1g() -> Table {
    let mut t = [0u64; 512];
    let mut i = 0;
    while i < 512 {
        // present | writable | page size (1 GiB)
        t[i] = ((i as u64) << 30) | 0x83;
        i += 1;
    }
    Table(t)
}

static mut HOST_PML4: Table = Table([0; 512]);
static mut IDENT_PDPT: Table = ident_1g();
static mut LNX_PDPT: Table = Table([0; 512]);
static mut LNX_PD: Table = Table([0; 512]);
static mut LNX_PT: Table = Table([0; 512]);
static mut HOST_STACKS: Stacks = Stacks([[0; STACK_SIZE]; MAX_CPUS]);

static mut NPT_PML4: Table = Table([0; 512]);
static mut NPT_PDPT: Table = Table([0; 512]);
static mut NPT_PD: Table = Table([0; 512]);
static NPT_STATE: AtomicU32 = AtomicU32::new(0);

/// The root VM's MSR permission map (8 KiB, AMD APM 15.11): only EFER is
/// intercepted, so that Linux sees its own EFER without SVME.
#[repr(C, align(4096))]
struct Msrpm([u8; 8192]);

/// EFER (0xC000_0080): MSRs 0xC000_0000.. start at byte 0x800, two bits
/// each (read, write): bits 0x100 and 0x101 = byte 0x820, bits 0-1.
const fn root_msrpm() -> Msrpm {
    let mut m = [0u8; 8192];
    m[0x820] = 0b11;
    Msrpm(m)
}

static ROOT_MSRPM: Msrpm = root_msrpm();

static mut VMCBS: [Vmcb; MAX_CPUS] = [const { Vmcb::zeroed() }; MAX_CPUS];
static mut HSAVE: [Table; MAX_CPUS] = [const { Table([0; 512]) }; MAX_CPUS];
/// Guest GPRs: RAX (unused: in the VMCB), RCX, RDX, RBX, RSP (unused),
/// RBP, RSI, RDI, R8-R15.
static mut GPRS: [[u64; 16]; MAX_CPUS] = [[0; 16]; MAX_CPUS];
/// Per CPU: link address - the module's (Linux) address of the image.
static mut DELTA: [u64; MAX_CPUS] = [0; MAX_CPUS];
/// Per CPU: what `axhv_leave_native` restores: CR3, RSP, RIP, RFLAGS,
/// RBX, RBP, R12-R15.
static mut LEAVE_STATE: [[u64; 10]; MAX_CPUS] = [[0; 10]; MAX_CPUS];

global_asm!(
    r#"
    .section .text.axhv_linux_header, "ax"
    .balign 16
    .global axhv_linux_header
axhv_linux_header:
    .ascii "AXHVLNX1"
    .long 1                 /* version */
    .long 40                /* header size */
    /* offsets from the header, which linker-linux.ld puts first */
    .quad axhv_linux_entry - axhv_linux_header
    .quad axhv_linux_leave - axhv_linux_header
    .quad __image_end - axhv_linux_header
    /* Boot parameter the module writes before enable (after the 40-byte
       header): Linux's TSC frequency in kHz, 0 if unknown. */
    .global axhv_linux_tsc_khz
axhv_linux_tsc_khz:
    .quad 0

    .balign 16
    .global axhv_linux_entry
axhv_linux_entry:
    endbr64
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq ${einval}, %rax
    movabsq $__image_start, %rcx
    cmpq %rcx, %rsi
    jne .Lax_ret
    cmpl ${max_cpus}, %edi
    jae .Lax_ret

    /* r9 = link address - Linux address */
    leaq axhv_linux_entry(%rip), %r8
    movabsq $axhv_linux_entry, %r9
    subq %r8, %r9
    /* r10 = Linux address of the switch code */
    leaq .Lax_switch(%rip), %r10

    /* host_pml4[0] = ident_pdpt | P | W */
    movabsq ${host_pml4}, %rcx
    subq %r9, %rcx
    movabsq ${ident_pdpt}, %r11
    orq $3, %r11
    movq %r11, (%rcx)
    /* host_pml4[va >> 39] = lnx_pdpt */
    movq %r10, %rax
    shrq $39, %rax
    andq $511, %rax
    movabsq ${lnx_pdpt}, %r11
    orq $3, %r11
    movq %r11, (%rcx,%rax,8)
    /* lnx_pdpt[va >> 30] = lnx_pd */
    movabsq ${lnx_pdpt}, %rcx
    subq %r9, %rcx
    movq %r10, %rax
    shrq $30, %rax
    andq $511, %rax
    movabsq ${lnx_pd}, %r11
    orq $3, %r11
    movq %r11, (%rcx,%rax,8)
    /* lnx_pd[va >> 21] = lnx_pt */
    movabsq ${lnx_pd}, %rcx
    subq %r9, %rcx
    movq %r10, %rax
    shrq $21, %rax
    andq $511, %rax
    movabsq ${lnx_pt}, %r11
    orq $3, %r11
    movq %r11, (%rcx,%rax,8)
    /* lnx_pt[va >> 12] = physical page of the switch code */
    movabsq ${lnx_pt}, %rcx
    subq %r9, %rcx
    movq %r10, %rax
    shrq $12, %rax
    andq $511, %rax
    movq %r10, %r11
    addq %r9, %r11
    andq $-4096, %r11
    orq $3, %r11
    movq %r11, (%rcx,%rax,8)

    movq %cr3, %rbx             /* Linux CR3 */
    movq %rsp, %rbp             /* Linux RSP after the saves */
    movl %edi, %r12d            /* cpu */
    movq %rsi, %r13             /* region physical base */
    movq %rdx, %r14             /* region size */
    leaq .Lax_back(%rip), %r15  /* Linux address of the way back */
    movabsq ${host_pml4}, %rax
    jmp .Lax_switch

    /* One 64-byte block, in one page, mapped at its Linux address in
       both page tables. */
    .balign 64
.Lax_switch:
    movq %rax, %cr3
    movabsq $.Lax_ident, %rax
    jmp *%rax
.Lax_back:
    movq %rbx, %cr3
    movq %rbp, %rsp
    jmp .Lax_ret

.Lax_ident:
    endbr64
    movq %r12, %rax
    incq %rax
    imulq ${stack_size}, %rax
    movabsq ${stacks}, %rsp
    addq %rax, %rsp
    movq %r12, %rdi
    movq %r13, %rsi
    movq %r14, %rdx
    movq %rbp, %rcx
    movq %rbx, %r8
    /* r9 = link address - Linux address, computed above */
    call {enter}
    /* Only on failure: back to Linux with the error in RAX. */
    jmp *%r15

.Lax_ret:
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret

    /* leave_native(state): runs at its Linux address (the module's mapping
       of the region, in both page tables) with SVM already off: back to
       Linux's CR3, stack, callee-saved registers and flags, then to the
       instruction after the module's call of leave. */
    .balign 16
axhv_leave_native:
    movq 0(%rdi), %rax
    movq %rax, %cr3
    movq 8(%rdi), %rsp
    movq 32(%rdi), %rbx
    movq 40(%rdi), %rbp
    movq 48(%rdi), %r12
    movq 56(%rdi), %r13
    movq 64(%rdi), %r14
    movq 72(%rdi), %r15
    pushq 24(%rdi)
    popfq
    jmpq *16(%rdi)

    .balign 16
    .global axhv_linux_leave
axhv_linux_leave:
    endbr64
    movl ${hc_leave}, %eax
    vmmcall
    ret

    /* svm_run(vmcb_pa, gprs): one VMRUN with the guest GPRs of gprs. */
    .text
    .balign 16
axhv_svm_run:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    pushq %rsi
    movq %rdi, %rax
    movq 8(%rsi), %rcx
    movq 16(%rsi), %rdx
    movq 24(%rsi), %rbx
    movq 40(%rsi), %rbp
    movq 56(%rsi), %rdi
    movq 64(%rsi), %r8
    movq 72(%rsi), %r9
    movq 80(%rsi), %r10
    movq 88(%rsi), %r11
    movq 96(%rsi), %r12
    movq 104(%rsi), %r13
    movq 112(%rsi), %r14
    movq 120(%rsi), %r15
    movq 48(%rsi), %rsi
    vmrun
    pushq %rsi
    movq 8(%rsp), %rsi
    movq %rcx, 8(%rsi)
    movq %rdx, 16(%rsi)
    movq %rbx, 24(%rsi)
    movq %rbp, 40(%rsi)
    movq %rdi, 56(%rsi)
    movq %r8, 64(%rsi)
    movq %r9, 72(%rsi)
    movq %r10, 80(%rsi)
    movq %r11, 88(%rsi)
    movq %r12, 96(%rsi)
    movq %r13, 104(%rsi)
    movq %r14, 112(%rsi)
    movq %r15, 120(%rsi)
    popq %rax
    movq %rax, 48(%rsi)
    popq %rsi
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .text
"#,
    einval = const EINVAL,
    max_cpus = const MAX_CPUS,
    stack_size = const STACK_SIZE,
    hc_leave = const HC_LEAVE,
    host_pml4 = sym HOST_PML4,
    ident_pdpt = sym IDENT_PDPT,
    lnx_pdpt = sym LNX_PDPT,
    lnx_pd = sym LNX_PD,
    lnx_pt = sym LNX_PT,
    stacks = sym HOST_STACKS,
    enter = sym linux_cpu_enter,
    options(att_syntax)
);

unsafe extern "C" {
    /// End of the image, `.bss` included (linker-linux.ld).
    static __image_end: u8;
    /// Linux's TSC frequency in kHz as the module wrote it (0: unknown).
    static axhv_linux_tsc_khz: u64;
    fn axhv_svm_run(vmcb_pa: u64, gprs: *mut [u64; 16]);
    fn axhv_leave_native(state_linux_va: u64) -> !;
    static axhv_linux_leave: u8;
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: only architectural MSRs present on every SVM-capable CPU are
    // read here.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn wrmsr(msr: u32, value: u64) {
    // SAFETY: callers write EFER (SVME only), VM_HSAVE_PA and, in x2APIC
    // mode, the ICR (an IPI) and SVR (the enable bit only).
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack))
    };
}

fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// A hypervisor line: held back and written to COM1 (Linux's console
/// too) only where Linux cannot print at the same time (see
/// `console::flush_deferred`).
macro_rules! report {
    ($($arg:tt)*) => {{
        print!($($arg)*);
    }};
}

mod vmx;

/// A segment of the live CPU from Linux's GDT (`sys` for 16-byte system
/// descriptors: TR, LDTR).
fn segment(gdt_base: u64, gdt_limit: u16, selector: u16, sys: bool) -> VmcbSegment {
    let index = u64::from(selector & !7);
    if selector & !3 == 0 || selector & 4 != 0 || index + 7 > u64::from(gdt_limit) {
        return VmcbSegment {
            selector,
            ..VmcbSegment::default()
        };
    }
    // SAFETY: the descriptor lies inside Linux's GDT (checked against its
    // limit), mapped through the kernel half copied into our page table.
    let desc = unsafe { core::ptr::read_volatile((gdt_base + index) as *const u64) };
    let mut base = ((desc >> 16) & 0xff_ffff) | (((desc >> 56) & 0xff) << 24);
    if sys && index + 15 <= u64::from(gdt_limit) {
        // SAFETY: as above, the upper half of a 16-byte descriptor.
        let high = unsafe { core::ptr::read_volatile((gdt_base + index + 8) as *const u64) };
        base |= (high & 0xffff_ffff) << 32;
    }
    let mut limit = ((desc & 0xffff) | ((desc >> 32) & 0xf_0000)) as u32;
    if desc & (1 << 55) != 0 {
        limit = (limit << 12) | 0xfff;
    }
    let attrib = (((desc >> 40) & 0xff) | (((desc >> 52) & 0xf) << 8)) as u16;
    VmcbSegment {
        selector,
        attrib,
        limit,
        base,
    }
}

fn build_npt(region: u64, size: u64) {
    let pml4 = &raw mut NPT_PML4;
    let pdpt = &raw mut NPT_PDPT;
    let pd = &raw mut NPT_PD;
    // SAFETY: only the CPU that won NPT_STATE writes the tables, before
    // any CPU uses them.
    unsafe {
        for j in 0..512u64 {
            let gpa = j << 21;
            let inside = gpa + (1 << 21) > region && gpa < region + size;
            // present | writable | user | 2 MiB
            (*pd).0[j as usize] = if inside { 0 } else { gpa | 0x87 };
        }
        (*pdpt).0[0] = pd as u64 | 0x7;
        for i in 1..512u64 {
            (*pdpt).0[i as usize] = (i << 30) | 0x87;
        }
        (*pml4).0[0] = pdpt as u64 | 0x7;
    }
}

/// The Rust half of the entry, on hv-app's page table and stack. Returns a
/// negative errno if the CPU could not enter; on success it never returns
/// (Linux resumes in guest mode where the entry would have returned).
extern "C" fn linux_cpu_enter(
    cpu: u64,
    region: u64,
    size: u64,
    linux_rsp: u64,
    linux_cr3: u64,
    delta: u64,
) -> i64 {
    let cpu = cpu as usize;
    // SAFETY: DELTA[cpu] belongs to this CPU (cpu < MAX_CPUS: the entry
    // checked it).
    unsafe { (&raw mut DELTA).cast::<u64>().add(cpu).write(delta) };
    // Linux's kernel half, so that its GDT and TSS can be read.
    let host = &raw mut HOST_PML4;
    let linux_pml4 = (linux_cr3 & 0x000f_ffff_ffff_f000) as *const u64;
    // SAFETY: Linux's PML4 is reached through the 1:1 map of entry 0; the
    // copied entries map the same kernel addresses as in Linux (the one
    // we set for the switch code maps it to the same physical page).
    unsafe {
        for i in 256..512 {
            let e = core::ptr::read_volatile(linux_pml4.add(i));
            if e & 1 != 0 {
                (*host).0[i] = e;
            }
        }
        asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack));
    }
    if region + size > 1 << 30 {
        report!("axhv: cpu{cpu}: region {region:#x}+{size:#x} ends above 1 GiB: unsupported\n");
        return EINVAL;
    }
    let intel = vmx::present();
    if intel {
        if let Err(e) = vmx::check(cpu) {
            crate::console::flush_deferred();
            return e;
        }
    } else {
        if cpuid(0x8000_0001, 0)[2] & (1 << 2) == 0 {
            report!("axhv: cpu{cpu}: neither VMX nor SVM: unsupported\n");
            crate::console::flush_deferred();
            return EOPNOTSUPP;
        }
        if cpuid(0x8000_000a, 0)[3] & 1 == 0 {
            report!("axhv: cpu{cpu}: SVM without nested paging: unsupported\n");
            return EOPNOTSUPP;
        }
        if rdmsr(0xc001_0114) & (1 << 4) != 0 {
            report!("axhv: cpu{cpu}: SVM disabled by the firmware (VM_CR.SVMDIS)\n");
            return EPERM;
        }
    }
    // The first CPU in builds the root VM's nested page table and runs
    // hv_main (frame allocator and heap over the rest of the region, the VM
    // table); the others wait for it. A CPU coming back after a guest VM
    // (Linux onlined it again) finds everything done.
    if NPT_STATE
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        if intel {
            vmx::build_ept(region, size);
        } else {
            build_npt(region, size);
        }
        let image_end = (&raw const __image_end) as u64;
        crate::console::defer_output();
        // SAFETY: a word of the image's header, written by the module
        // before the enable and read-only from then on.
        let tsc_khz = unsafe { core::ptr::read_volatile(&raw const axhv_linux_tsc_khz) };
        if tsc_khz != 0 {
            crate::tsc::set_tsc_hz(tsc_khz * 1000);
        }
        let ok = crate::hv_main(crate::Entry::Linux {
            region,
            size,
            image_end,
        });
        // In the all-CPU rendezvous of enable: Linux prints nothing now.
        crate::console::flush_deferred();
        NPT_STATE.store(if ok.is_ok() { 2 } else { 3 }, Ordering::Release);
    }
    loop {
        match NPT_STATE.load(Ordering::Acquire) {
            2 => break,
            3 => {
                report!("axhv: cpu{cpu}: hypervisor setup failed; staying native\n");
                crate::console::flush_deferred();
                return ENOMEM;
            }
            _ => core::hint::spin_loop(),
        }
    }
    linux_vms::set_apic_id(cpu, apic_id());

    // Linux resumes where the entry returns to the module, with the
    // registers the entry saved on Linux's stack: R15, R14, R13, R12, RBX,
    // RBP, then the return address. So no instruction of the hypervisor's
    // region (which the root VM cannot reach) runs in guest mode.
    let gprs = ((&raw mut GPRS) as *mut [u64; 16]).wrapping_add(cpu);
    let stack = linux_rsp as *const u64;
    let mut saved = [0u64; 7];
    for (i, v) in saved.iter_mut().enumerate() {
        // SAFETY: the entry pushed these 7 words on Linux's stack, a kernel
        // address mapped by the copied kernel half.
        *v = unsafe { core::ptr::read_volatile(stack.add(i)) };
    }
    // SAFETY: GPRS[cpu] belongs to this CPU only.
    unsafe {
        let g = &mut *gprs;
        g[15] = saved[0];
        g[14] = saved[1];
        g[13] = saved[2];
        g[12] = saved[3];
        g[3] = saved[4];
        g[5] = saved[5];
    }
    let resume_rip = saved[6];
    let linux_rsp = linux_rsp + 7 * 8;
    if intel {
        let r = vmx::run_root(cpu, gprs, linux_rsp, linux_cr3, resume_rip);
        crate::console::flush_deferred();
        return r;
    }
    svm_root(cpu, gprs, linux_rsp, linux_cr3, resume_rip)
}

/// Runs Linux as the root VM on this CPU with SVM (see the module's
/// documentation); returns a negative errno if the first VMRUN fails.
fn svm_root(
    cpu: usize,
    gprs: *mut [u64; 16],
    linux_rsp: u64,
    linux_cr3: u64,
    resume_rip: u64,
) -> i64 {
    let efer = rdmsr(0xc000_0080) | (1 << 12);
    wrmsr(0xc000_0080, efer);
    wrmsr(0xc001_0117, (&raw mut HSAVE) as u64 + (cpu as u64) * 4096);

    let vmcb_ptr = ((&raw mut VMCBS) as *mut Vmcb).wrapping_add(cpu);
    // SAFETY: VMCB `cpu` belongs to this CPU only (cpu < MAX_CPUS, checked
    // by the entry).
    let vmcb = unsafe { &mut *vmcb_ptr };
    fill_vmcb(vmcb, linux_rsp, linux_cr3, resume_rip, efer);
    let mut first = true;
    loop {
        // SAFETY: the VMCB holds a complete guest state and the controls
        // above; HSAVE is set; EFER.SVME is on.
        unsafe { axhv_svm_run(vmcb_ptr as u64, gprs) };
        let code = vmcb.control.exit_code;
        if first && code == u64::MAX {
            report!("axhv: cpu{cpu}: VMRUN refused the Linux state (VMEXIT_INVALID)\n");
            crate::console::flush_deferred();
            wrmsr(0xc000_0080, efer & !(1 << 12));
            return EIO;
        }
        if first {
            linux_vms::set_cpu_state(cpu, CpuState::Root);
            report!("axhv: cpu{cpu}: Linux runs as the root VM\n");
            first = false;
        }
        vmcb.control.tlb_control = 0;
        // SAFETY: gprs is this CPU's array.
        handle_exit(cpu, vmcb, unsafe { &mut *gprs });
    }
}

/// The segment selectors and descriptor-table registers of the live CPU.
struct LiveSegments {
    cs: u16,
    ss: u16,
    ds: u16,
    es: u16,
    fs: u16,
    gs: u16,
    tr: u16,
    ldtr: u16,
    /// GDTR base and limit.
    gdtr: (u64, u16),
    /// IDTR base and limit.
    idtr: (u64, u16),
}

fn live_segments() -> LiveSegments {
    let (cs, ss, ds, es, fs, gs, tr, ldtr): (u16, u16, u16, u16, u16, u16, u16, u16);
    let mut gdtr = [0u8; 10];
    let mut idtr = [0u8; 10];
    // SAFETY: reads of the live CPU state (no side effects).
    unsafe {
        asm!("mov {0:x}, cs", out(reg) cs, options(nostack));
        asm!("mov {0:x}, ss", out(reg) ss, options(nostack));
        asm!("mov {0:x}, ds", out(reg) ds, options(nostack));
        asm!("mov {0:x}, es", out(reg) es, options(nostack));
        asm!("mov {0:x}, fs", out(reg) fs, options(nostack));
        asm!("mov {0:x}, gs", out(reg) gs, options(nostack));
        asm!("str {0:x}", out(reg) tr, options(nostack));
        asm!("sldt {0:x}", out(reg) ldtr, options(nostack));
        asm!("sgdt [{}]", in(reg) gdtr.as_mut_ptr(), options(nostack));
        asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack));
    }
    let table = |b: [u8; 10]| {
        (
            u64::from_le_bytes(b[2..10].try_into().unwrap_or([0; 8])),
            u16::from_le_bytes([b[0], b[1]]),
        )
    };
    LiveSegments {
        cs,
        ss,
        ds,
        es,
        fs,
        gs,
        tr,
        ldtr,
        gdtr: table(gdtr),
        idtr: table(idtr),
    }
}

fn fill_vmcb(v: &mut Vmcb, rsp: u64, cr3: u64, rip: u64, efer: u64) {
    let (cr0, cr2, cr4, dr6, dr7, rflags): (u64, u64, u64, u64, u64, u64);
    // SAFETY: reads of the live CPU state (no side effects).
    unsafe {
        asm!("mov {}, cr0", out(reg) cr0, options(nostack));
        asm!("mov {}, cr2", out(reg) cr2, options(nostack));
        asm!("mov {}, cr4", out(reg) cr4, options(nostack));
        asm!("mov {}, dr6", out(reg) dr6, options(nostack));
        asm!("mov {}, dr7", out(reg) dr7, options(nostack));
        asm!("pushfq", "pop {}", out(reg) rflags);
    }
    let LiveSegments {
        cs,
        ss,
        ds,
        es,
        fs,
        gs,
        tr,
        ldtr,
        gdtr: (gdt_base, gdt_limit),
        idtr: (idt_base, idt_limit),
    } = live_segments();

    let s = &mut v.save;
    s.cs = segment(gdt_base, gdt_limit, cs, false);
    s.ss = segment(gdt_base, gdt_limit, ss, false);
    s.ds = segment(gdt_base, gdt_limit, ds, false);
    s.es = segment(gdt_base, gdt_limit, es, false);
    s.fs = segment(gdt_base, gdt_limit, fs, false);
    s.gs = segment(gdt_base, gdt_limit, gs, false);
    s.fs.base = rdmsr(0xc000_0100);
    s.gs.base = rdmsr(0xc000_0101);
    s.tr = segment(gdt_base, gdt_limit, tr, true);
    s.ldtr = segment(gdt_base, gdt_limit, ldtr, true);
    s.gdtr = VmcbSegment {
        limit: u32::from(gdt_limit),
        base: gdt_base,
        ..VmcbSegment::default()
    };
    s.idtr = VmcbSegment {
        limit: u32::from(idt_limit),
        base: idt_base,
        ..VmcbSegment::default()
    };
    s.cpl = 0;
    s.efer = efer;
    s.cr0 = cr0;
    s.cr2 = cr2;
    s.cr3 = cr3;
    s.cr4 = cr4;
    s.dr6 = dr6;
    s.dr7 = dr7;
    s.rflags = rflags;
    s.rip = rip;
    s.rsp = rsp;
    s.rax = 0;
    s.star = rdmsr(0xc000_0081);
    s.lstar = rdmsr(0xc000_0082);
    s.cstar = rdmsr(0xc000_0083);
    s.sfmask = rdmsr(0xc000_0084);
    s.kernel_gs_base = rdmsr(0xc000_0102);
    s.sysenter_cs = rdmsr(0x174);
    s.sysenter_esp = rdmsr(0x175);
    s.sysenter_eip = rdmsr(0x176);
    s.g_pat = rdmsr(0x277);

    let c = &mut v.control;
    c.intercept_misc1 =
        (InterceptMisc1::CPUID | InterceptMisc1::SHUTDOWN | InterceptMisc1::MSR_PROT).bits();
    // Linked at its physical address: the static's address is the PA.
    c.msrpm_base_pa = (&raw const ROOT_MSRPM) as u64;
    c.intercept_misc2 = (InterceptMisc2::VMRUN | InterceptMisc2::VMMCALL).bits();
    c.guest_asid = 1;
    c.tlb_control = 1;
    c.np_enable = 1;
    c.n_cr3 = (&raw mut NPT_PML4) as u64;
    c.vintr = 0;
    c.vmcb_clean = 0;
}

/// SVM exit codes handled here (APM vol. 2 appendix C).
const EXIT_CPUID: u64 = 0x72;
const EXIT_HLT: u64 = 0x78;
const EXIT_MSR: u64 = 0x7c;
/// EFER.SVME: the root VM runs with it (VMRUN requires it) but never sees
/// it.
const EFER_SVME: u64 = 1 << 12;
const EXIT_SHUTDOWN: u64 = 0x7f;
const EXIT_VMRUN: u64 = 0x80;
const EXIT_VMMCALL: u64 = 0x81;
const EXIT_NPF: u64 = 0x400;

fn advance(v: &mut Vmcb, len: u64) {
    v.save.rip = if v.control.next_rip != 0 {
        v.control.next_rip
    } else {
        v.save.rip + len
    };
}

fn inject_exception(v: &mut Vmcb, vector: u64, error: Option<u32>) {
    let mut e = vector | (3 << 8) | (1 << 31);
    if let Some(code) = error {
        e |= (1 << 11) | (u64::from(code) << 32);
    }
    v.control.event_inj = e;
}

fn handle_exit(cpu: usize, v: &mut Vmcb, gprs: &mut [u64; 16]) {
    match v.control.exit_code {
        EXIT_CPUID => {
            let leaf = v.save.rax as u32;
            let mut r = cpuid(leaf, gprs[1] as u32);
            if leaf == 0x8000_0001 {
                r[2] &= !(1 << 2);
            }
            v.save.rax = u64::from(r[0]);
            gprs[3] = u64::from(r[1]);
            gprs[1] = u64::from(r[2]);
            gprs[2] = u64::from(r[3]);
            advance(v, 2);
        }
        EXIT_MSR if gprs[1] as u32 == 0xc000_0080 => {
            if v.control.exit_info_1 == 0 {
                let efer = v.save.efer & !EFER_SVME;
                v.save.rax = efer & 0xffff_ffff;
                gprs[2] = efer >> 32;
            } else {
                let value = (gprs[2] << 32) | (v.save.rax & 0xffff_ffff);
                v.save.efer = value | EFER_SVME;
            }
            advance(v, 2);
        }
        EXIT_VMMCALL => {
            let nr = v.save.rax;
            v.save.rax = if v.save.cpl != 0 {
                // Only the root VM's kernel may call the hypervisor; its
                // user space gets -EPERM.
                (-1i64) as u64
            } else if nr == u64::from(HC_LEAVE) {
                report!("axhv: cpu{cpu}: leave is not implemented yet: Linux stays the root VM\n");
                (-38i64) as u64
            } else {
                let args = [gprs[7], gprs[6], gprs[2], gprs[10], gprs[8], gprs[9]];
                linux_vms::hypercall(cpu, nr, &args)
            };
            if linux_vms::cpu_state(cpu) == CpuState::Offered {
                // Offered for a guest VM: Linux's last HLT (interrupts off,
                // the CPU offlined) hands it over.
                v.control.intercept_misc1 |= InterceptMisc1::HLT.bits();
            }
            // Linux on this CPU waits for the hypercall: the hypervisor's
            // held-back lines go out now, whole.
            crate::console::flush_deferred();
            advance(v, 3);
        }
        EXIT_HLT => {
            if v.save.rflags & (1 << 9) == 0 && linux_vms::cpu_state(cpu) == CpuState::Offered {
                report!("axhv: cpu{cpu}: offlined by Linux: now the hypervisor's\n");
                linux_vms::park(cpu);
            }
            // An idle HLT while the CPU is being offlined: Linux's idle
            // loop polls instead for that short time.
            advance(v, 1);
        }
        EXIT_NPF if v.control.exit_info_2 == (&raw const axhv_linux_leave) as u64 => {
            // The module called `leave` (disable or roll back): its code
            // lies in the region the root VM cannot reach, so the fetch
            // faults here. Return from that call natively.
            // SAFETY: the return address the module's call pushed, on
            // Linux's kernel stack (mapped by the copied kernel half).
            let ret = unsafe { core::ptr::read_volatile(v.save.rsp as *const u64) };
            leave_native(cpu, v, gprs, ret, v.save.rsp + 8);
        }
        EXIT_NPF => {
            report!(
                "axhv: cpu{cpu}: root VM tried to access hypervisor memory at GPA {:#x} (RIP {:#x}); injecting #GP\n",
                v.control.exit_info_2,
                v.save.rip
            );
            inject_exception(v, 13, Some(0));
        }
        EXIT_VMRUN => inject_exception(v, 6, None),
        EXIT_SHUTDOWN => {
            report!(
                "axhv: cpu{cpu}: root VM shut down (triple fault) at RIP {:#x}; halting this CPU\n",
                v.save.rip
            );
            halt();
        }
        code => {
            report!(
                "axhv: cpu{cpu}: unexpected root VM exit {code:#x} at RIP {:#x}; halting this CPU\n",
                v.save.rip
            );
            halt();
        }
    }
}

/// Turns SVM off on this CPU and resumes Linux natively at `rip` with
/// stack `rsp`, the root vCPU's CR3, flags and callee-saved registers.
/// Linux's other state (segments, descriptor tables, TR, FS/GS and the
/// syscall MSRs) is still in the CPU: #VMEXIT restores CS/SS/DS/ES,
/// GDTR/IDTR, CR0/CR4 and EFER from the host save area (Linux's at entry)
/// and VMRUN/#VMEXIT leave the rest alone (no VMLOAD/VMSAVE here).
fn leave_native(cpu: usize, v: &Vmcb, gprs: &[u64; 16], rip: u64, rsp: u64) -> ! {
    report!("axhv: cpu{cpu}: leaving: Linux runs natively again\n");
    linux_vms::set_cpu_state(cpu, CpuState::Absent);
    // Disable runs in the all-CPU rendezvous: Linux prints nothing now.
    crate::console::flush_deferred();
    let state = [
        v.save.cr3,
        rsp,
        rip,
        v.save.rflags,
        gprs[3],
        gprs[5],
        gprs[12],
        gprs[13],
        gprs[14],
        gprs[15],
    ];
    wrmsr(0xc001_0117, 0);
    // SAFETY: GIF back to 1 before SVM goes off (as Linux's KVM does), with
    // RFLAGS.IF = 0 (the host flags saved at entry): nothing is taken.
    unsafe { asm!("stgi", options(nostack)) };
    wrmsr(0xc000_0080, rdmsr(0xc000_0080) & !(1 << 12));
    resume_native(cpu, state)
}

/// Jumps back to Linux through `axhv_leave_native` at its Linux address:
/// `state` is CR3, RSP, RIP, RFLAGS, RBX, RBP, R12-R15. Virtualization is
/// off already.
fn resume_native(cpu: usize, state: [u64; 10]) -> ! {
    // SAFETY: LEAVE_STATE[cpu] and DELTA[cpu] belong to this CPU.
    let (state_va, delta) = unsafe {
        let slot = (&raw mut LEAVE_STATE).cast::<[u64; 10]>().add(cpu);
        slot.write(state);
        (
            slot as u64,
            (&raw const DELTA).cast::<u64>().add(cpu).read(),
        )
    };
    let native = (axhv_leave_native as *const () as u64).wrapping_sub(delta);
    // SAFETY: `native` is the Linux (module) address of
    // axhv_leave_native, mapped executable in both page tables; the state
    // it loads is Linux's, at its Linux address.
    let f: extern "C" fn(u64) -> ! = unsafe { core::mem::transmute(native) };
    f(state_va.wrapping_sub(delta))
}

/// This CPU's local APIC id (x2APIC: CPUID 0Bh EDX; xAPIC: CPUID 1
/// EBX[31:24]).
fn apic_id() -> u32 {
    if rdmsr(0x1b) & (1 << 10) != 0 {
        cpuid(0xb, 0)[3]
    } else {
        cpuid(1, 0)[1] >> 24
    }
}

/// Sends a fixed IPI with `vector` to the CPU with local APIC id
/// `apic_id`, through the local APIC in the mode Linux put it in.
pub(crate) fn send_ipi(apic_id: u32, vector: u32) {
    let base = rdmsr(0x1b);
    if base & (1 << 10) != 0 {
        wrmsr(0x830, (u64::from(apic_id) << 32) | u64::from(vector));
    } else {
        let mmio = base & 0x000f_ffff_ffff_f000;
        // SAFETY: the xAPIC page, identity mapped by the hypervisor's page
        // table; ICR high then low (destination, then vector: fixed,
        // physical, assert) sends the IPI.
        unsafe {
            core::ptr::write_volatile((mmio + 0x310) as *mut u32, apic_id << 24);
            core::ptr::write_volatile((mmio + 0x300) as *mut u32, vector | (1 << 14));
        }
    }
}

/// Software-enables this CPU's local APIC (SVR bit 8), which Linux turns
/// off when it offlines a CPU (`apic_soft_disable`): then the fixed IPI of
/// [`send_ipi`] reaches it and makes a guest running here exit. Its LVTs
/// stay masked as Linux left them; INIT clears everything again.
pub(crate) fn enable_local_apic() {
    let base = rdmsr(0x1b);
    if base & (1 << 10) != 0 {
        wrmsr(0x80f, rdmsr(0x80f) | 0x100);
    } else {
        let svr = (base & 0x000f_ffff_ffff_f000) + 0xf0;
        // SAFETY: the xAPIC page, identity mapped; SVR is read and written
        // back with only the enable bit added.
        unsafe {
            let v = core::ptr::read_volatile(svr as *const u32);
            core::ptr::write_volatile(svr as *mut u32, v | 0x100);
        }
    }
}

/// The IDT of a CPU that runs a guest VM (the CPU is Linux's no more):
/// vector 2 (NMI) returns, the other exceptions (0-31) halt the CPU, and
/// every interrupt vector acknowledges the local APIC and returns.
#[repr(C, align(16))]
struct GuestCpuIdt([u64; 512]);

static mut GUEST_CPU_IDT: GuestCpuIdt = GuestCpuIdt([0; 512]);
/// The xAPIC EOI register's address, or 0 in x2APIC mode (MSR 0x80B).
#[unsafe(no_mangle)]
static mut AXHV_EOI_MMIO: u64 = 0;

global_asm!(
    r#"
    .text
    .balign 16
axhv_host_irq:
    pushq %rax
    pushq %rcx
    pushq %rdx
    movq AXHV_EOI_MMIO(%rip), %rax
    testq %rax, %rax
    jz 1f
    movl $0, (%rax)
    jmp 2f
1:  movl $0x80b, %ecx
    xorl %eax, %eax
    xorl %edx, %edx
    wrmsr
2:  popq %rdx
    popq %rcx
    popq %rax
    iretq

    .balign 16
axhv_host_nmi:
    iretq

    .balign 16
axhv_host_fault:
    cli
    hlt
    jmp axhv_host_fault
"#,
    options(att_syntax)
);

unsafe extern "C" {
    fn axhv_host_irq();
    fn axhv_host_nmi();
    fn axhv_host_fault();
}

/// Takes this CPU's host interrupts with the hypervisor's own IDT and turns
/// them on (RFLAGS.IF = 1), for a CPU about to run a guest VM: with the
/// guest's V_INTR_MASKING the host's IF decides whether a physical
/// interrupt (the IPI of [`send_ipi`]) makes the guest exit, and the
/// interrupt is then taken here, acknowledged, and forgotten.
pub(crate) fn host_interrupts_on() {
    let cs: u16;
    // SAFETY: reads CS.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    let base = rdmsr(0x1b);
    let eoi = if base & (1 << 10) != 0 {
        0
    } else {
        (base & 0x000f_ffff_ffff_f000) + 0xb0
    };
    let idt = &raw mut GUEST_CPU_IDT;
    // SAFETY: every guest CPU writes the same values (the gates and the EOI
    // address do not differ between CPUs) before loading the table; no CPU
    // takes an interrupt through it before its own `lidt` below.
    unsafe {
        (&raw mut AXHV_EOI_MMIO).write(eoi);
        for v in 0..256usize {
            let handler = match v {
                2 => axhv_host_nmi as *const () as u64,
                0..32 => axhv_host_fault as *const () as u64,
                _ => axhv_host_irq as *const () as u64,
            };
            // Interrupt gate, present, DPL 0, no IST.
            let low = (handler & 0xffff)
                | (u64::from(cs) << 16)
                | (0x8e << 40)
                | ((handler >> 16) & 0xffff) << 48;
            (*idt).0[2 * v] = low;
            (*idt).0[2 * v + 1] = handler >> 32;
        }
        let mut idtr = [0u8; 10];
        idtr[..2].copy_from_slice(&(4095u16).to_le_bytes());
        idtr[2..].copy_from_slice(&(idt as u64).to_le_bytes());
        asm!("lidt [{}]", "sti", in(reg) idtr.as_ptr(), options(nostack));
    }
}

/// Turns host interrupts off again (before the CPU waits for INIT).
pub(crate) fn host_interrupts_off() {
    // SAFETY: clears RFLAGS.IF.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Leaves SVM on this CPU and halts with interrupts off until Linux's
/// INIT/SIPI (`add_cpu()`) starts it again; the module then enters the
/// hypervisor on it as at enable.
pub(crate) fn wait_for_init(cpu: usize) -> ! {
    let efer = rdmsr(0xc000_0080);
    if efer & (1 << 12) != 0 {
        wrmsr(0xc001_0117, 0);
        // SAFETY: SVM is on (STGI needs it): GIF back to 1 with RFLAGS.IF =
        // 0, so that INIT is taken (it is held while GIF = 0); interrupts
        // stay off. (With SVM already off, the guest VM's runner left GIF
        // at 1.)
        unsafe { asm!("cli", "stgi", options(nostack)) };
        wrmsr(0xc000_0080, efer & !(1 << 12));
    }
    linux_vms::set_cpu_state(cpu, CpuState::Reset);
    report!("axhv: cpu{cpu}: ready to be started again by Linux\n");
    loop {
        // SAFETY: interrupts off: only INIT (Linux's add_cpu) ends this.
        unsafe { asm!("cli; hlt", options(nostack)) };
    }
}

fn halt() -> ! {
    crate::console::flush_deferred();
    loop {
        // SAFETY: parks this CPU (GIF is 0 after #VMEXIT: nothing wakes it).
        unsafe { asm!("cli; hlt", options(nostack)) };
    }
}
