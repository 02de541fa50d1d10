//! SVM event injection: the EVENTINJ field (APM 15.20) and EXITINTINFO, which
//! has the same format.

use crate::vmx::event::exception_has_error_code;
use crate::{Error, Result};

/// Event type (bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SvmEventType {
    /// External or virtual interrupt (INTR).
    Interrupt = 0,
    /// NMI.
    Nmi = 2,
    /// Exception (fault or trap).
    Exception = 3,
    /// Software interrupt (INTn).
    SoftwareInterrupt = 4,
}

/// An event to inject, or the one EXITINTINFO reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvmEvent {
    /// Vector (bits 7:0).
    pub vector: u8,
    /// Type (bits 10:8).
    pub kind: SvmEventType,
    /// Error code (bits 63:32), pushed if present (EV, bit 11).
    pub error_code: Option<u32>,
}

/// EVENTINJ valid bit (31).
pub const EVENTINJ_VALID: u64 = 1 << 31;
/// EVENTINJ error-code-valid bit (11).
pub const EVENTINJ_EV: u64 = 1 << 11;

impl SvmEvent {
    /// An external interrupt with `vector` (32..=255).
    pub fn interrupt(vector: u8) -> Result<Self> {
        if vector < 32 {
            return Err(Error::InvalidArgument("external interrupt vector below 32"));
        }
        Ok(Self {
            vector,
            kind: SvmEventType::Interrupt,
            error_code: None,
        })
    }

    /// An exception (0..32 except 2), with an error code exactly for those that push one.
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
            kind: SvmEventType::Exception,
            error_code,
        })
    }

    /// An NMI.
    pub const fn nmi() -> Self {
        Self {
            vector: 2,
            kind: SvmEventType::Nmi,
            error_code: None,
        }
    }

    /// The 64-bit EVENTINJ value (valid bit set).
    pub const fn to_raw(&self) -> u64 {
        let (ev, ec) = match self.error_code {
            Some(e) => (EVENTINJ_EV, (e as u64) << 32),
            None => (0, 0),
        };
        EVENTINJ_VALID | ev | ec | ((self.kind as u64) << 8) | self.vector as u64
    }

    /// Decodes EVENTINJ/EXITINTINFO; `None` if not valid or of a reserved type.
    pub const fn from_raw(raw: u64) -> Option<Self> {
        if raw & EVENTINJ_VALID == 0 {
            return None;
        }
        let kind = match (raw >> 8) & 7 {
            0 => SvmEventType::Interrupt,
            2 => SvmEventType::Nmi,
            3 => SvmEventType::Exception,
            4 => SvmEventType::SoftwareInterrupt,
            _ => return None,
        };
        let error_code = if raw & EVENTINJ_EV != 0 {
            Some((raw >> 32) as u32)
        } else {
            None
        };
        Some(Self {
            vector: raw as u8,
            kind,
            error_code,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventinj_encoding() {
        assert_eq!(SvmEvent::interrupt(0x30).unwrap().to_raw(), 0x8000_0030);
        // #PF with error code 2: V | EV | type 3 | vector 14 | ec << 32.
        assert_eq!(
            SvmEvent::exception(14, Some(2)).unwrap().to_raw(),
            0x0000_0002_8000_0b0e
        );
        assert_eq!(SvmEvent::exception(6, None).unwrap().to_raw(), 0x8000_0306);
        assert_eq!(SvmEvent::nmi().to_raw(), 0x8000_0202);
        assert!(SvmEvent::interrupt(8).is_err());
        assert!(SvmEvent::exception(13, None).is_err());
    }

    #[test]
    fn exitintinfo_decoding() {
        let e = SvmEvent::from_raw(0x0000_0010_8000_0b0d).unwrap();
        assert_eq!(
            (e.vector, e.kind, e.error_code),
            (13, SvmEventType::Exception, Some(0x10))
        );
        assert_eq!(SvmEvent::from_raw(0x30), None);
        assert_eq!(SvmEvent::from_raw(0x8000_0130), None); // type 1 reserved
    }
}
