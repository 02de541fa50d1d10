//! CPU exceptions: IDT gate encoding, and on the guest an IDT whose 32
//! exception handlers print `guest: exception N at RIP=...` and end the run
//! with [`EXIT_EXCEPTION`](crate::exit::EXIT_EXCEPTION).
//!
//! Layouts follow the Intel SDM vol. 3A, "64-Bit Mode IDT" (gate
//! descriptors) and "Exception and Interrupt Reference" (which vectors push
//! an error code); the AMD APM vol. 2 section 8.2 lists the same vectors.

/// The number of exception vectors (0..32) the guest IDT covers.
pub const EXCEPTION_VECTORS: usize = 32;

/// The 64-bit code segment selector of the runtime's GDT.
pub const KERNEL_CS: u16 = 0x08;

/// Type and attribute byte of a present, DPL 0, 64-bit interrupt gate
/// (P = 1, DPL = 0, type 0xE).
pub const INTERRUPT_GATE_ATTR: u8 = 0x8e;

/// Whether the CPU pushes an error code for exception `vector`: #DF (8),
/// #TS (10), #NP (11), #SS (12), #GP (13), #PF (14), #AC (17), #CP (21),
/// #VC (29) and #SX (30).
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// The usual mnemonic of exception `vector` (`"#UD"` for 6), or `"reserved"`.
pub const fn mnemonic(vector: u8) -> &'static str {
    match vector {
        0 => "#DE",
        1 => "#DB",
        2 => "NMI",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        9 => "coprocessor segment overrun",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        20 => "#VE",
        21 => "#CP",
        28 => "#HV",
        29 => "#VC",
        30 => "#SX",
        _ => "reserved",
    }
}

/// A 16-byte 64-bit IDT gate descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    /// A not-present gate: taking its vector raises #GP (then #DF).
    pub const MISSING: Self = Self {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// A present DPL 0 interrupt gate to `handler` in code segment
    /// `selector`, without a stack switch (IST 0).
    pub const fn interrupt(handler: u64, selector: u16) -> Self {
        Self {
            offset_low: handler as u16,
            selector,
            ist: 0,
            attr: INTERRUPT_GATE_ATTR,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }

    /// The same gate with descriptor privilege level `dpl` (0-3): an `INT n`
    /// from CPL 3 may use the gate only if its DPL is 3 (otherwise #GP).
    pub const fn with_dpl(self, dpl: u8) -> Self {
        Self {
            attr: (self.attr & !0x60) | ((dpl & 3) << 5),
            ..self
        }
    }

    /// The descriptor as the CPU reads it: bits 0..64 the low quadword.
    pub const fn to_bits(&self) -> u128 {
        (self.offset_low as u128)
            | ((self.selector as u128) << 16)
            | ((self.ist as u128) << 32)
            | ((self.attr as u128) << 40)
            | ((self.offset_mid as u128) << 48)
            | ((self.offset_high as u128) << 64)
            | ((self.reserved as u128) << 96)
    }
}

/// The operand of `lidt`: limit (size in bytes minus 1) and linear base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed)]
pub struct DescriptorTablePointer {
    /// Size of the table in bytes, minus 1.
    pub limit: u16,
    /// Linear address of the table.
    pub base: u64,
}

/// What the exception stubs leave on the stack, lowest address first: the
/// vector and error code they push (0 when the CPU pushes none), then the
/// CPU's interrupt frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct ExceptionFrame {
    /// Exception vector (0..32).
    pub vector: u64,
    /// The CPU's error code, or 0.
    pub error_code: u64,
    /// RIP of the faulting (or, for traps, next) instruction.
    pub rip: u64,
    /// CS at the exception.
    pub cs: u64,
    /// RFLAGS at the exception.
    pub rflags: u64,
    /// RSP at the exception.
    pub rsp: u64,
    /// SS at the exception.
    pub ss: u64,
}

#[cfg(target_os = "none")]
pub use machine::{init, load_idt};

/// The guest's IDT and handlers.
#[cfg(target_os = "none")]
mod machine {
    use core::cell::UnsafeCell;

    use super::{DescriptorTablePointer, EXCEPTION_VECTORS, ExceptionFrame, Gate, KERNEL_CS};
    use crate::exit::{EXIT_EXCEPTION, exit};
    use crate::println;

    core::arch::global_asm!(
        r#"
    .section .text.guest_isr, "ax"
    .code64
    /* One stub per vector: push a zero error code where the CPU pushes
       none, then the vector, and join the common path. */
    .macro GUEST_ISR vec, err
    .balign 16
guest_isr_\vec:
    .if \err == 0
    pushq $0
    .endif
    pushq $\vec
    jmp guest_isr_common
    .endm

    GUEST_ISR 0, 0
    GUEST_ISR 1, 0
    GUEST_ISR 2, 0
    GUEST_ISR 3, 0
    GUEST_ISR 4, 0
    GUEST_ISR 5, 0
    GUEST_ISR 6, 0
    GUEST_ISR 7, 0
    GUEST_ISR 8, 1
    GUEST_ISR 9, 0
    GUEST_ISR 10, 1
    GUEST_ISR 11, 1
    GUEST_ISR 12, 1
    GUEST_ISR 13, 1
    GUEST_ISR 14, 1
    GUEST_ISR 15, 0
    GUEST_ISR 16, 0
    GUEST_ISR 17, 1
    GUEST_ISR 18, 0
    GUEST_ISR 19, 0
    GUEST_ISR 20, 0
    GUEST_ISR 21, 1
    GUEST_ISR 22, 0
    GUEST_ISR 23, 0
    GUEST_ISR 24, 0
    GUEST_ISR 25, 0
    GUEST_ISR 26, 0
    GUEST_ISR 27, 0
    GUEST_ISR 28, 0
    GUEST_ISR 29, 1
    GUEST_ISR 30, 1
    GUEST_ISR 31, 0

guest_isr_common:
    cld
    movq %rsp, %rdi             /* arg 0: &ExceptionFrame */
    andq $-16, %rsp
    call {handler}
    ud2

    .section .rodata.guest_isr_table, "a"
    .balign 8
    .global guest_isr_table
guest_isr_table:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad guest_isr_\v
    .endr
"#,
        handler = sym guest_exception,
        options(att_syntax)
    );

    unsafe extern "C" {
        /// The addresses of the 32 stubs, defined by the assembly above.
        static guest_isr_table: [u64; EXCEPTION_VECTORS];
    }

    /// The IDT: written once by [`init`] before any exception can be taken.
    #[repr(C, align(16))]
    struct Idt(UnsafeCell<[Gate; EXCEPTION_VECTORS]>);

    // SAFETY: the guest has one CPU; the table is written only by `init`,
    // which the runtime calls once before the guest's code runs, and
    // afterwards only the CPU reads it.
    unsafe impl Sync for Idt {}

    static IDT: Idt = Idt(UnsafeCell::new([Gate::MISSING; EXCEPTION_VECTORS]));

    /// Loads `ptr` into IDTR.
    ///
    /// # Safety
    ///
    /// Any exception taken afterwards goes through the table `ptr`
    /// describes: it must stay valid for as long as it is loaded (a zero
    /// limit, which turns any exception into a triple fault, is fine).
    pub unsafe fn load_idt(ptr: &DescriptorTablePointer) {
        // SAFETY: the caller vouches for the table; lidt only reads the
        // 10-byte operand.
        unsafe {
            core::arch::asm!("lidt [{}]", in(reg) ptr, options(readonly, nostack, preserves_flags));
        }
    }

    /// Fills the IDT with the exception stubs and loads it.
    pub fn init() {
        // SAFETY: the table is defined by the global_asm above, in .rodata.
        let stubs = unsafe { &guest_isr_table };
        // SAFETY: single CPU, called once before anything else uses the
        // IDT (see `Sync` above), so this is the only access.
        let table = unsafe { &mut *IDT.0.get() };
        for (gate, &stub) in table.iter_mut().zip(stubs) {
            *gate = Gate::interrupt(stub, KERNEL_CS);
        }
        let ptr = DescriptorTablePointer {
            limit: (core::mem::size_of::<[Gate; EXCEPTION_VECTORS]>() - 1) as u16,
            base: IDT.0.get() as u64,
        };
        // SAFETY: IDT is a static, so it stays valid while loaded.
        unsafe { load_idt(&ptr) };
    }

    /// CR2: the linear address of the last page fault.
    fn cr2() -> u64 {
        let v: u64;
        // SAFETY: reading CR2 at CPL 0 has no side effect.
        unsafe {
            core::arch::asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags));
        }
        v
    }

    /// The common exception handler: reports and ends the run.
    extern "C" fn guest_exception(frame: &ExceptionFrame) -> ! {
        let v = frame.vector as u8;
        println!(
            "guest: exception {} at RIP={:#x} ({}, error code {:#x}, RSP={:#x})",
            v,
            frame.rip,
            super::mnemonic(v),
            frame.error_code,
            frame.rsp
        );
        if v == 14 {
            println!("guest: page fault address CR2={:#x}", cr2());
        }
        exit(EXIT_EXCEPTION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_layout_matches_the_sdm() {
        let g = Gate::interrupt(0xffff_8000_1234_5678, KERNEL_CS);
        // Offset 15:0 in bits 0..16, selector in 16..32, type 0xE with P in
        // 40..48, offset 31:16 in 48..64, offset 63:32 in 64..96.
        assert_eq!(g.to_bits(), 0xffff_8000_1234_8e00_0008_5678);
        assert_eq!(core::mem::size_of::<Gate>(), 16);
        assert_eq!(Gate::MISSING.to_bits(), 0);
        // DPL 3 (attribute 0xEE), as for `int 0x80` from user mode.
        let user = g.with_dpl(3);
        assert_eq!(user.to_bits(), 0xffff_8000_1234_ee00_0008_5678);
        assert_eq!(user.with_dpl(0), g);
    }

    #[test]
    fn error_code_vectors() {
        let with: Vec<u8> = (0..32).filter(|&v| has_error_code(v)).collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
        assert_eq!(mnemonic(6), "#UD");
        assert_eq!(mnemonic(14), "#PF");
        assert_eq!(mnemonic(15), "reserved");
    }

    #[test]
    fn frame_and_pointer_layouts() {
        assert_eq!(core::mem::size_of::<ExceptionFrame>(), 7 * 8);
        assert_eq!(core::mem::offset_of!(ExceptionFrame, rip), 16);
        assert_eq!(core::mem::size_of::<DescriptorTablePointer>(), 10);
    }
}
