//! How a value read by the guest lands in a general purpose register.
//!
//! These are the rules of x86-64 (Intel SDM Vol. 1, 3.4.1.1 "General-Purpose
//! Registers in 64-Bit Mode"): an 8- or 16-bit result leaves the upper 56 or 48
//! bits of the 64-bit register unchanged; a 32-bit result is zero-extended to 64
//! bits. A 64-bit Arm `W` register write also zero-extends, so the same rules serve
//! there.

use axaddrspace::AccessWidth;

use crate::{Error, Result};

/// Sign-extends the low `width` bytes of `value` to 64 bits.
pub const fn sign_extend(value: u64, width: AccessWidth) -> u64 {
    let shift = 64 - 8 * width.size() as u32;
    (((value << shift) as i64) >> shift) as u64
}

/// The new value of a 64-bit register whose old value is `old` after a load of
/// `data` (`width` bytes) into its `reg_width` part, zero- or sign-extended.
///
/// | instruction            | width | reg_width | signed_ext | result                      |
/// |------------------------|-------|-----------|------------|-----------------------------|
/// | `mov al, [m]`          | Byte  | Byte      | false      | upper 56 bits of `old` kept |
/// | `movzx eax, byte [m]`  | Byte  | Dword     | false      | zero-extended to 64         |
/// | `movsx eax, byte [m]`  | Byte  | Dword     | true       | sign-extended to 32, then zero-extended |
/// | `movsxd rax, dword [m]`| Dword | Qword     | true       | sign-extended to 64         |
///
/// A load wider than its destination (`width > reg_width`) is an
/// [`Error::InvalidArgument`].
#[inline]
pub fn load_result(
    old: u64,
    data: u64,
    width: AccessWidth,
    reg_width: AccessWidth,
    signed_ext: bool,
) -> Result<u64> {
    if width.size() > reg_width.size() {
        return Err(Error::InvalidArgument(
            "a load is wider than its destination register",
        ));
    }
    let data = data & width.mask();
    let extended = if signed_ext {
        sign_extend(data, width)
    } else {
        data
    };
    Ok(match reg_width {
        AccessWidth::Byte | AccessWidth::Word => {
            (old & !reg_width.mask()) | (extended & reg_width.mask())
        }
        AccessWidth::Dword | AccessWidth::Qword => extended & reg_width.mask(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccessWidth::*;

    const OLD: u64 = 0xdead_beef_cafe_f00d;

    #[test]
    fn eight_and_sixteen_bit_loads_keep_upper_bits() {
        assert_eq!(
            load_result(OLD, 0x41, Byte, Byte, false),
            Ok(0xdead_beef_cafe_f041)
        );
        assert_eq!(
            load_result(OLD, 0x1234, Word, Word, false),
            Ok(0xdead_beef_cafe_1234)
        );
        // Only the low `width` bytes of `data` count.
        assert_eq!(
            load_result(OLD, 0xffff_ff41, Byte, Byte, false),
            Ok(0xdead_beef_cafe_f041)
        );
        // movsx ax, byte [m] with 0x80: AX = 0xff80, upper 48 bits kept.
        assert_eq!(
            load_result(OLD, 0x80, Byte, Word, true),
            Ok(0xdead_beef_cafe_ff80)
        );
    }

    #[test]
    fn thirty_two_bit_loads_zero_extend() {
        assert_eq!(
            load_result(OLD, 0x1234_5678, Dword, Dword, false),
            Ok(0x1234_5678)
        );
        // movzx eax, byte [m]
        assert_eq!(load_result(OLD, 0x80, Byte, Dword, false), Ok(0x80));
        // movsx eax, byte [m] with 0x80: EAX = 0xffffff80, RAX upper half cleared.
        assert_eq!(load_result(OLD, 0x80, Byte, Dword, true), Ok(0xffff_ff80));
        // movsx eax, word [m] with 0x7fff stays positive.
        assert_eq!(load_result(OLD, 0x7fff, Word, Dword, true), Ok(0x7fff));
    }

    #[test]
    fn sixty_four_bit_loads() {
        assert_eq!(
            load_result(OLD, 0x1122_3344_5566_7788, Qword, Qword, false),
            Ok(0x1122_3344_5566_7788)
        );
        // movsxd rax, dword [m] with 0x80000000.
        assert_eq!(
            load_result(OLD, 0x8000_0000, Dword, Qword, true),
            Ok(0xffff_ffff_8000_0000)
        );
        // movsx rax, byte [m] with 0x80.
        assert_eq!(
            load_result(OLD, 0x80, Byte, Qword, true),
            Ok(0xffff_ffff_ffff_ff80)
        );
        // movzx rax, word [m] with 0x8000.
        assert_eq!(load_result(OLD, 0x8000, Word, Qword, false), Ok(0x8000));
    }

    #[test]
    fn wider_than_destination_is_refused() {
        assert!(matches!(
            load_result(OLD, 0, Dword, Word, false),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            load_result(OLD, 0, Qword, Dword, true),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn sign_extend_each_width() {
        assert_eq!(sign_extend(0x7f, Byte), 0x7f);
        assert_eq!(sign_extend(0xff, Byte), u64::MAX);
        assert_eq!(sign_extend(0x8000, Word), 0xffff_ffff_ffff_8000);
        assert_eq!(sign_extend(0x8000_0000, Dword), 0xffff_ffff_8000_0000);
        assert_eq!(
            sign_extend(0x8000_0000_0000_0000, Qword),
            0x8000_0000_0000_0000
        );
    }
}
