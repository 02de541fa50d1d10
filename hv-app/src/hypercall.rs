//! The hypercall ABI of axhv: what a guest's `VMMCALL` (AMD) or `VMCALL`
//! (Intel) asks, and what it gets back.
//!
//! Registers (as `x86_vcpu` decodes them): the number in RAX, up to six
//! arguments in RDI, RSI, RDX, R10, R8, R9; the result comes back in RAX.
//! A negative result (as `i64`) is a Linux error number, negated.
//!
//! | nr | name | result |
//! |---|---|---|
//! | 0 | [`HC_VERSION`] | [`ABI_VERSION`] = `0x0001_0000` (`major << 16 \| minor`, 1.0) |
//! | any other | | `-ENOSYS` (`-38`) |

/// Hypercall 0: the ABI version.
pub const HC_VERSION: u64 = 0;

/// The hypercall ABI version: `major << 16 | minor` = 1.0.
pub const ABI_VERSION: u64 = 0x0001_0000;

/// Linux `ENOSYS` ("function not implemented"): an unknown hypercall
/// returns `-ENOSYS`.
pub const ENOSYS: i64 = 38;

/// A hypercall by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypercall {
    /// [`HC_VERSION`]: the ABI version.
    Version,
    /// A number the ABI does not define.
    Unknown(u64),
}

impl Hypercall {
    /// The hypercall numbered `nr` (the guest's RAX).
    pub const fn from_nr(nr: u64) -> Self {
        match nr {
            HC_VERSION => Self::Version,
            other => Self::Unknown(other),
        }
    }

    /// The name, for the log.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Version => "version",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// What hypercall `nr` with arguments `args` returns in RAX.
///
/// None of the hypercalls defined so far has side effects or reads its
/// arguments, so this is the whole ABI; VM management calls will need the
/// hypervisor's state and get their own entry point.
pub const fn handle(nr: u64, args: &[u64; 6]) -> u64 {
    let _ = args;
    match Hypercall::from_nr(nr) {
        Hypercall::Version => ABI_VERSION,
        Hypercall::Unknown(_) => (-ENOSYS) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_1_0() {
        assert_eq!(handle(0, &[0; 6]), 0x0001_0000);
        // The arguments do not matter.
        assert_eq!(handle(0, &[1, 2, 3, 4, 5, 6]), 0x0001_0000);
        assert_eq!(Hypercall::from_nr(0), Hypercall::Version);
        assert_eq!(Hypercall::from_nr(0).name(), "version");
    }

    #[test]
    fn unknown_numbers_return_minus_enosys() {
        for nr in [1, 0xdead, u64::MAX] {
            let r = handle(nr, &[0; 6]);
            assert_eq!(r, 0xffff_ffff_ffff_ffda, "nr {nr:#x}");
            assert_eq!(r as i64, -38);
            assert_eq!(Hypercall::from_nr(nr), Hypercall::Unknown(nr));
        }
    }
}
