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
//! Before all that, checks CPUID leaf 0x4000_0010 (TSC and APIC bus kHz).
//!
//! Prints `timer: one-shot ok`, `timer: periodic N ticks ok`,
//! `timer: hpet counter advances ok` and exits 0; any failure exits 1.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use guest_rt::idt::{DescriptorTablePointer, Gate, KERNEL_CS, load_idt};
use guest_rt::{EXIT_FAIL, EXIT_PASS, entry, exit, println};

entry!(main);

/// The xAPIC page.
const LAPIC: u64 = 0xfee0_0000;
/// The HPET block.
const HPET: u64 = 0xfed0_0000;
/// The timer vector NimbOS and ArceOS use.
const TIMER_VECTOR: u8 = 0xf0;
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
    movl $0xfee000b0, %eax
    movl $0, (%rax)             /* xAPIC EOI */
    popq %rax
    iretq
"#,
    options(att_syntax)
);

unsafe extern "C" {
    /// The interrupt handler of [`TIMER_VECTOR`] (assembly above).
    fn timer_isr();
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
    exit(EXIT_PASS)
}
