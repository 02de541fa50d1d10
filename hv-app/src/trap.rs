//! The IDT and the handlers of the 32 exception vectors.
//!
//! Each vector has a tiny assembly stub that pushes a zero if the CPU
//! pushes no error code (so every frame has the same shape), then the
//! vector, and jumps to a common path that saves the general registers and
//! calls [`exception_handler`] with a pointer to the [`TrapFrame`]. The
//! handler prints the report (`hv_app::exception::write_report`) on the
//! console and ends the run with `ExitCode::Exception` (QEMU status 9): an
//! exception in hv-app is a bug, and a report beats a silent reset.
//!
//! #DF, NMI and #MC run on their own IST stacks, so a stack overflow or a
//! broken RSP still gets reported.

use core::arch::global_asm;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

use hv_app::descriptor::{DescriptorTablePointer, GateType, idt_gate};
use hv_app::exception::{
    DOUBLE_FAULT, ERROR_CODE_VECTORS, MACHINE_CHECK, NMI, TrapFrame, write_report,
};
use hv_app::port::ExitCode;

use crate::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI, KERNEL_CS};
use crate::{console, cpu, cpu_local, pio};

global_asm!(
    r#"
    .macro exc_stub vec
    .balign 16
1:
    .if (({mask} >> \vec) & 1) == 0
    pushq $0
    .endif
    pushq $\vec
    jmp exc_common
    .pushsection .rodata.exc_stub_table, "a"
    .quad 1b
    .popsection
    .endm

    .pushsection .rodata.exc_stub_table, "a"
    .balign 8
exc_stub_table:
    .popsection

    .section .text.exception_stubs, "ax"
    exc_stub 0
    exc_stub 1
    exc_stub 2
    exc_stub 3
    exc_stub 4
    exc_stub 5
    exc_stub 6
    exc_stub 7
    exc_stub 8
    exc_stub 9
    exc_stub 10
    exc_stub 11
    exc_stub 12
    exc_stub 13
    exc_stub 14
    exc_stub 15
    exc_stub 16
    exc_stub 17
    exc_stub 18
    exc_stub 19
    exc_stub 20
    exc_stub 21
    exc_stub 22
    exc_stub 23
    exc_stub 24
    exc_stub 25
    exc_stub 26
    exc_stub 27
    exc_stub 28
    exc_stub 29
    exc_stub 30
    exc_stub 31

    /* The CPU aligned RSP to 16 before pushing SS, RSP, RFLAGS, CS, RIP;
       with the error code, the vector and 15 registers the frame is 176
       bytes, so RSP is 16-byte aligned again at the call. */
    .balign 16
exc_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    cld
    call {handler}
    ud2
"#,
    mask = const ERROR_CODE_VECTORS,
    handler = sym exception_handler,
    options(att_syntax)
);

unsafe extern "C" {
    /// The addresses of the 32 stubs, in vector order (built by the
    /// `exc_stub` macro above).
    static exc_stub_table: [u64; 32];
}

/// 256 gates of 16 bytes; vectors 32-255 stay not present until interrupt
/// handlers exist (an interrupt there raises #GP with the IDT bit, which
/// the #GP report decodes as "IDT vector N").
#[repr(C, align(16))]
struct Idt([u128; 256]);

static mut IDT: Idt = Idt([0; 256]);

/// Set while a report is being written: a second exception then only
/// prints one line and powers off, instead of recursing.
static IN_EXCEPTION: AtomicBool = AtomicBool::new(false);

/// The IST index of `vector`'s gate: #DF, NMI and #MC get their own
/// stacks.
fn ist_of(vector: u8) -> u8 {
    match vector {
        DOUBLE_FAULT => IST_DOUBLE_FAULT,
        NMI => IST_NMI,
        MACHINE_CHECK => IST_MACHINE_CHECK,
        _ => 0,
    }
}

/// Fills the 32 exception gates (interrupt gates, DPL 0) and loads the
/// IDT. Call after `gdt::init_bsp` (the gates use its IST stacks); on an
/// AP, only the `lidt` is needed (the table is shared).
pub fn init() {
    // SAFETY: the table is filled by the linker with 32 code addresses.
    let stubs = unsafe { (&raw const exc_stub_table).read() };
    let idt = &raw mut IDT;
    for (vector, &stub) in (0u8..).zip(stubs.iter()) {
        let gate = idt_gate(GateType::Interrupt, stub, KERNEL_CS, ist_of(vector), 0)
            .unwrap_or_else(|e| unreachable!("IST and DPL are in range: {e}"));
        // SAFETY: runs once on the BSP before the IDT is loaded; raw
        // pointer writes, no reference to the `static mut`.
        unsafe { (*idt).0[usize::from(vector)] = gate };
    }
    load();
}

/// Installs an interrupt gate (DPL 0, no IST) at `vector` for `handler`,
/// an interrupt stub ending in `iretq` (`host_timer`'s). Call on the BSP
/// before interrupts are turned on.
pub fn set_interrupt_gate(vector: u8, handler: u64) {
    let gate = idt_gate(GateType::Interrupt, handler, KERNEL_CS, 0, 0)
        .unwrap_or_else(|e| unreachable!("IST 0 and DPL 0 are in range: {e}"));
    let idt = &raw mut IDT;
    // SAFETY: one 16-byte store into the loaded IDT, with interrupts still
    // off on this CPU; raw pointer, no reference to the `static mut`.
    unsafe { (*idt).0[usize::from(vector)] = gate };
}

/// Loads the shared IDT on this CPU: the BSP through [`init`], each AP
/// once its own GDT and TSS are loaded (the gates' IST indexes then pick
/// its own stacks).
pub fn load() {
    let pointer = DescriptorTablePointer::new((&raw const IDT) as u64, 256 * 16)
        .unwrap_or_else(|_| unreachable!("a 4 KiB IDT fits the limit field"));
    // SAFETY: the IDT is a static with valid gates for vectors 0-31 that
    // point at the stubs above, with the kernel code selector (filled by
    // `init` on the BSP before any AP starts).
    unsafe { cpu::load_idt(&pointer) };
}

/// The common exception handler: report, then power off.
extern "C" fn exception_handler(frame: &TrapFrame) -> ! {
    let cr = cpu::control_regs();
    let mut out = console::emergency();
    if IN_EXCEPTION.swap(true, Ordering::SeqCst) {
        let _ = writeln!(
            out,
            "\n[EXCEPTION] vector {} at RIP {:#x} while reporting an exception",
            frame.vector, frame.rip
        );
        pio::power_off(ExitCode::Exception);
    }
    let _ = write_report(&mut out, frame, &cr, cpu_local::current_id());
    pio::power_off(ExitCode::Exception)
}
