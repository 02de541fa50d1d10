//! The 32 architectural exception vectors: names, which push an error code,
//! how to decode the error code, the frame the exception stubs build, and
//! the report the handler prints.
//!
//! Sources: Intel SDM vol. 3A, "Interrupt and Exception Handling" chapter
//! (table "Protected-Mode Exceptions and Interrupts", "Error Code",
//! "Interrupt 14—Page-Fault Exception (#PF)"), and AMD APM vol. 2 section
//! 8.2 (vectors 28-30: #HV, #VC, #SX) and 8.4.2 (page-fault error code).

use core::fmt;

use bitflags::bitflags;

/// The class of an exception (SDM: fault, trap, abort; NMI is an
/// interrupt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExceptionClass {
    /// Reported before the instruction; RIP points at it.
    Fault,
    /// Reported after the instruction; RIP points past it.
    Trap,
    /// Not restartable: the state may be lost.
    Abort,
    /// An interrupt (NMI).
    Interrupt,
    /// A reserved vector: nothing raises it in a correct system.
    Reserved,
}

/// What is known of one exception vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExceptionInfo {
    /// The vector, 0-31.
    pub vector: u8,
    /// The mnemonic, such as `#PF` (`NMI` for vector 2, `-` if reserved).
    pub mnemonic: &'static str,
    /// The name, such as `Page Fault`.
    pub name: &'static str,
    /// Whether the CPU pushes an error code.
    pub has_error_code: bool,
    /// Fault, trap, abort, ...
    pub class: ExceptionClass,
}

const fn info(
    vector: u8,
    mnemonic: &'static str,
    name: &'static str,
    has_error_code: bool,
    class: ExceptionClass,
) -> ExceptionInfo {
    ExceptionInfo {
        vector,
        mnemonic,
        name,
        has_error_code,
        class,
    }
}

use ExceptionClass::{Abort, Fault, Interrupt, Reserved, Trap};

/// Vector 2, the non-maskable interrupt.
pub const NMI: u8 = 2;
/// Vector 8, #DF.
pub const DOUBLE_FAULT: u8 = 8;
/// Vector 13, #GP.
pub const GENERAL_PROTECTION: u8 = 13;
/// Vector 14, #PF.
pub const PAGE_FAULT: u8 = 14;
/// Vector 18, #MC.
pub const MACHINE_CHECK: u8 = 18;

/// The table of all 32 exception vectors (SDM table "Protected-Mode
/// Exceptions and Interrupts"; vectors 28-30 from the AMD APM).
pub const EXCEPTIONS: [ExceptionInfo; 32] = [
    info(0, "#DE", "Divide Error", false, Fault),
    info(1, "#DB", "Debug", false, Trap),
    info(2, "NMI", "Non-Maskable Interrupt", false, Interrupt),
    info(3, "#BP", "Breakpoint", false, Trap),
    info(4, "#OF", "Overflow", false, Trap),
    info(5, "#BR", "BOUND Range Exceeded", false, Fault),
    info(6, "#UD", "Invalid Opcode", false, Fault),
    info(7, "#NM", "Device Not Available", false, Fault),
    info(8, "#DF", "Double Fault", true, Abort),
    info(9, "-", "Coprocessor Segment Overrun", false, Reserved),
    info(10, "#TS", "Invalid TSS", true, Fault),
    info(11, "#NP", "Segment Not Present", true, Fault),
    info(12, "#SS", "Stack-Segment Fault", true, Fault),
    info(13, "#GP", "General Protection", true, Fault),
    info(14, "#PF", "Page Fault", true, Fault),
    info(15, "-", "Reserved", false, Reserved),
    info(16, "#MF", "x87 Floating-Point Error", false, Fault),
    info(17, "#AC", "Alignment Check", true, Fault),
    info(18, "#MC", "Machine Check", false, Abort),
    info(19, "#XM", "SIMD Floating-Point Exception", false, Fault),
    info(20, "#VE", "Virtualization Exception", false, Fault),
    info(21, "#CP", "Control Protection Exception", true, Fault),
    info(22, "-", "Reserved", false, Reserved),
    info(23, "-", "Reserved", false, Reserved),
    info(24, "-", "Reserved", false, Reserved),
    info(25, "-", "Reserved", false, Reserved),
    info(26, "-", "Reserved", false, Reserved),
    info(27, "-", "Reserved", false, Reserved),
    info(28, "#HV", "Hypervisor Injection Exception", false, Fault),
    info(29, "#VC", "VMM Communication Exception", true, Fault),
    info(30, "#SX", "Security Exception", true, Fault),
    info(31, "-", "Reserved", false, Reserved),
];

/// The entry of vector `vector`, or `None` above 31.
pub fn exception_info(vector: u64) -> Option<&'static ExceptionInfo> {
    usize::try_from(vector).ok().and_then(|v| EXCEPTIONS.get(v))
}

/// Bit `v` set for every vector `v` whose exception pushes an error code:
/// the stubs push a zero for the others so that every frame looks alike.
pub const ERROR_CODE_VECTORS: u32 = {
    let mut mask = 0u32;
    let mut v = 0;
    while v < 32 {
        if EXCEPTIONS[v].has_error_code {
            mask |= 1 << v;
        }
        v += 1;
    }
    mask
};

bitflags! {
    /// The #PF error code (SDM "Page-Fault Error Code" figure; AMD APM
    /// 8.4.2).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PageFaultError: u64 {
        /// P: 0 = non-present page, 1 = protection violation.
        const PRESENT = 1 << 0;
        /// W/R: the access was a write.
        const WRITE = 1 << 1;
        /// U/S: the access was a user-mode access.
        const USER = 1 << 2;
        /// RSVD: a reserved bit was set in a paging-structure entry.
        const RESERVED_BIT = 1 << 3;
        /// I/D: the access was an instruction fetch.
        const INSTRUCTION_FETCH = 1 << 4;
        /// PK: protection-key violation.
        const PROTECTION_KEY = 1 << 5;
        /// SS: shadow-stack access.
        const SHADOW_STACK = 1 << 6;
        /// HLAT: fault during HLAT paging (Intel).
        const HLAT = 1 << 7;
        /// SGX: violation of SGX-specific access-control requirements (Intel).
        const SGX = 1 << 15;
        /// RMP: fault from an RMP check (AMD SEV-SNP).
        const RMP = 1 << 31;
    }
}

impl fmt::Display for PageFaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.contains(Self::PRESENT) {
            "protection violation"
        } else {
            "page not present"
        })?;
        f.write_str(if self.contains(Self::WRITE) {
            ", write"
        } else {
            ", read"
        })?;
        f.write_str(if self.contains(Self::USER) {
            ", user"
        } else {
            ", supervisor"
        })?;
        for (flag, text) in [
            (Self::INSTRUCTION_FETCH, ", instruction fetch"),
            (Self::RESERVED_BIT, ", reserved bit set"),
            (Self::PROTECTION_KEY, ", protection key"),
            (Self::SHADOW_STACK, ", shadow stack"),
            (Self::HLAT, ", HLAT paging"),
            (Self::SGX, ", SGX"),
            (Self::RMP, ", RMP check"),
        ] {
            if self.contains(flag) {
                f.write_str(text)?;
            }
        }
        let unknown = self.bits() & !Self::all().bits();
        if unknown != 0 {
            write!(f, ", unknown bits {unknown:#x}")?;
        }
        Ok(())
    }
}

/// The selector error code of #TS, #NP, #SS and #GP (SDM "Error Code"):
/// bit 0 EXT, bit 1 IDT, bit 2 TI, bits 3-15 the descriptor index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectorError(pub u64);

/// The table a [`SelectorError`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescriptorTable {
    /// The global descriptor table (IDT = 0, TI = 0).
    Gdt,
    /// The interrupt descriptor table (IDT = 1).
    Idt,
    /// The local descriptor table (IDT = 0, TI = 1).
    Ldt,
}

impl SelectorError {
    /// EXT: an event external to the program caused the exception.
    pub const fn external(self) -> bool {
        self.0 & 1 != 0
    }

    /// The table of the descriptor (the IDT bit wins over TI).
    pub const fn table(self) -> DescriptorTable {
        if self.0 & 2 != 0 {
            DescriptorTable::Idt
        } else if self.0 & 4 != 0 {
            DescriptorTable::Ldt
        } else {
            DescriptorTable::Gdt
        }
    }

    /// The descriptor index (for the IDT: the vector).
    pub const fn index(self) -> u16 {
        ((self.0 >> 3) & 0x1fff) as u16
    }
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("no selector");
        }
        match self.table() {
            DescriptorTable::Idt => write!(f, "IDT vector {}", self.index())?,
            DescriptorTable::Gdt => write!(
                f,
                "GDT selector {:#x} (index {})",
                self.index() << 3,
                self.index()
            )?,
            DescriptorTable::Ldt => write!(
                f,
                "LDT selector {:#x} (index {})",
                (self.index() << 3) | 4,
                self.index()
            )?,
        }
        if self.external() {
            f.write_str(", external event")?;
        }
        Ok(())
    }
}

/// What the error code of `vector` means, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The vector pushes no error code.
    None,
    /// A #PF error code.
    PageFault(PageFaultError),
    /// A #TS, #NP, #SS or #GP selector error code.
    Selector(SelectorError),
    /// Another vector's error code, shown raw.
    Raw(u64),
}

impl ErrorCode {
    /// Decodes `code` as pushed for `vector`.
    pub fn decode(vector: u64, code: u64) -> Self {
        match exception_info(vector) {
            Some(i) if !i.has_error_code => Self::None,
            None => Self::None,
            Some(i) => match i.vector {
                PAGE_FAULT => Self::PageFault(PageFaultError::from_bits_retain(code)),
                10..=13 => Self::Selector(SelectorError(code)),
                _ => Self::Raw(code),
            },
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::PageFault(e) => write!(f, "{:#x}: {e}", e.bits()),
            Self::Selector(e) => write!(f, "{:#x}: {e}", e.0),
            Self::Raw(c) => write!(f, "{c:#x}"),
        }
    }
}

/// The frame the exception stubs leave on the stack, lowest address first:
/// the general registers they push (`r15` last pushed), the vector and the
/// error code (zero when the CPU pushes none), then what the CPU pushed
/// (SDM "Stack Usage on Transfers to Interrupt and Exception Handling
/// Routines", 64-bit mode: SS and RSP always). 176 bytes, a multiple of 16,
/// so the stack stays 16-byte aligned for the handler call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// The vector, pushed by the stub.
    pub vector: u64,
    /// The CPU's error code, or 0 pushed by the stub.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Control registers read by the handler for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControlRegs {
    /// CR0.
    pub cr0: u64,
    /// CR2, the page-fault linear address.
    pub cr2: u64,
    /// CR3, the page-table root.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
}

/// Writes the exception report: vector and name, error code decoded, RIP,
/// CS, RFLAGS, RSP, SS, CR2 (for #PF), CR0/CR3/CR4 and the general
/// registers. `cpu` is the CPU id if per-CPU data is set up.
pub fn write_report<W: fmt::Write + ?Sized>(
    out: &mut W,
    frame: &TrapFrame,
    cr: &ControlRegs,
    cpu: Option<u32>,
) -> fmt::Result {
    let (mnemonic, name) =
        exception_info(frame.vector).map_or(("?", "Unknown Vector"), |i| (i.mnemonic, i.name));
    write!(
        out,
        "\n[EXCEPTION] {mnemonic} {name} (vector {})",
        frame.vector
    )?;
    match cpu {
        Some(id) => writeln!(out, " on CPU {id}")?,
        None => writeln!(out)?,
    }
    writeln!(
        out,
        "  error code {}",
        ErrorCode::decode(frame.vector, frame.error_code)
    )?;
    if frame.vector == u64::from(PAGE_FAULT) {
        writeln!(out, "  CR2 {:#018x} (faulting address)", cr.cr2)?;
    }
    writeln!(
        out,
        "  RIP {:#018x}  CS {:#06x}  RFLAGS {:#018x}",
        frame.rip, frame.cs, frame.rflags
    )?;
    writeln!(out, "  RSP {:#018x}  SS {:#06x}", frame.rsp, frame.ss)?;
    writeln!(
        out,
        "  CR0 {:#018x}  CR3 {:#018x}  CR4 {:#018x}",
        cr.cr0, cr.cr3, cr.cr4
    )?;
    let regs = [
        ("RAX", frame.rax),
        ("RBX", frame.rbx),
        ("RCX", frame.rcx),
        ("RDX", frame.rdx),
        ("RSI", frame.rsi),
        ("RDI", frame.rdi),
        ("RBP", frame.rbp),
        ("R8 ", frame.r8),
        ("R9 ", frame.r9),
        ("R10", frame.r10),
        ("R11", frame.r11),
        ("R12", frame.r12),
        ("R13", frame.r13),
        ("R14", frame.r14),
        ("R15", frame.r15),
    ];
    for row in regs.chunks(3) {
        out.write_str(" ")?;
        for (name, value) in row {
            write!(out, " {name} {value:#018x}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn table_is_indexed_by_vector() {
        for (i, e) in EXCEPTIONS.iter().enumerate() {
            assert_eq!(usize::from(e.vector), i);
        }
        assert_eq!(exception_info(14).unwrap().mnemonic, "#PF");
        assert_eq!(exception_info(6).unwrap().name, "Invalid Opcode");
        assert_eq!(exception_info(2).unwrap().class, ExceptionClass::Interrupt);
        assert_eq!(exception_info(8).unwrap().class, ExceptionClass::Abort);
        assert_eq!(exception_info(29).unwrap().mnemonic, "#VC");
        assert_eq!(exception_info(32), None);
        assert_eq!(exception_info(u64::MAX), None);
    }

    #[test]
    fn error_code_vectors_follow_the_manuals() {
        // SDM: #DF(8), #TS(10), #NP(11), #SS(12), #GP(13), #PF(14), #AC(17),
        // #CP(21); APM: #VC(29), #SX(30).
        let expected: u32 = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]
            .iter()
            .fold(0, |m, v| m | 1 << v);
        assert_eq!(ERROR_CODE_VECTORS, expected);
        assert_eq!(ERROR_CODE_VECTORS, 0x6022_7d00);
    }

    #[test]
    fn page_fault_codes_decode() {
        // Read of a non-present page in kernel mode.
        assert_eq!(
            ErrorCode::decode(14, 0).to_string(),
            "0x0: page not present, read, supervisor"
        );
        // Write to a read-only page from user mode: P | W | U = 7.
        assert_eq!(
            ErrorCode::decode(14, 7).to_string(),
            "0x7: protection violation, write, user"
        );
        // Instruction fetch from an NX page: P | I/D = 0x11.
        assert_eq!(
            ErrorCode::decode(14, 0x11).to_string(),
            "0x11: protection violation, read, supervisor, instruction fetch"
        );
        // Reserved bit, then AMD RMP with an unknown bit 20.
        assert_eq!(
            ErrorCode::decode(14, 0x9).to_string(),
            "0x9: protection violation, read, supervisor, reserved bit set"
        );
        assert_eq!(
            ErrorCode::decode(14, (1 << 31) | (1 << 20) | 1).to_string(),
            "0x80100001: protection violation, read, supervisor, RMP check, unknown bits 0x100000"
        );
    }

    #[test]
    fn selector_codes_decode() {
        // A #GP for an IDT entry that is not present (vector 0x20, EXT):
        // index 0x20 << 3 | IDT | EXT = 0x103.
        let e = SelectorError(0x103);
        assert!(e.external());
        assert_eq!(e.table(), DescriptorTable::Idt);
        assert_eq!(e.index(), 0x20);
        assert_eq!(
            ErrorCode::decode(13, 0x103).to_string(),
            "0x103: IDT vector 32, external event"
        );
        // #NP for GDT selector 0x18.
        assert_eq!(
            ErrorCode::decode(11, 0x18).to_string(),
            "0x18: GDT selector 0x18 (index 3)"
        );
        // #TS on LDT selector 0x2c (index 5, TI).
        assert_eq!(SelectorError(0x2c).table(), DescriptorTable::Ldt);
        assert_eq!(
            ErrorCode::decode(10, 0x2c).to_string(),
            "0x2c: LDT selector 0x2c (index 5)"
        );
        assert_eq!(ErrorCode::decode(13, 0).to_string(), "0x0: no selector");
    }

    #[test]
    fn vectors_without_error_code_show_none() {
        assert_eq!(ErrorCode::decode(6, 0xdead), ErrorCode::None);
        assert_eq!(ErrorCode::decode(8, 0), ErrorCode::Raw(0));
        assert_eq!(ErrorCode::decode(99, 1), ErrorCode::None);
    }

    #[test]
    fn frame_layout_matches_the_stub() {
        // 15 registers, vector, error code, 5 CPU-pushed qwords.
        assert_eq!(size_of::<TrapFrame>(), 22 * 8);
        assert_eq!(size_of::<TrapFrame>() % 16, 0);
        assert_eq!(offset_of!(TrapFrame, r15), 0);
        assert_eq!(offset_of!(TrapFrame, rax), 14 * 8);
        assert_eq!(offset_of!(TrapFrame, vector), 15 * 8);
        assert_eq!(offset_of!(TrapFrame, error_code), 16 * 8);
        assert_eq!(offset_of!(TrapFrame, rip), 17 * 8);
        assert_eq!(offset_of!(TrapFrame, ss), 21 * 8);
    }

    #[test]
    fn report_shows_the_state() {
        let frame = TrapFrame {
            rax: 0xaa,
            r15: 0xf15,
            vector: 14,
            error_code: 2,
            rip: 0x10_2345,
            cs: 8,
            rflags: 0x46,
            rsp: 0x12_0000,
            ss: 0x10,
            ..TrapFrame::default()
        };
        let cr = ControlRegs {
            cr0: 0x8001_0011,
            cr2: 0x40_0000_0000,
            cr3: 0x10_b000,
            cr4: 0x20,
        };
        let mut s = String::new();
        write_report(&mut s, &frame, &cr, Some(0)).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "");
        assert_eq!(lines[1], "[EXCEPTION] #PF Page Fault (vector 14) on CPU 0");
        assert_eq!(
            lines[2],
            "  error code 0x2: page not present, write, supervisor"
        );
        assert_eq!(lines[3], "  CR2 0x0000004000000000 (faulting address)");
        assert_eq!(
            lines[4],
            "  RIP 0x0000000000102345  CS 0x0008  RFLAGS 0x0000000000000046"
        );
        assert_eq!(lines[5], "  RSP 0x0000000000120000  SS 0x0010");
        assert!(lines[6].contains("CR3 0x000000000010b000"));
        assert_eq!(
            lines[7],
            "  RAX 0x00000000000000aa RBX 0x0000000000000000 RCX 0x0000000000000000"
        );
        assert!(lines[11].ends_with("R15 0x0000000000000f15"));
        assert_eq!(lines.len(), 12);

        // #UD: no CR2 line, no CPU known.
        let ud = TrapFrame { vector: 6, ..frame };
        let mut s = String::new();
        write_report(&mut s, &ud, &cr, None).unwrap();
        assert!(s.contains("[EXCEPTION] #UD Invalid Opcode (vector 6)\n"));
        assert!(s.contains("error code none"));
        assert!(!s.contains("CR2"));
    }
}
