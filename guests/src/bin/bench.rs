//! `bench`: the exit-cost benchmark guest (issue #5).
//!
//! Times, with RDTSC around [`ITERS`] iterations (after [`WARMUP`]
//! untimed ones), each kind of round trip a guest makes to its hypervisor:
//!
//! | kind | loop body |
//! |---|---|
//! | `empty` | nothing: the loop itself (`dec; jnz`) |
//! | `cpuid` | `cpuid` leaf 0 |
//! | `pio_out` | `out dx, al` to 0x3FF, the scratch register of the COM1 16550 |
//! | `hypercall` | `vmmcall`/`vmcall` with `HC_VERSION` (under a hypervisor only) |
//! | `rdmsr` | `rdmsr` of `IA32_EFER`, which the hypervisor intercepts and emulates |
//! | `mmio_read` | a 32-bit load from the test device at 0xFEB0_0000 (fetch, decode, emulate) |
//! | `self_ipi` | a fixed self-IPI through the xAPIC ICR, taken and EOI'd (no hypervisor only) |
//!
//! On QEMU with `-icount shift=0` the TSC counts executed instructions, so
//! `per` is the path length of one iteration, loop included. Every result
//! is one line (see `guest_rt::bench`), the run ends with `bench: done` and
//! exit code 0. Without a hypervisor (CPUID.1:ECX bit 31 clear, or QEMU's
//! own `TCGTCGTCGTCG` signature in leaf 0x4000_0000) the
//! hypercall is skipped (it would raise #UD) and the MMIO load reaches
//! unassigned memory: that run is the floor. The hypervisor has no virtual
//! local APIC yet, so there the self-IPI is skipped.

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::sync::atomic::AtomicU64;

use guest_rt::bench::{DONE, Measurement, Unsupported};
use guest_rt::hypercall::{HC_VERSION, Instruction, instruction};
use guest_rt::idt::{DescriptorTablePointer, EXCEPTION_VECTORS, Gate, KERNEL_CS, load_idt};
use guest_rt::port::outb;
use guest_rt::{EXIT_PASS, entry, exit, println};

entry!(main);

/// Timed iterations of each kind.
const ITERS: u64 = 10_000;
/// Untimed iterations before: first-use work (page walks, lazy setup in
/// the hypervisor) stays out of the figures.
const WARMUP: u64 = 64;

/// The COM1 scratch register: a port the emulated 16550 owns, without side
/// effects.
const UART_SCRATCH: u16 = 0x3ff;
/// The test device's window (`test_mmio` in configs/test-guest.toml).
const TEST_MMIO: u64 = 0xfeb0_0000;
/// `IA32_EFER`: intercepted by the hypervisor and answered from the VMCB.
const IA32_EFER: u32 = 0xc000_0080;
/// `IA32_APIC_BASE`.
const IA32_APIC_BASE: u32 = 0x1b;

/// The xAPIC's default physical base (Intel SDM vol. 3A, 11.4.1).
const XAPIC_BASE: u64 = 0xfee0_0000;
/// xAPIC register offsets: task priority, EOI, spurious vector, ICR low.
const XAPIC_TPR: u64 = 0x80;
const XAPIC_EOI: u64 = 0xb0;
const XAPIC_SVR: u64 = 0xf0;
const XAPIC_ICR_LOW: u64 = 0x300;
/// SVR: APIC software enable (bit 8) with spurious vector 0xFF.
const SVR_ENABLE: u32 = 0x100 | SPURIOUS_VECTOR as u32;
/// The self-IPI's vector.
const IPI_VECTOR: u8 = 0x40;
/// The spurious-interrupt vector.
const SPURIOUS_VECTOR: u8 = 0xff;
/// ICR low for a fixed, edge interrupt of [`IPI_VECTOR`] to self
/// (destination shorthand 01, bits 19:18).
const ICR_SELF_FIXED: u32 = (1 << 18) | IPI_VECTOR as u32;

/// Self-IPIs taken; incremented by `bench_ipi_handler`.
static IPI_COUNT: AtomicU64 = AtomicU64::new(0);

global_asm!(
    r#"
    .section .text.bench_ipi, "ax"
    .balign 16
bench_ipi_handler:
    push rax
    mov rax, {eoi}
    mov dword ptr [rax], 0
    pop rax
    lock inc qword ptr [rip + {count}]
    iretq

    .balign 16
bench_spurious_handler:
    iretq
"#,
    eoi = const XAPIC_BASE + XAPIC_EOI,
    count = sym IPI_COUNT,
);

unsafe extern "C" {
    /// The self-IPI handler above: EOI, count, `iretq`.
    fn bench_ipi_handler();
    /// The spurious-vector handler above: `iretq` (no EOI, SDM 11.9).
    fn bench_spurious_handler();
}

/// The IDT of the self-IPI kind: the runtime's exception gates plus
/// [`IPI_VECTOR`] and [`SPURIOUS_VECTOR`].
#[repr(C, align(16))]
struct Idt(core::cell::UnsafeCell<[Gate; 256]>);

// SAFETY: one CPU; written only by `install_idt` with interrupts off.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(core::cell::UnsafeCell::new([Gate::MISSING; 256]));

/// The TSC.
fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC reads a counter; CR4.TSD is clear at CPL 0 anyway.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// CPUID (`leaf`, subleaf 0) as EAX, EBX, ECX, EDX.
fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// RDMSR of `msr`.
fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: only called for MSRs every x86-64 CPU has (EFER, APIC_BASE
    // when CPUID says there is an APIC); reading them has no side effect.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// `n` iterations of nothing.
#[inline(never)]
fn loop_empty(n: u64) {
    // SAFETY: register arithmetic only.
    unsafe {
        asm!("2:", "dec {n}", "jnz 2b", n = inout(reg) n => _, options(nomem, nostack));
    }
}

/// `n` iterations of CPUID leaf 0.
#[inline(never)]
fn loop_cpuid(n: u64) {
    // SAFETY: CPUID only writes EAX..EDX; RBX (reserved by the compiler) is
    // saved and restored around the loop.
    unsafe {
        asm!(
            "mov {save}, rbx",
            "2:",
            "xor eax, eax",
            "cpuid",
            "dec {n}",
            "jnz 2b",
            "mov rbx, {save}",
            n = inout(reg) n => _,
            save = out(reg) _,
            out("eax") _, out("ecx") _, out("edx") _,
            options(nomem, nostack),
        );
    }
}

/// `n` writes of 0 to the COM1 scratch register.
#[inline(never)]
fn loop_pio_out(n: u64) {
    // SAFETY: the scratch register only stores the byte (16550 datasheet);
    // no memory is touched.
    unsafe {
        asm!(
            "2:",
            "out dx, al",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) n => _,
            in("dx") UART_SCRATCH, in("al") 0u8,
            options(nomem, nostack),
        );
    }
}

/// `n` `HC_VERSION` hypercalls with `vmmcall`.
#[inline(never)]
fn loop_vmmcall(n: u64) {
    // SAFETY: only called under a hypervisor (CPUID.1:ECX bit 31); the
    // hypercall changes RAX and may clobber RDI, RSI, RDX (the ABI).
    unsafe {
        asm!(
            "2:",
            "mov eax, {nr}",
            "vmmcall",
            "dec {n}",
            "jnz 2b",
            nr = const HC_VERSION,
            n = inout(reg) n => _,
            out("rax") _, out("rdi") _, out("rsi") _, out("rdx") _,
            options(nostack),
        );
    }
}

/// `n` `HC_VERSION` hypercalls with `vmcall`.
#[inline(never)]
fn loop_vmcall(n: u64) {
    // SAFETY: as for `loop_vmmcall`, on Intel VMX.
    unsafe {
        asm!(
            "2:",
            "mov eax, {nr}",
            "vmcall",
            "dec {n}",
            "jnz 2b",
            nr = const HC_VERSION,
            n = inout(reg) n => _,
            out("rax") _, out("rdi") _, out("rsi") _, out("rdx") _,
            options(nostack),
        );
    }
}

/// `n` RDMSRs of `IA32_EFER`.
#[inline(never)]
fn loop_rdmsr(n: u64) {
    // SAFETY: reading EFER has no side effect; only EAX, EDX change.
    unsafe {
        asm!(
            "2:",
            "rdmsr",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) n => _,
            in("ecx") IA32_EFER,
            out("eax") _, out("edx") _,
            options(nomem, nostack),
        );
    }
}

/// `n` 32-bit loads from the test device's first register.
#[inline(never)]
fn loop_mmio_read(n: u64) {
    // SAFETY: the runtime maps the device GiB identity, uncached; the
    // address is a device window (or unassigned memory), no Rust object.
    unsafe {
        asm!(
            "2:",
            "mov eax, dword ptr [{p}]",
            "dec {n}",
            "jnz 2b",
            p = in(reg) TEST_MMIO,
            n = inout(reg) n => _,
            out("eax") _,
            options(nostack, readonly),
        );
    }
}

/// `n` self-IPIs, each waited for: ICR write, delivery, handler with EOI,
/// `iretq`. Interrupts are on only inside the loop.
#[inline(never)]
fn loop_self_ipi(n: u64) {
    // SAFETY: `setup_self_ipi` enabled the xAPIC at its default base, masked
    // the 8259s and installed handlers for the two vectors that can come;
    // the handler changes only IPI_COUNT and the APIC's EOI register.
    unsafe {
        asm!(
            "mov rcx, qword ptr [{cnt}]",
            "sti",
            "2:",
            "inc rcx",
            "mov dword ptr [{icr}], {cmd:e}",
            "3:",
            "cmp qword ptr [{cnt}], rcx",
            "jne 3b",
            "dec {n}",
            "jnz 2b",
            "cli",
            cnt = in(reg) IPI_COUNT.as_ptr(),
            icr = in(reg) XAPIC_BASE + XAPIC_ICR_LOW,
            cmd = in(reg) ICR_SELF_FIXED,
            n = inout(reg) n => _,
            out("rcx") _,
        );
    }
}

/// Writes `value` to the xAPIC register at `offset`.
fn xapic_write(offset: u64, value: u32) {
    // SAFETY: the xAPIC page is mapped uncached by the runtime and checked
    // by `setup_self_ipi` to be where IA32_APIC_BASE puts it.
    unsafe { core::ptr::write_volatile((XAPIC_BASE + offset) as *mut u32, value) };
}

/// Readies the self-IPI: checks there is an xAPIC at the default base,
/// masks the 8259 PICs (the firmware left the timer on IRQ 0, vector 8),
/// installs the IDT with the two handlers and software-enables the APIC.
fn setup_self_ipi() -> Result<(), &'static str> {
    if cpuid(1)[3] & (1 << 9) == 0 {
        return Err("CPUID reports no local APIC");
    }
    let base = rdmsr(IA32_APIC_BASE);
    if base & (1 << 11) == 0 {
        return Err("local APIC globally disabled in IA32_APIC_BASE");
    }
    if base & (1 << 10) != 0 {
        return Err("local APIC in x2APIC mode");
    }
    if base & 0xf_ffff_f000 != XAPIC_BASE {
        return Err("local APIC not at the default base 0xfee00000");
    }
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    install_idt();
    xapic_write(XAPIC_TPR, 0);
    xapic_write(XAPIC_SVR, SVR_ENABLE);
    Ok(())
}

/// Loads a 256-entry IDT: the runtime's 32 exception gates (read back with
/// SIDT) plus the self-IPI and spurious handlers.
fn install_idt() {
    let mut cur = DescriptorTablePointer { limit: 0, base: 0 };
    // SAFETY: SIDT stores 10 bytes into `cur`.
    unsafe { asm!("sidt [{}]", in(reg) &mut cur, options(nostack)) };
    // SAFETY: one CPU, interrupts off, nothing else uses IDT yet.
    let table = unsafe { &mut *IDT.0.get() };
    let runtime_gates = (usize::from(cur.limit) + 1) / core::mem::size_of::<Gate>();
    let count = runtime_gates.min(EXCEPTION_VECTORS);
    // SAFETY: the runtime's IDT (a static) holds `runtime_gates` gates at `base`.
    let old = unsafe { core::slice::from_raw_parts(cur.base as *const Gate, count) };
    table[..count].copy_from_slice(old);
    table[usize::from(IPI_VECTOR)] =
        Gate::interrupt(bench_ipi_handler as *const () as u64, KERNEL_CS);
    table[usize::from(SPURIOUS_VECTOR)] =
        Gate::interrupt(bench_spurious_handler as *const () as u64, KERNEL_CS);
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
        base: IDT.0.get() as u64,
    };
    // SAFETY: IDT is a static holding valid gates (or not-present ones).
    unsafe { load_idt(&ptr) };
}

/// Times `body`: [`WARMUP`] untimed iterations, then [`ITERS`] timed.
fn time(kind: &'static str, body: fn(u64)) -> Measurement {
    body(WARMUP);
    let t0 = rdtsc();
    body(ITERS);
    let t1 = rdtsc();
    Measurement {
        kind,
        iters: ITERS,
        cycles: t1.wrapping_sub(t0),
    }
}

/// What QEMU's TCG itself reports in leaf 0x4000_0000: it sets
/// CPUID.1:ECX bit 31 although it is an emulator, not a hypervisor.
const TCG_SIGNATURE: [u8; 12] = *b"TCGTCGTCGTCG";

/// The hypervisor's CPUID signature (leaf 0x4000_0000), if CPUID.1:ECX
/// bit 31 says there is one and it is not QEMU's TCG.
fn hypervisor() -> Option<[u8; 12]> {
    if cpuid(1)[2] & (1 << 31) == 0 {
        return None;
    }
    let [_, b, c, d] = cpuid(0x4000_0000);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&b.to_le_bytes());
    sig[4..8].copy_from_slice(&c.to_le_bytes());
    sig[8..].copy_from_slice(&d.to_le_bytes());
    (sig != TCG_SIGNATURE).then_some(sig)
}

/// The guest's main function.
fn main(_mb_info: u32) -> ! {
    let hv = hypervisor();
    let hv_name = hv
        .as_ref()
        .map_or("none", |s| core::str::from_utf8(s).unwrap_or("?"));
    println!("bench: start hypervisor={hv_name} iters={ITERS} warmup={WARMUP}");

    println!("{}", time("empty", loop_empty));
    println!("{}", time("cpuid", loop_cpuid));
    println!("{}", time("pio_out", loop_pio_out));
    if hv.is_some() {
        let body = match instruction() {
            Instruction::Vmmcall => loop_vmmcall,
            Instruction::Vmcall => loop_vmcall,
        };
        println!("{}", time("hypercall", body));
    } else {
        println!(
            "{}",
            Unsupported {
                kind: "hypercall",
                why: "no hypervisor: the instruction raises #UD",
            }
        );
    }
    println!("{}", time("rdmsr", loop_rdmsr));
    println!("{}", time("mmio_read", loop_mmio_read));
    if hv.is_some() {
        println!(
            "{}",
            Unsupported {
                kind: "self_ipi",
                why: "no virtual LAPIC yet",
            }
        );
    } else {
        match setup_self_ipi() {
            Ok(()) => println!("{}", time("self_ipi", loop_self_ipi)),
            Err(why) => println!(
                "{}",
                Unsupported {
                    kind: "self_ipi",
                    why,
                }
            ),
        }
    }
    println!("{DONE}");
    exit(EXIT_PASS)
}
