//! The error type of this crate.

use core::fmt;

use crate::VCpuState;

/// An error reported by an architecture backend (VMX, SVM, ...).
///
/// It carries a static message and, optionally, a numeric code that the hardware
/// or the backend gave, such as the VMX VM-instruction error number (Intel SDM
/// Vol. 3C, 31.4) or an SVM exit code. It needs no allocation, so a `no_std`
/// backend can build it anywhere, including in `const` context:
///
/// ```
/// use axvcpu::{ArchError, Error};
/// const VMLAUNCH_FAILED: ArchError = ArchError::with_code("VMLAUNCH failed", 7);
/// let e: Error = VMLAUNCH_FAILED.into();
/// assert_eq!(e.to_string(), "architecture error: VMLAUNCH failed (code 0x7)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArchError {
    msg: &'static str,
    code: Option<u64>,
}

impl ArchError {
    /// An architecture error with a message only.
    pub const fn new(msg: &'static str) -> Self {
        Self { msg, code: None }
    }

    /// An architecture error with a message and a numeric code.
    pub const fn with_code(msg: &'static str, code: u64) -> Self {
        Self {
            msg,
            code: Some(code),
        }
    }

    /// The message.
    pub const fn msg(&self) -> &'static str {
        self.msg
    }

    /// The numeric code, if the backend gave one.
    pub const fn code(&self) -> Option<u64> {
        self.code
    }
}

impl fmt::Display for ArchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "{} (code {code:#x})", self.msg),
            None => f.write_str(self.msg),
        }
    }
}

impl core::error::Error for ArchError {}

impl From<&'static str> for ArchError {
    fn from(msg: &'static str) -> Self {
        Self::new(msg)
    }
}

/// The error type of `axvcpu`, also the error type of the [`AxArchVCpu`](crate::AxArchVCpu)
/// and [`AxArchPerCpu`](crate::AxArchPerCpu) traits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operation `op` is not allowed while the vCPU is in state `from`
    /// (an illegal transition of the vCPU state machine).
    #[error("cannot {op} a vCPU in state {from}")]
    InvalidState {
        /// The state the vCPU was in when the operation was attempted.
        from: VCpuState,
        /// The operation that was refused (`"setup"`, `"bind"`, `"run"`, ...).
        op: &'static str,
    },
    /// The architecture state does not agree with the requested operation, for
    /// example a backend asked to run a vCPU whose control structure is not
    /// loaded, or a backend that reported success but whose state did not change.
    #[error("architecture state does not allow this operation")]
    BadState,
    /// The operation or feature is not supported (yet); the text names it.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// An argument is out of range or inconsistent; the text says which.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The architecture backend failed.
    #[error("architecture error: {0}")]
    Arch(ArchError),
    /// A per-CPU virtualization state was used before [`AxPerCpu::init`](crate::AxPerCpu::init).
    #[error("per-CPU virtualization state is not initialized")]
    PerCpuUninit,
    /// [`AxPerCpu::init`](crate::AxPerCpu::init) was called twice.
    #[error("per-CPU virtualization state of CPU {cpu_id} is already initialized")]
    PerCpuAlreadyInit {
        /// The CPU the state was first initialized for.
        cpu_id: usize,
    },
    /// Hardware virtualization is already enabled on this CPU.
    #[error("hardware virtualization is already enabled on CPU {cpu_id}")]
    AlreadyEnabled {
        /// The physical CPU.
        cpu_id: usize,
    },
    /// Hardware virtualization is not enabled on this CPU.
    #[error("hardware virtualization is not enabled on CPU {cpu_id}")]
    NotEnabled {
        /// The physical CPU.
        cpu_id: usize,
    },
}

impl Error {
    /// Shorthand for `Error::Arch(ArchError::new(msg))`.
    pub const fn arch(msg: &'static str) -> Self {
        Self::Arch(ArchError::new(msg))
    }

    /// Shorthand for `Error::Arch(ArchError::with_code(msg, code))`.
    pub const fn arch_code(msg: &'static str, code: u64) -> Self {
        Self::Arch(ArchError::with_code(msg, code))
    }
}

impl From<ArchError> for Error {
    fn from(e: ArchError) -> Self {
        Self::Arch(e)
    }
}

/// The result type of `axvcpu`.
pub type Result<T = ()> = core::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_state_message_names_state_and_op() {
        let e = Error::InvalidState {
            from: VCpuState::Free,
            op: "run",
        };
        assert_eq!(e.to_string(), "cannot run a vCPU in state Free");
    }

    #[test]
    fn arch_error_display_and_accessors() {
        let e = ArchError::with_code("VMXON failed", 0x1c);
        assert_eq!(e.msg(), "VMXON failed");
        assert_eq!(e.code(), Some(0x1c));
        assert_eq!(e.to_string(), "VMXON failed (code 0x1c)");
        let plain: ArchError = "VMRUN failed".into();
        assert_eq!(plain.code(), None);
        assert_eq!(
            Error::from(plain).to_string(),
            "architecture error: VMRUN failed"
        );
        assert_eq!(
            Error::arch_code("x", 3),
            Error::Arch(ArchError::with_code("x", 3))
        );
        assert_eq!(Error::arch("y"), Error::Arch(ArchError::new("y")));
    }

    #[test]
    fn per_cpu_messages() {
        assert_eq!(
            Error::AlreadyEnabled { cpu_id: 3 }.to_string(),
            "hardware virtualization is already enabled on CPU 3"
        );
        assert_eq!(
            Error::NotEnabled { cpu_id: 1 }.to_string(),
            "hardware virtualization is not enabled on CPU 1"
        );
    }
}
