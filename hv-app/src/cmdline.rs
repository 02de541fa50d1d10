//! Command-line switches of hv-app (besides `log=`, see [`crate::logfmt`]).

use crate::{Error, Result};

/// The value of the last `key=value` word of `cmdline`, if any.
pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// `crash=<kind>`: raise an exception on purpose after initialisation, to
/// test the exception handlers (each must print its report and end the run
/// with [`crate::port::ExitCode::Exception`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashTest {
    /// `crash=de`: divide by zero, #DE (vector 0).
    DivideError,
    /// `crash=bp`: `int3`, #BP (vector 3).
    Breakpoint,
    /// `crash=ud`: `ud2`, #UD (vector 6).
    InvalidOpcode,
    /// `crash=gp`: a read from a non-canonical address, #GP (vector 13).
    GeneralProtection,
    /// `crash=pf`: a read from an unmapped address, #PF (vector 14).
    PageFault,
    /// `crash=df`: a push with RSP on an unmapped page: the #PF cannot be
    /// delivered on that stack, which makes a #DF (vector 8), taken on its
    /// IST stack.
    DoubleFault,
}

impl CrashTest {
    /// Every kind, with its command-line word.
    pub const ALL: [(&'static str, CrashTest); 6] = [
        ("de", CrashTest::DivideError),
        ("bp", CrashTest::Breakpoint),
        ("ud", CrashTest::InvalidOpcode),
        ("gp", CrashTest::GeneralProtection),
        ("pf", CrashTest::PageFault),
        ("df", CrashTest::DoubleFault),
    ];

    /// The `crash=` switch of `cmdline`: `Ok(None)` if absent,
    /// [`Error::UnknownCrashTest`] for a value that names no kind.
    pub fn from_cmdline(cmdline: &str) -> Result<Option<Self>> {
        match value(cmdline, "crash") {
            None => Ok(None),
            Some(v) => Self::ALL
                .iter()
                .find(|(word, _)| *word == v)
                .map(|&(_, kind)| Some(kind))
                .ok_or(Error::UnknownCrashTest),
        }
    }

    /// The vector the crash must be reported with.
    pub const fn vector(self) -> u8 {
        match self {
            Self::DivideError => 0,
            Self::Breakpoint => 3,
            Self::InvalidOpcode => 6,
            Self::GeneralProtection => 13,
            Self::PageFault => 14,
            Self::DoubleFault => 8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_the_last_exact_key() {
        assert_eq!(value("a=1 b=2 a=3", "a"), Some("3"));
        assert_eq!(value("ab=1", "a"), None);
        assert_eq!(value("a", "a"), None);
        assert_eq!(value("a=", "a"), Some(""));
    }

    #[test]
    fn crash_switch() {
        assert_res_eq!(CrashTest::from_cmdline("/boot/hv-app log=debug"), Ok(None));
        assert_res_eq!(
            CrashTest::from_cmdline("/boot/hv-app crash=ud"),
            Ok(Some(CrashTest::InvalidOpcode))
        );
        assert_res_eq!(
            CrashTest::from_cmdline("crash=pf"),
            Ok(Some(CrashTest::PageFault))
        );
        assert_res_eq!(
            CrashTest::from_cmdline("crash=boom"),
            Err(Error::UnknownCrashTest)
        );
        assert_eq!(CrashTest::DoubleFault.vector(), 8);
        assert_eq!(CrashTest::PageFault.vector(), 14);
        for (word, kind) in CrashTest::ALL {
            let line = format!("crash={word}");
            assert_res_eq!(CrashTest::from_cmdline(&line), Ok(Some(kind)));
            let info = crate::exception::exception_info(kind.vector().into()).unwrap();
            assert_eq!(info.mnemonic[1..].to_ascii_lowercase(), word);
        }
    }
}
