//! Event injection: the VM-entry interruption-information field (Intel SDM
//! vol. 3, 25.8.3) and the matching VM-exit/IDT-vectoring information.

use crate::{Error, Result};

/// Interruption type (bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum InterruptionType {
    /// External interrupt.
    External = 0,
    /// Non-maskable interrupt.
    Nmi = 2,
    /// Hardware exception (#PF, #GP, ...).
    HardwareException = 3,
    /// Software interrupt (INT n).
    SoftwareInterrupt = 4,
    /// Privileged software exception (INT1).
    PrivilegedSoftwareException = 5,
    /// Software exception (INT3, INTO).
    SoftwareException = 6,
    /// Other event.
    Other = 7,
}

impl InterruptionType {
    /// The type with number `n` (3 bits).
    pub const fn from_raw(n: u8) -> Option<Self> {
        Some(match n {
            0 => Self::External,
            2 => Self::Nmi,
            3 => Self::HardwareException,
            4 => Self::SoftwareInterrupt,
            5 => Self::PrivilegedSoftwareException,
            6 => Self::SoftwareException,
            7 => Self::Other,
            _ => return None,
        })
    }
}

/// Exceptions that push an error code: #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP.
pub const fn exception_has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21)
}

/// An event to inject or that was being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptionInfo {
    /// Vector (bits 7:0).
    pub vector: u8,
    /// Type (bits 10:8).
    pub kind: InterruptionType,
    /// Error code to deliver (bit 11 set when present).
    pub error_code: Option<u32>,
}

/// Bit 31 of the interruption-information field: valid.
pub const INTR_INFO_VALID: u32 = 1 << 31;
/// Bit 11: deliver error code.
pub const INTR_INFO_DELIVER_ERROR_CODE: u32 = 1 << 11;

impl InterruptionInfo {
    /// An external interrupt with `vector` (32..=255).
    pub fn external(vector: u8) -> Result<Self> {
        if vector < 32 {
            return Err(Error::InvalidArgument("external interrupt vector below 32"));
        }
        Ok(Self {
            vector,
            kind: InterruptionType::External,
            error_code: None,
        })
    }

    /// A hardware exception `vector` (0..32); `error_code` must be given
    /// exactly for the exceptions that push one.
    pub fn exception(vector: u8, error_code: Option<u32>) -> Result<Self> {
        if vector >= 32 || vector == 2 {
            return Err(Error::InvalidArgument("not an exception vector"));
        }
        if exception_has_error_code(vector) != error_code.is_some() {
            return Err(Error::InvalidArgument(
                "error code presence does not match the exception",
            ));
        }
        Ok(Self {
            vector,
            kind: InterruptionType::HardwareException,
            error_code,
        })
    }

    /// An NMI (vector 2).
    pub const fn nmi() -> Self {
        Self {
            vector: 2,
            kind: InterruptionType::Nmi,
            error_code: None,
        }
    }

    /// The 32-bit field value (valid bit set); the error code, if any, goes
    /// separately to `VMENTRY_EXCEPTION_ERROR_CODE`.
    pub const fn to_raw(&self) -> u32 {
        let ec = if self.error_code.is_some() {
            INTR_INFO_DELIVER_ERROR_CODE
        } else {
            0
        };
        INTR_INFO_VALID | ec | ((self.kind as u32) << 8) | self.vector as u32
    }

    /// Decodes a VM-exit interruption or IDT-vectoring information field;
    /// `None` when the valid bit is clear. `error_code` is the matching
    /// error-code field, used only if bit 11 says one was delivered.
    pub fn from_raw(raw: u32, error_code: u32) -> Option<Self> {
        if raw & INTR_INFO_VALID == 0 {
            return None;
        }
        Some(Self {
            vector: raw as u8,
            kind: InterruptionType::from_raw(((raw >> 8) & 7) as u8)?,
            error_code: (raw & INTR_INFO_DELIVER_ERROR_CODE != 0).then_some(error_code),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        // External interrupt 0x20: valid | type 0 | vector.
        assert_eq!(
            InterruptionInfo::external(0x20).unwrap().to_raw(),
            0x8000_0020
        );
        // #GP(0): valid | error code | type 3 | vector 13.
        assert_eq!(
            InterruptionInfo::exception(13, Some(0)).unwrap().to_raw(),
            0x8000_0b0d
        );
        // #UD: no error code.
        assert_eq!(
            InterruptionInfo::exception(6, None).unwrap().to_raw(),
            0x8000_0306
        );
        // NMI: type 2, vector 2.
        assert_eq!(InterruptionInfo::nmi().to_raw(), 0x8000_0202);
    }

    #[test]
    fn refused_events() {
        assert!(InterruptionInfo::external(14).is_err());
        assert!(InterruptionInfo::exception(14, None).is_err());
        assert!(InterruptionInfo::exception(6, Some(0)).is_err());
        assert!(InterruptionInfo::exception(32, None).is_err());
        assert!(InterruptionInfo::exception(2, None).is_err());
    }

    #[test]
    fn decode_exit_info() {
        let i = InterruptionInfo::from_raw(0x8000_0b0e, 0x2).unwrap();
        assert_eq!(i.vector, 14);
        assert_eq!(i.kind, InterruptionType::HardwareException);
        assert_eq!(i.error_code, Some(2));
        let i = InterruptionInfo::from_raw(0x8000_0030, 0xdead).unwrap();
        assert_eq!(
            (i.vector, i.kind, i.error_code),
            (0x30, InterruptionType::External, None)
        );
        assert_eq!(InterruptionInfo::from_raw(0x0000_0030, 0), None);
    }
}
