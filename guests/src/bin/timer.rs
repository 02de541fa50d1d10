//! `timer`: the local APIC timer and the HPET counter, the way NimbOS and
//! ArceOS use them.
//!
//! 1. Installs a 256-entry IDT (the runtime's exception gates plus a
//!    handler at vector 0xF0 that counts and writes the xAPIC EOI).
//! 2. Software-enables the xAPIC at 0xFEE0_0000 (SVR = 0x1FF), divide by 1
//!    (TDCR = 0xB), LVT timer = 0xF0 one-shot, initial count 1_000_000;
//!    waits with `sti; hlt` for exactly one interrupt and checks the
//!    current count reads 0 afterwards.
//! 3. Periodic mode (LVT timer bit 17), initial count 200_000: waits for
//!    [`PERIODIC_TICKS`] interrupts, then masks the timer.
//! 4. Enables the HPET at 0xFED0_0000 (GEN_CONF.ENABLE), checks GCAP_ID
//!    (64-bit counter, a period of at most 100 ns) and that the main
//!    counter, read with 8-byte loads, advances.
//!
//! 5. x2APIC (SDM vol. 3A 11.12): checks CPUID.1:ECX[21], sets EXTD in
//!    `IA32_APIC_BASE` (0x1B), checks the ID (0x802), version (0x803), LDR
//!    (0x80D) and SVR (0x80F) MSRs, runs the one-shot (current count 0x839
//!    counting down) and periodic timers through MSRs 0x832/0x838/0x83E
//!    with EOI through 0x80B, sends itself vector 0xE0 through SELF_IPI
//!    (0x83F), and checks the xAPIC page no longer answers as the APIC.
//!
//! Before all that, checks CPUID leaf 0x4000_0010 (TSC and APIC bus kHz).
//!
//! Prints `timer: one-shot ok`, `timer: periodic N ticks ok`,
//! `timer: hpet counter advances ok`, then the `timer: x2apic ... ok`
//! lines, and exits 0; any failure prints `timer: FAIL <step>` and exits 1.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use guest_rt::idt::{DescriptorTablePointer, Gate, KERNEL_CS, load_idt};
use guest_rt::{EXIT_FAIL, EXIT_PASS, entry, exit, println};

entry!(main);

/// The xAPIC page.
const LAPIC: u64 = 0xfee0_0000;
/// The HPET block.
const HPET: u64 = 0xfed0_0000;
/// The timer vector NimbOS and ArceOS use.
const TIMER_VECTOR: u8 = 0xf0;
/// The vector of the x2APIC self-IPI.
const IPI_VECTOR: u8 = 0xe0;
/// `IA32_APIC_BASE`: bit 10 EXTD (x2APIC mode), bit 11 EN (SDM 11.4.4).
const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_EN: u64 = 1 << 11;
/// x2APIC MSRs (0x800 + xAPIC offset / 16, SDM table 11-6).
mod x2 {
    pub const ID: u32 = 0x802;
    pub const VERSION: u32 = 0x803;
    pub const TPR: u32 = 0x808;
    pub const LDR: u32 = 0x80d;
    pub const SVR: u32 = 0x80f;
    /// In-service bits of vectors 255:224 (ISR at xAPIC 0x170).
    pub const ISR7: u32 = 0x817;
    /// Requested bits of vectors 255:224 (IRR at xAPIC 0x270).
    pub const IRR7: u32 = 0x827;
    pub const LVT_TIMER: u32 = 0x832;
    pub const TIMER_INITIAL: u32 = 0x838;
    pub const TIMER_CURRENT: u32 = 0x839;
    pub const TIMER_DIVIDE: u32 = 0x83e;
    pub const SELF_IPI: u32 = 0x83f;
}
/// Periodic interrupts to wait for.
const PERIODIC_TICKS: u32 = 5;
/// Most `hlt`s to wait for any interrupt (each one waits for a deadline).
const MAX_HALTS: u32 = 10_000;

/// Interrupts taken at [`TIMER_VECTOR`] (incremented by the handler).
#[unsafe(no_mangle)]
static TIMER_TICKS: AtomicU32 = AtomicU32::new(0);

core::arch::global_asm!(
    r#"
    .section .text.timer_isr, "ax"
    .code64
    .global timer_isr
timer_isr:
    pushq %rax
    lock incl TIMER_TICKS(%rip)
    jmp 1f
    .global ipi_isr
ipi_isr:
    pushq %rax
    lock incl IPI_COUNT(%rip)
1:  cmpb $0, X2APIC_ON(%rip)
    jne 2f
    movl $0xfee000b0, %eax
    movl $0, (%rax)             /* xAPIC EOI */
    popq %rax
    iretq
2:  pushq %rcx
    pushq %rdx
    movl $0x80b, %ecx           /* x2APIC EOI MSR */
    xorl %eax, %eax
    xorl %edx, %edx
    wrmsr
    popq %rdx
    popq %rcx
    popq %rax
    iretq
"#,
    options(att_syntax)
);

/// Self-IPIs taken at [`IPI_VECTOR`] (incremented by the handler).
#[unsafe(no_mangle)]
static IPI_COUNT: AtomicU32 = AtomicU32::new(0);

/// Non-zero once the local APIC is in x2APIC mode: the handlers then
/// signal EOI through MSR 0x80B instead of the xAPIC page.
#[unsafe(no_mangle)]
static X2APIC_ON: AtomicU8 = AtomicU8::new(0);

unsafe extern "C" {
    /// The interrupt handler of [`TIMER_VECTOR`] (assembly above).
    fn timer_isr();
    /// The interrupt handler of [`IPI_VECTOR`] (assembly above).
    fn ipi_isr();
}

/// The 256-gate IDT.
#[repr(C, align(16))]
struct Idt([Gate; 256]);

static mut IDT: Idt = Idt([Gate::MISSING; 256]);

fn install_idt() {
    let mut cur = DescriptorTablePointer { limit: 0, base: 0 };
    // SAFETY: SIDT stores the 10-byte IDTR into `cur`.
    unsafe {
        core::arch::asm!("sidt [{}]", in(reg) &mut cur, options(nostack, preserves_flags));
    }
    let n = (usize::from(cur.limit) + 1) / core::mem::size_of::<Gate>();
    // SAFETY: one CPU, interrupts off; IDT is only touched here before
    // being loaded, and the runtime's table holds `n` valid gates.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        let old = cur.base as *const Gate;
        for (i, gate) in idt.0.iter_mut().enumerate().take(n.min(32)) {
            *gate = old.add(i).read();
        }
        idt.0[usize::from(TIMER_VECTOR)] =
            Gate::interrupt(timer_isr as *const () as u64, KERNEL_CS);
        idt.0[usize::from(IPI_VECTOR)] = Gate::interrupt(ipi_isr as *const () as u64, KERNEL_CS);
        let ptr = DescriptorTablePointer {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: idt as *const Idt as u64,
        };
        load_idt(&ptr);
    }
}

// The accesses are plain MOVs in inline assembly: the compiler may fold a
// volatile load into a CMP, which the hypervisor's MMIO decoder refuses.

fn lapic_write(reg: u64, val: u32) {
    // SAFETY: an aligned 32-bit store to the xAPIC page, which is device
    // memory (mapped uncached by the runtime), no Rust object.
    unsafe {
        core::arch::asm!("mov dword ptr [{}], {:e}", in(reg) LAPIC + reg, in(reg) val,
            options(nostack, preserves_flags));
    }
}

fn lapic_read(reg: u64) -> u32 {
    let v: u32;
    // SAFETY: as in `lapic_write`, a load.
    unsafe {
        core::arch::asm!("mov {:e}, dword ptr [{}]", out(reg) v, in(reg) LAPIC + reg,
            options(nostack, preserves_flags, readonly));
    }
    v
}

fn hpet_read(reg: u64) -> u64 {
    let v: u64;
    // SAFETY: an aligned 8-byte load from the HPET block (device memory).
    unsafe {
        core::arch::asm!("mov {}, qword ptr [{}]", out(reg) v, in(reg) HPET + reg,
            options(nostack, preserves_flags, readonly));
    }
    v
}

fn hpet_write(reg: u64, val: u64) {
    // SAFETY: an aligned 8-byte store to the HPET block (device memory).
    unsafe {
        core::arch::asm!("mov qword ptr [{}], {}", in(reg) HPET + reg, in(reg) val,
            options(nostack, preserves_flags));
    }
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR of an MSR the hypervisor emulates (IA32_APIC_BASE or
    // the x2APIC range); it only reads.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

fn wrmsr(msr: u32, value: u64) {
    // SAFETY: WRMSR of a local APIC MSR; it changes no memory.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32,
            in("edx") (value >> 32) as u32, options(nostack, preserves_flags));
    }
}

/// Halts with interrupts on until `ticks` timer interrupts were counted;
/// false if [`MAX_HALTS`] halts went by first. Leaves interrupts off.
fn wait_ticks(ticks: u32) -> bool {
    for _ in 0..MAX_HALTS {
        if TIMER_TICKS.load(Ordering::SeqCst) >= ticks {
            // SAFETY: CLI only clears RFLAGS.IF.
            unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
            return true;
        }
        // SAFETY: STI; HLT waits for the next interrupt (the STI shadow
        // covers HLT, so none is lost in between); the IDT is installed.
        unsafe { core::arch::asm!("sti", "hlt", options(nomem, nostack)) };
    }
    // SAFETY: as above.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
    TIMER_TICKS.load(Ordering::SeqCst) >= ticks
}

fn fail(what: &str) -> ! {
    println!("timer: FAIL {what}");
    exit(EXIT_FAIL)
}

fn main(_info: u32) -> ! {
    install_idt();
    let version = lapic_read(0x30);
    println!(
        "timer: local APIC ID {:#x}, version {version:#x}",
        lapic_read(0x20) >> 24
    );
    // The hypervisor's timing leaf: TSC and APIC bus frequencies in kHz.
    let max = core::arch::x86_64::__cpuid(0x4000_0000).eax;
    let timing = core::arch::x86_64::__cpuid(0x4000_0010);
    if max < 0x4000_0010 || timing.eax == 0 || timing.ebx == 0 {
        fail("CPUID 0x40000010 gives no TSC or APIC bus frequency");
    }
    println!(
        "timer: cpuid tsc {} kHz, apic bus {} kHz ok",
        timing.eax, timing.ebx
    );
    lapic_write(0xf0, 0x1ff); // SVR: software enable, spurious vector 0xFF
    lapic_write(0x3e0, 0xb); // TDCR: divide by 1

    // One-shot.
    lapic_write(0x320, u32::from(TIMER_VECTOR));
    lapic_write(0x380, 1_000_000);
    if !wait_ticks(1) {
        fail("no one-shot interrupt");
    }
    let cur = lapic_read(0x390);
    if cur != 0 {
        fail("one-shot current count is not 0 after expiry");
    }
    // No second interrupt from a one-shot timer.
    for _ in 0..1000 {
        core::hint::spin_loop();
    }
    if TIMER_TICKS.load(Ordering::SeqCst) != 1 {
        fail("one-shot timer fired more than once");
    }
    println!("timer: one-shot ok");

    // Periodic.
    lapic_write(0x320, (1 << 17) | u32::from(TIMER_VECTOR));
    lapic_write(0x380, 200_000);
    if !wait_ticks(1 + PERIODIC_TICKS) {
        fail("periodic interrupts stopped");
    }
    lapic_write(0x320, 1 << 16); // mask
    lapic_write(0x380, 0);
    println!("timer: periodic {PERIODIC_TICKS} ticks ok");

    // HPET.
    let cap = hpet_read(0);
    let period_fs = cap >> 32;
    if cap & (1 << 13) == 0 || period_fs == 0 || period_fs > 100_000_000 {
        fail("HPET capabilities");
    }
    hpet_write(0x10, 1); // GEN_CONF.ENABLE
    let a = hpet_read(0xf0);
    let mut b = a;
    for _ in 0..100_000 {
        b = hpet_read(0xf0);
        if b > a {
            break;
        }
        core::hint::spin_loop();
    }
    if b <= a {
        fail("HPET main counter does not advance");
    }
    println!("timer: hpet period {period_fs} fs, counter {a} -> {b}");
    println!("timer: hpet counter advances ok");

    x2apic(version);
    exit(EXIT_PASS)
}

/// Halts with interrupts on until `count` self-IPIs were counted (as
/// [`wait_ticks`]). Leaves interrupts off.
fn wait_ipis(count: u32) -> bool {
    for _ in 0..MAX_HALTS {
        if IPI_COUNT.load(Ordering::SeqCst) >= count {
            break;
        }
        // SAFETY: as in `wait_ticks`.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    IPI_COUNT.load(Ordering::SeqCst) >= count
}

/// The x2APIC part (SDM vol. 3A 11.12): the switch through
/// `IA32_APIC_BASE`, the identity registers, both timer modes and a
/// self-IPI through the MSRs, and the xAPIC page gone.
fn x2apic(xapic_version: u32) {
    let leaf1 = core::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 21) == 0 {
        fail("x2apic: CPUID.1:ECX[21] is clear");
    }
    let base = rdmsr(IA32_APIC_BASE);
    if base & APIC_BASE_EN == 0 || base & APIC_BASE_EXTD != 0 {
        fail("x2apic: IA32_APIC_BASE is not in xAPIC mode (EN=1, EXTD=0)");
    }
    wrmsr(IA32_APIC_BASE, base | APIC_BASE_EXTD);
    let now = rdmsr(IA32_APIC_BASE);
    if now != base | APIC_BASE_EXTD {
        fail("x2apic: IA32_APIC_BASE does not read back with EXTD set");
    }
    X2APIC_ON.store(1, Ordering::SeqCst);
    println!("timer: x2apic mode on, IA32_APIC_BASE {base:#x} -> {now:#x}");

    // The 32-bit x2APIC ID is the one CPUID leaf 0xB reports (its 8 low
    // bits the initial APIC ID of leaf 1); the version register is the
    // xAPIC one; the LDR is derived from the ID (SDM 11.12.10.2); the
    // switch keeps the other registers (SVR written in xAPIC mode).
    let id = rdmsr(x2::ID);
    let want_id = if core::arch::x86_64::__cpuid(0).eax >= 0xb {
        core::arch::x86_64::__cpuid_count(0xb, 0).edx
    } else {
        leaf1.ebx >> 24
    };
    if id != u64::from(want_id) {
        fail("x2apic: ID MSR 0x802 is not the CPUID x2APIC ID");
    }
    let ver = rdmsr(x2::VERSION);
    if ver != u64::from(xapic_version) {
        fail("x2apic: version MSR 0x803 differs from the xAPIC version");
    }
    let ldr = rdmsr(x2::LDR);
    if ldr != ((id >> 4) << 16) | (1 << (id & 0xf)) {
        fail("x2apic: LDR MSR 0x80D is not derived from the x2APIC ID");
    }
    if rdmsr(x2::SVR) != 0x1ff {
        fail("x2apic: SVR MSR 0x80F lost its xAPIC value");
    }
    println!("timer: x2apic id {id:#x} version {ver:#x} ldr {ldr:#x} ok");

    // One-shot through the MSRs; the current count counts down. A tick of
    // the xAPIC periodic timer that expired after its last wait (with
    // interrupts off) is still pending in the IRR: masking the LVT does not
    // clear it (SDM 11.5.1). Take it first, so it does not count here.
    // SAFETY: STI; NOP opens an interrupt window after the STI shadow; the
    // IDT is installed; CLI closes it again.
    unsafe { core::arch::asm!("sti", "nop", "nop", "cli", options(nomem, nostack)) };
    TIMER_TICKS.store(0, Ordering::SeqCst);
    const ONE_SHOT: u64 = 20_000_000;
    wrmsr(x2::TIMER_DIVIDE, 0xb);
    wrmsr(x2::LVT_TIMER, u64::from(TIMER_VECTOR));
    wrmsr(x2::TIMER_INITIAL, ONE_SHOT);
    let c1 = rdmsr(x2::TIMER_CURRENT);
    let c2 = rdmsr(x2::TIMER_CURRENT);
    println!("timer: x2apic current count {c1} -> {c2} (initial {ONE_SHOT})");
    if c1 == 0 || c1 > ONE_SHOT || c2 >= c1 {
        fail("x2apic: current count MSR 0x839 does not count down");
    }
    if rdmsr(x2::TIMER_INITIAL) != ONE_SHOT || rdmsr(x2::TIMER_DIVIDE) != 0xb {
        fail("x2apic: initial count or divide MSR does not read back");
    }
    if !wait_ticks(1) {
        fail("x2apic: no one-shot interrupt");
    }
    if rdmsr(x2::TIMER_CURRENT) != 0 {
        fail("x2apic: one-shot current count is not 0 after expiry");
    }
    for _ in 0..1000 {
        core::hint::spin_loop();
    }
    if TIMER_TICKS.load(Ordering::SeqCst) != 1 {
        fail("x2apic: one-shot timer fired more than once");
    }
    println!("timer: x2apic one-shot ok");

    // Periodic.
    wrmsr(x2::LVT_TIMER, (1 << 17) | u64::from(TIMER_VECTOR));
    wrmsr(x2::TIMER_INITIAL, 200_000);
    if !wait_ticks(1 + PERIODIC_TICKS) {
        fail("x2apic: periodic interrupts stopped");
    }
    wrmsr(x2::LVT_TIMER, 1 << 16); // mask
    wrmsr(x2::TIMER_INITIAL, 0);
    println!("timer: x2apic periodic {PERIODIC_TICKS} ticks ok");

    // Self-IPI (SDM 11.12.11): with interrupts off it waits in the IRR,
    // then is delivered once, and its EOI clears the ISR.
    wrmsr(x2::SELF_IPI, u64::from(IPI_VECTOR));
    let bit = 1u64 << (IPI_VECTOR % 32);
    if rdmsr(x2::IRR7) & bit == 0 || rdmsr(x2::ISR7) & bit != 0 {
        fail("x2apic: self-IPI is not pending in the IRR");
    }
    if !wait_ipis(1) {
        fail("x2apic: self-IPI not delivered");
    }
    if IPI_COUNT.load(Ordering::SeqCst) != 1
        || rdmsr(x2::IRR7) & bit != 0
        || rdmsr(x2::ISR7) & bit != 0
    {
        fail("x2apic: self-IPI delivered twice or left in the IRR/ISR");
    }
    println!("timer: x2apic self-ipi {IPI_VECTOR:#x} ok");

    // SDM 11.12.1.2: in x2APIC mode the xAPIC page is not the APIC (it
    // behaves as with the APIC globally disabled): its reads are not the
    // registers and its writes do not reach them.
    let mmio_version = lapic_read(0x30);
    lapic_write(0x80, 0x20); // TPR
    let tpr = rdmsr(x2::TPR);
    println!("timer: x2apic xapic page reads {mmio_version:#x} at 0x30, TPR {tpr:#x}");
    if mmio_version == xapic_version {
        fail("x2apic: the xAPIC page still answers as the APIC");
    }
    if tpr != 0 {
        fail("x2apic: a write to the xAPIC page reached the TPR");
    }
    println!("timer: x2apic xapic page disabled ok");
}
