//! Decoding the guest instruction that touched an MMIO page.
//!
//! Neither VMX (for EPT violations) nor SVM without decode assists (for
//! nested page faults) tells the hypervisor *what* the faulting instruction
//! did with memory: which register, how wide, load or store, nor even its
//! length. [`decode_mmio`] reads that from the instruction bytes with
//! `iced-x86`, and [`instruction_length`] gives the length alone (needed on
//! SVM without NRIP save to step over an intercepted instruction).

use axaddrspace::AccessWidth;
use iced_x86::{Decoder, DecoderOptions, Instruction, MemorySize, Mnemonic, OpKind, Register};

use crate::{Error, Result};

/// The longest x86 instruction, in bytes.
pub const MAX_INSTRUCTION_LEN: usize = 15;

/// Where the data of an MMIO store comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreSource {
    /// General-purpose register `index` (0 = RAX ... 15 = R15); the low
    /// `width` bytes are stored.
    Register(usize),
    /// An immediate, already sign- or zero-extended and masked to the access width.
    Immediate(u64),
}

/// What the MMIO instruction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioOp {
    /// A load from MMIO into a register.
    Load {
        /// Destination register index (0 = RAX ... 15 = R15).
        reg: usize,
        /// Width of the destination register as written by the instruction.
        reg_width: AccessWidth,
        /// Sign-extend the loaded value (MOVSX/MOVSXD) instead of zero-extend.
        sign_extend: bool,
    },
    /// A store to MMIO.
    Store(StoreSource),
}

/// A decoded MMIO access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioInstruction {
    /// Width of the memory access.
    pub width: AccessWidth,
    /// Load or store, and with which register/immediate.
    pub op: MmioOp,
    /// Length of the instruction in bytes (RIP advances by this much).
    pub len: usize,
}

impl MmioInstruction {
    /// The value a store writes, taking register values from `reg`
    /// (called with an index 0..16). `None` for a load.
    pub fn store_value(&self, reg: impl Fn(usize) -> u64) -> Option<u64> {
        match self.op {
            MmioOp::Store(StoreSource::Register(r)) => Some(reg(r) & self.width.mask()),
            MmioOp::Store(StoreSource::Immediate(v)) => Some(v & self.width.mask()),
            MmioOp::Load { .. } => None,
        }
    }
}

fn check_bitness(bitness: u32) -> Result {
    match bitness {
        16 | 32 | 64 => Ok(()),
        _ => Err(Error::InvalidArgument("bitness must be 16, 32 or 64")),
    }
}

fn decode_one(bytes: &[u8], bitness: u32) -> Result<Instruction> {
    check_bitness(bitness)?;
    let bytes = &bytes[..bytes.len().min(MAX_INSTRUCTION_LEN)];
    let mut decoder = Decoder::new(bitness, bytes, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Err(Error::Decode("invalid or truncated instruction"));
    }
    Ok(insn)
}

/// Length in bytes of the instruction at the start of `bytes`, decoded in a
/// code segment of `bitness` (16, 32 or 64) bits.
pub fn instruction_length(bytes: &[u8], bitness: u32) -> Result<usize> {
    Ok(decode_one(bytes, bitness)?.len())
}

/// Index (0..16) and width of a general-purpose register; `None` for other
/// registers. The legacy high-byte registers AH/CH/DH/BH are refused: the
/// exit format has no way to name them.
pub(crate) fn gpr(reg: Register) -> Result<(usize, AccessWidth)> {
    let n = reg as usize;
    let (ah, spl, r8l, ax, eax, rax, r15) = (
        Register::AH as usize,
        Register::SPL as usize,
        Register::R8L as usize,
        Register::AX as usize,
        Register::EAX as usize,
        Register::RAX as usize,
        Register::R15 as usize,
    );
    let al = Register::AL as usize;
    match n {
        _ if (al..ah).contains(&n) => Ok((n - al, AccessWidth::Byte)),
        _ if (ah..spl).contains(&n) => Err(Error::Decode("high-byte register (AH/CH/DH/BH)")),
        _ if (spl..r8l).contains(&n) => Ok((n - spl + 4, AccessWidth::Byte)),
        _ if (r8l..ax).contains(&n) => Ok((n - r8l + 8, AccessWidth::Byte)),
        _ if (ax..eax).contains(&n) => Ok((n - ax, AccessWidth::Word)),
        _ if (eax..rax).contains(&n) => Ok((n - eax, AccessWidth::Dword)),
        _ if (rax..=r15).contains(&n) => Ok((n - rax, AccessWidth::Qword)),
        _ => Err(Error::Decode("operand is not a general-purpose register")),
    }
}

pub(crate) fn mem_width(size: MemorySize) -> Result<AccessWidth> {
    match size {
        MemorySize::UInt8 | MemorySize::Int8 => Ok(AccessWidth::Byte),
        MemorySize::UInt16 | MemorySize::Int16 | MemorySize::WordOffset => Ok(AccessWidth::Word),
        MemorySize::UInt32 | MemorySize::Int32 | MemorySize::DwordOffset => Ok(AccessWidth::Dword),
        MemorySize::UInt64 | MemorySize::Int64 | MemorySize::QwordOffset => Ok(AccessWidth::Qword),
        _ => Err(Error::Decode("unsupported memory operand size")),
    }
}

fn is_immediate(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

/// Decodes the instruction at the start of `bytes` (at most 15 are looked
/// at) as an access to memory-mapped I/O, for a code segment of `bitness`
/// bits.
///
/// Handled: `MOV r, m`, `MOV m, r`, `MOV m, imm`, `MOV` with a moffs operand,
/// `MOVZX`, `MOVSX`, `MOVSXD`. Everything else (string instructions,
/// read-modify-write, AH..BH) is an [`Error::Decode`].
pub fn decode_mmio(bytes: &[u8], bitness: u32) -> Result<MmioInstruction> {
    let insn = decode_one(bytes, bitness)?;
    if insn.has_lock_prefix() || insn.has_rep_prefix() || insn.has_repne_prefix() {
        return Err(Error::Decode("prefixed (LOCK/REP) MMIO access"));
    }
    let len = insn.len();
    let (k0, k1) = (insn.op0_kind(), insn.op1_kind());
    match insn.mnemonic() {
        Mnemonic::Mov if k0 == OpKind::Register && k1 == OpKind::Memory => {
            let (reg, reg_width) = gpr(insn.op0_register())?;
            Ok(MmioInstruction {
                width: reg_width,
                op: MmioOp::Load {
                    reg,
                    reg_width,
                    sign_extend: false,
                },
                len,
            })
        }
        Mnemonic::Mov if k0 == OpKind::Memory && k1 == OpKind::Register => {
            let (reg, width) = gpr(insn.op1_register())?;
            Ok(MmioInstruction {
                width,
                op: MmioOp::Store(StoreSource::Register(reg)),
                len,
            })
        }
        Mnemonic::Mov if k0 == OpKind::Memory && is_immediate(k1) => {
            let width = mem_width(insn.memory_size())?;
            // `immediate()` already sign-extends imm32 to 64 bits for
            // `mov qword [m], imm32`.
            let imm = insn.immediate(1) & width.mask();
            Ok(MmioInstruction {
                width,
                op: MmioOp::Store(StoreSource::Immediate(imm)),
                len,
            })
        }
        m @ (Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd)
            if k0 == OpKind::Register && k1 == OpKind::Memory =>
        {
            let (reg, reg_width) = gpr(insn.op0_register())?;
            let width = mem_width(insn.memory_size())?;
            Ok(MmioInstruction {
                width,
                op: MmioOp::Load {
                    reg,
                    reg_width,
                    sign_extend: m != Mnemonic::Movzx,
                },
                len,
            })
        }
        _ => Err(Error::Decode("not a MOV/MOVZX/MOVSX to or from memory")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccessWidth::*;

    fn load(reg: usize, reg_width: AccessWidth, sign_extend: bool) -> MmioOp {
        MmioOp::Load {
            reg,
            reg_width,
            sign_extend,
        }
    }

    #[test]
    fn mov_eax_from_rbx_pointer() {
        // 8b 03 = mov eax, [rbx]
        let i = decode_mmio(&[0x8b, 0x03, 0x90, 0x90], 64).unwrap();
        assert_eq!(i.width, Dword);
        assert_eq!(i.op, load(0, Dword, false));
        assert_eq!(i.len, 2);
    }

    #[test]
    fn mov_r8b_to_rdi_pointer() {
        // 44 88 07 = mov [rdi], r8b
        let i = decode_mmio(&[0x44, 0x88, 0x07], 64).unwrap();
        assert_eq!(i.width, Byte);
        assert_eq!(i.op, MmioOp::Store(StoreSource::Register(8)));
        assert_eq!(i.len, 3);
        assert_eq!(
            i.store_value(|r| if r == 8 { 0x1234_56ab } else { 0 }),
            Some(0xab)
        );
    }

    #[test]
    fn mov_qword_imm32_sign_extended() {
        // 48 c7 00 ff ff ff ff = mov qword [rax], -1
        let i = decode_mmio(&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff], 64).unwrap();
        assert_eq!(i.width, Qword);
        assert_eq!(i.op, MmioOp::Store(StoreSource::Immediate(u64::MAX)));
        assert_eq!(i.len, 7);
        // c7 40 10 78 56 34 12 = mov dword [rax+0x10], 0x12345678
        let i = decode_mmio(&[0xc7, 0x40, 0x10, 0x78, 0x56, 0x34, 0x12], 64).unwrap();
        assert_eq!(i.width, Dword);
        assert_eq!(i.store_value(|_| 0), Some(0x1234_5678));
        // 66 c7 03 34 12 = mov word [rbx], 0x1234
        let i = decode_mmio(&[0x66, 0xc7, 0x03, 0x34, 0x12], 64).unwrap();
        assert_eq!((i.width, i.len), (Word, 5));
        assert_eq!(i.store_value(|_| 0), Some(0x1234));
        // c6 06 41 = mov byte [rsi], 0x41
        let i = decode_mmio(&[0xc6, 0x06, 0x41], 64).unwrap();
        assert_eq!((i.width, i.store_value(|_| 0)), (Byte, Some(0x41)));
    }

    #[test]
    fn movzx_movsx_movsxd() {
        // 0f b6 07 = movzx eax, byte [rdi]
        let i = decode_mmio(&[0x0f, 0xb6, 0x07], 64).unwrap();
        assert_eq!((i.width, i.op, i.len), (Byte, load(0, Dword, false), 3));
        // 48 0f bf 0e = movsx rcx, word [rsi]
        let i = decode_mmio(&[0x48, 0x0f, 0xbf, 0x0e], 64).unwrap();
        assert_eq!((i.width, i.op, i.len), (Word, load(1, Qword, true), 4));
        // 4c 63 06 = movsxd r8, dword [rsi]
        let i = decode_mmio(&[0x4c, 0x63, 0x06], 64).unwrap();
        assert_eq!((i.width, i.op, i.len), (Dword, load(8, Qword, true), 3));
    }

    #[test]
    fn rex_registers_and_32bit_mode() {
        // 45 8b 7d 00 = mov r15d, [r13+0]
        let i = decode_mmio(&[0x45, 0x8b, 0x7d, 0x00], 64).unwrap();
        assert_eq!(i.op, load(15, Dword, false));
        // 40 8a 36 = mov sil, [rsi]
        let i = decode_mmio(&[0x40, 0x8a, 0x36], 64).unwrap();
        assert_eq!(i.op, load(6, Byte, false));
        // 32-bit: 89 0d 00 00 e0 fe = mov [0xfee00000], ecx (moffs-like disp32)
        let i = decode_mmio(&[0x89, 0x0d, 0x00, 0x00, 0xe0, 0xfe], 32).unwrap();
        assert_eq!((i.width, i.len), (Dword, 6));
        assert_eq!(i.op, MmioOp::Store(StoreSource::Register(1)));
        // 32-bit a1 moffs32 = mov eax, [0xfec00010]
        let i = decode_mmio(&[0xa1, 0x10, 0x00, 0xc0, 0xfe], 32).unwrap();
        assert_eq!((i.width, i.op, i.len), (Dword, load(0, Dword, false), 5));
        // 16-bit: 8b 07 = mov ax, [bx]
        let i = decode_mmio(&[0x8b, 0x07], 16).unwrap();
        assert_eq!(i.op, load(0, Word, false));
    }

    #[test]
    fn refused_forms() {
        // 8a 27 = mov ah, [rdi]
        assert!(matches!(
            decode_mmio(&[0x8a, 0x27], 64),
            Err(Error::Decode(_))
        ));
        // f3 a5 = rep movsd
        assert!(matches!(
            decode_mmio(&[0xf3, 0xa5], 64),
            Err(Error::Decode(_))
        ));
        // 01 07 = add [rdi], eax
        assert!(matches!(
            decode_mmio(&[0x01, 0x07], 64),
            Err(Error::Decode(_))
        ));
        // 89 c3 = mov ebx, eax (no memory operand)
        assert!(matches!(
            decode_mmio(&[0x89, 0xc3], 64),
            Err(Error::Decode(_))
        ));
        // truncated: 48 c7 00 ff
        assert!(matches!(
            decode_mmio(&[0x48, 0xc7, 0x00, 0xff], 64),
            Err(Error::Decode(_))
        ));
        assert!(matches!(
            decode_mmio(&[0x8b, 0x03], 8),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn lengths_for_svm_without_nrip() {
        assert_eq!(instruction_length(&[0x0f, 0xa2], 64).unwrap(), 2); // cpuid
        assert_eq!(instruction_length(&[0xf4], 32).unwrap(), 1); // hlt
        assert_eq!(instruction_length(&[0x0f, 0x01, 0xd9], 64).unwrap(), 3); // vmmcall
        assert_eq!(instruction_length(&[0x0f, 0x32], 64).unwrap(), 2); // rdmsr
        assert_eq!(instruction_length(&[0xe6, 0xf4], 32).unwrap(), 2); // out 0xf4, al
        assert_eq!(instruction_length(&[0x66, 0xef], 64).unwrap(), 2); // out dx, ax
        // 16 bytes of prefixes: longer than 15, invalid.
        assert!(instruction_length(&[0x66; 16], 64).is_err());
    }
}
