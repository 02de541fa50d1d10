//! Read-modify-write and compare instructions on MMIO.
//!
//! [`decode_mmio`](crate::decode::decode_mmio) handles the moves. Compilers
//! also fold a volatile load, an operation and a volatile store into one
//! instruction: NimbOS clears a HPET timer's interrupt enable with
//! `and qword [rdx], -5`. [`decode_mmio_rmw`] decodes those, and
//! [`MmioRmw::apply`] computes the value to write back and the arithmetic
//! flags (Intel SDM Vol. 2, ADD/OR/AND/SUB/XOR/CMP/TEST: "Flags Affected").

use axaddrspace::AccessWidth;
use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};

use crate::decode::{MAX_INSTRUCTION_LEN, StoreSource};
use crate::{Error, Result};

/// RFLAGS bits the emulated operations define: CF, PF, AF, ZF, SF, OF.
pub const ARITH_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;

const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

/// The operation of a read-modify-write (or compare) MMIO instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AluOp {
    /// `ADD m, src`.
    Add,
    /// `OR m, src`.
    Or,
    /// `AND m, src`.
    And,
    /// `SUB m, src`.
    Sub,
    /// `XOR m, src`.
    Xor,
    /// `CMP m, src`: flags of `m - src`, memory not written.
    Cmp,
    /// `TEST m, src`: flags of `m & src`, memory not written.
    Test,
}

/// A decoded read-modify-write (or compare) instruction on memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioRmw {
    /// The operation.
    pub op: AluOp,
    /// Width of the memory operand.
    pub width: AccessWidth,
    /// The other operand: a register of the same width or an immediate
    /// (already sign-extended and masked to `width`).
    pub src: StoreSource,
    /// Length of the instruction in bytes (RIP advances by this much).
    pub len: usize,
}

/// What an emulated [`MmioRmw`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RmwOutcome {
    /// The value to write back to memory; `None` for CMP and TEST.
    pub write: Option<u64>,
    /// The new values of the [`ARITH_FLAGS`] bits of RFLAGS (AF is 0 after
    /// the logic operations, where the SDM leaves it undefined).
    pub flags: u64,
}

/// Decodes the instruction at the start of `bytes` (code segment of
/// `bitness` bits) as `ADD/OR/AND/SUB/XOR/CMP m, r/imm` or `TEST m, r/imm`
/// (or `TEST r, m`) on a memory operand. Anything else, a LOCK/REP prefix,
/// or a high-byte register (AH..BH) is an [`Error::Decode`].
pub fn decode_mmio_rmw(bytes: &[u8], bitness: u32) -> Result<MmioRmw> {
    if !matches!(bitness, 16 | 32 | 64) {
        return Err(Error::InvalidArgument("bitness must be 16, 32 or 64"));
    }
    let bytes = &bytes[..bytes.len().min(MAX_INSTRUCTION_LEN)];
    let insn = Decoder::new(bitness, bytes, DecoderOptions::NONE).decode();
    if insn.is_invalid() {
        return Err(Error::Decode("invalid or truncated instruction"));
    }
    if insn.has_lock_prefix() || insn.has_rep_prefix() || insn.has_repne_prefix() {
        return Err(Error::Decode("prefixed (LOCK/REP) MMIO access"));
    }
    let op = match insn.mnemonic() {
        Mnemonic::Add => AluOp::Add,
        Mnemonic::Or => AluOp::Or,
        Mnemonic::And => AluOp::And,
        Mnemonic::Sub => AluOp::Sub,
        Mnemonic::Xor => AluOp::Xor,
        Mnemonic::Cmp => AluOp::Cmp,
        Mnemonic::Test => AluOp::Test,
        _ => return Err(Error::Decode("not a read-modify-write ALU instruction")),
    };
    // The memory operand comes first, except in TEST (commutative), whose
    // register form encodes `test m, r` for either written order.
    let other = match (insn.op0_kind(), insn.op1_kind()) {
        (OpKind::Memory, k) => (1, k),
        (k, OpKind::Memory) if op == AluOp::Test => (0, k),
        _ => {
            return Err(Error::Decode(
                "ALU instruction without a memory destination",
            ));
        }
    };
    let width = crate::decode::mem_width(insn.memory_size())?;
    let src = match other.1 {
        OpKind::Register => {
            let reg = insn.op_register(other.0);
            let (index, reg_width) = crate::decode::gpr(reg)?;
            if reg_width != width {
                return Err(Error::Decode("register and memory widths differ"));
            }
            StoreSource::Register(index)
        }
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => StoreSource::Immediate(insn.immediate(other.0) & width.mask()),
        _ => return Err(Error::Decode("ALU source is not a register or immediate")),
    };
    Ok(MmioRmw {
        op,
        width,
        src,
        len: insn.len(),
    })
}

impl MmioRmw {
    /// The source operand's value, reading registers through `gpr`
    /// (called with 0 = RAX ... 15 = R15), masked to the access width.
    pub fn source(&self, gpr: impl Fn(usize) -> u64) -> u64 {
        match self.src {
            StoreSource::Register(r) => gpr(r) & self.width.mask(),
            StoreSource::Immediate(v) => v & self.width.mask(),
        }
    }

    /// The result of the operation on the memory value `old` and the
    /// source value `src`: what to write back and the new flags.
    pub fn apply(&self, old: u64, src: u64) -> RmwOutcome {
        let mask = self.width.mask();
        let sign = 1u64 << (self.width.size() * 8 - 1);
        let (a, b) = (old & mask, src & mask);
        let (result, carry, overflow, adjust) = match self.op {
            AluOp::Add => {
                let r = a.wrapping_add(b) & mask;
                let carry = r < a;
                (
                    (r),
                    carry,
                    (a ^ r) & (b ^ r) & sign != 0,
                    (a ^ b ^ r) & 0x10 != 0,
                )
            }
            AluOp::Sub | AluOp::Cmp => {
                let r = a.wrapping_sub(b) & mask;
                (
                    r,
                    a < b,
                    (a ^ b) & (a ^ r) & sign != 0,
                    (a ^ b ^ r) & 0x10 != 0,
                )
            }
            AluOp::Or => (a | b, false, false, false),
            AluOp::And | AluOp::Test => (a & b, false, false, false),
            AluOp::Xor => (a ^ b, false, false, false),
        };
        let mut flags = 0;
        for (set, bit) in [
            (carry, CF),
            ((result as u8).count_ones() % 2 == 0, PF),
            (adjust, AF),
            (result == 0, ZF),
            (result & sign != 0, SF),
            (overflow, OF),
        ] {
            if set {
                flags |= bit;
            }
        }
        let write = (!matches!(self.op, AluOp::Cmp | AluOp::Test)).then_some(result);
        RmwOutcome { write, flags }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccessWidth::*;

    #[test]
    fn nimbos_hpet_and_qword_imm8() {
        // 48 83 22 fb = and qword [rdx], -5 (clear Tn_INT_ENB_CNF, bit 2)
        let i = decode_mmio_rmw(&[0x48, 0x83, 0x22, 0xfb, 0x48, 0xff], 64).unwrap();
        assert_eq!(i.op, AluOp::And);
        assert_eq!((i.width, i.len), (Qword, 4));
        assert_eq!(i.src, StoreSource::Immediate(0xffff_ffff_ffff_fffb));
        // HPET Tn_CONF of QEMU's timer 0 after reset with INT_ENB set: 0x..34
        let o = i.apply(0x0000_0004_0000_0034, i.source(|_| 0));
        assert_eq!(o.write, Some(0x0000_0004_0000_0030));
        assert_eq!(o.flags, PF, "0x30 has an even number of ones");
    }

    #[test]
    fn register_sources_and_widths() {
        // 09 07 = or [rdi], eax
        let i = decode_mmio_rmw(&[0x09, 0x07], 64).unwrap();
        assert_eq!(
            (i.op, i.width, i.src),
            (AluOp::Or, Dword, StoreSource::Register(0))
        );
        assert_eq!(i.source(|r| if r == 0 { 0x1_0000_0100 } else { 0 }), 0x100);
        // 44 30 07 = xor [rdi], r8b
        let i = decode_mmio_rmw(&[0x44, 0x30, 0x07], 64).unwrap();
        assert_eq!(
            (i.op, i.width, i.src),
            (AluOp::Xor, Byte, StoreSource::Register(8))
        );
        // 66 81 06 34 12 = add word [rsi], 0x1234
        let i = decode_mmio_rmw(&[0x66, 0x81, 0x06, 0x34, 0x12], 64).unwrap();
        assert_eq!((i.op, i.width, i.len), (AluOp::Add, Word, 5));
        assert_eq!(i.src, StoreSource::Immediate(0x1234));
        // 85 07 = test [rdi], eax ; 84 07 = test [rdi], al
        let i = decode_mmio_rmw(&[0x85, 0x07], 64).unwrap();
        assert_eq!((i.op, i.width), (AluOp::Test, Dword));
        // f6 05 00 00 e0 fe 01 (32-bit) = test byte [0xfee00000], 1
        let i = decode_mmio_rmw(&[0xf6, 0x05, 0x00, 0x00, 0xe0, 0xfe, 0x01], 32).unwrap();
        assert_eq!((i.op, i.width, i.len), (AluOp::Test, Byte, 7));
        assert_eq!(i.src, StoreSource::Immediate(1));
    }

    #[test]
    fn refused_forms() {
        for bytes in [
            &[0x8b, 0x03][..],               // mov eax, [rbx]: a move
            &[0x03, 0x07],                   // add eax, [rdi]: register destination
            &[0x3b, 0x07],                   // cmp eax, [rdi]: register first
            &[0xf0, 0x48, 0x83, 0x22, 0xfb], // lock and qword [rdx], -5
            &[0x20, 0x27],                   // and [rdi], ah
            &[0x01, 0xc3],                   // add ebx, eax: no memory
            &[0x48, 0x83],                   // truncated
        ] {
            assert!(
                matches!(decode_mmio_rmw(bytes, 64), Err(Error::Decode(_))),
                "{bytes:x?}"
            );
        }
        assert!(matches!(
            decode_mmio_rmw(&[0x09, 0x07], 8),
            Err(Error::InvalidArgument(_))
        ));
    }

    fn rmw(op: AluOp, width: AccessWidth) -> MmioRmw {
        MmioRmw {
            op,
            width,
            src: StoreSource::Immediate(0),
            len: 2,
        }
    }

    #[test]
    fn arithmetic_flags_follow_the_sdm() {
        // ADD byte 0x7f + 1 = 0x80: signed overflow, sign, adjust (0xf + 1).
        let o = rmw(AluOp::Add, Byte).apply(0x7f, 1);
        assert_eq!(o.write, Some(0x80));
        assert_eq!(o.flags, OF | SF | AF);
        // ADD byte 0xff + 1 = 0 with carry, zero, parity, adjust.
        let o = rmw(AluOp::Add, Byte).apply(0xff, 1);
        assert_eq!((o.write, o.flags), (Some(0), CF | ZF | PF | AF));
        // ADD dword ignores bits above the width.
        let o = rmw(AluOp::Add, Dword).apply(0xdead_0000_ffff_fffe, 1);
        assert_eq!((o.write, o.flags), (Some(0xffff_ffff), SF | PF));
        // SUB qword 0 - 1 = all ones: borrow, sign, parity, adjust.
        let o = rmw(AluOp::Sub, Qword).apply(0, 1);
        assert_eq!((o.write, o.flags), (Some(u64::MAX), CF | SF | PF | AF));
        // SUB word 0x8000 - 1 = 0x7fff: signed overflow.
        let o = rmw(AluOp::Sub, Word).apply(0x8000, 1);
        assert_eq!((o.write, o.flags), (Some(0x7fff), OF | AF | PF));
        // CMP writes nothing; equal operands give ZF (and PF).
        let o = rmw(AluOp::Cmp, Dword).apply(5, 5);
        assert_eq!((o.write, o.flags), (None, ZF | PF));
        // Logic: CF = OF = 0.
        let o = rmw(AluOp::Xor, Byte).apply(0x0f, 0x0e);
        assert_eq!((o.write, o.flags), (Some(1), 0));
        let o = rmw(AluOp::Or, Word).apply(0x8000, 0x0003);
        assert_eq!((o.write, o.flags), (Some(0x8003), SF | PF));
        let o = rmw(AluOp::Test, Byte).apply(0x20, 0x21);
        assert_eq!((o.write, o.flags), (None, 0));
        let o = rmw(AluOp::Test, Byte).apply(0x20, 0x01);
        assert_eq!((o.write, o.flags), (None, ZF | PF));
    }
}
