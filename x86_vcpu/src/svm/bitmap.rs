//! SVM I/O permission map (12 KiB) and MSR permission map (8 KiB), APM 15.10
//! and 15.11. A set bit means "intercept".

use crate::vmx::bitmap::MsrAccessKind;
use crate::{Error, Result};

/// Size of the IOPM: 12 KiB (3 contiguous pages).
pub const IOPM_SIZE: usize = 3 * 4096;
/// Size of the MSRPM: 8 KiB (2 contiguous pages).
pub const MSRPM_SIZE: usize = 2 * 4096;

fn check_len(s: &[u8], len: usize) -> Result {
    if s.len() != len {
        return Err(Error::InvalidArgument(
            "permission map storage has the wrong size",
        ));
    }
    Ok(())
}

/// The I/O permission map: bit `n` intercepts port `n`. The bits past port
/// 0xFFFF (third page) cover accesses that wrap; they stay set.
#[derive(Debug)]
pub struct SvmIopm<S> {
    map: S,
}

impl<S: AsRef<[u8]> + AsMut<[u8]>> SvmIopm<S> {
    /// Wraps 12 KiB of storage and sets every bit (intercept everything).
    pub fn new_intercept_all(mut map: S) -> Result<Self> {
        check_len(map.as_ref(), IOPM_SIZE)?;
        map.as_mut().fill(0xff);
        Ok(Self { map })
    }

    /// Makes `port` exit or pass through.
    pub fn set_intercept(&mut self, port: u16, intercept: bool) {
        let (byte, bit) = (usize::from(port) / 8, port % 8);
        let b = &mut self.map.as_mut()[byte];
        if intercept {
            *b |= 1 << bit;
        } else {
            *b &= !(1 << bit);
        }
    }

    /// [`Self::set_intercept`] for `first..=last`.
    pub fn set_range(&mut self, first: u16, last: u16, intercept: bool) {
        for port in first..=last {
            self.set_intercept(port, intercept);
        }
    }

    /// Whether `port` is intercepted.
    pub fn is_intercepted(&self, port: u16) -> bool {
        self.map.as_ref()[usize::from(port) / 8] & (1 << (port % 8)) != 0
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.map
    }
}

/// Bit position of `msr` in the MSRPM (two bits per MSR, read then write),
/// `None` outside the three ranges 0-0x1FFF, 0xC000_0000-0xC000_1FFF,
/// 0xC001_0000-0xC001_1FFF.
pub fn msrpm_bit(msr: u32, kind: MsrAccessKind) -> Option<usize> {
    let base_byte = match msr {
        0..=0x1fff => 0x000,
        0xc000_0000..=0xc000_1fff => 0x800,
        0xc001_0000..=0xc001_1fff => 0x1000,
        _ => return None,
    };
    let index = (msr & 0x1fff) as usize;
    let rw = match kind {
        MsrAccessKind::Read => 0,
        MsrAccessKind::Write => 1,
    };
    Some(base_byte * 8 + index * 2 + rw)
}

/// The MSR permission map. MSRs outside the three ranges always exit.
#[derive(Debug)]
pub struct SvmMsrpm<S> {
    map: S,
}

impl<S: AsRef<[u8]> + AsMut<[u8]>> SvmMsrpm<S> {
    /// Wraps 8 KiB of storage and sets every bit (intercept everything).
    pub fn new_intercept_all(mut map: S) -> Result<Self> {
        check_len(map.as_ref(), MSRPM_SIZE)?;
        map.as_mut().fill(0xff);
        Ok(Self { map })
    }

    /// Makes a `kind` access to `msr` exit or not; MSRs outside the ranges
    /// cannot be passed through.
    pub fn set_intercept(&mut self, msr: u32, kind: MsrAccessKind, intercept: bool) -> Result {
        let bit = msrpm_bit(msr, kind).ok_or(Error::InvalidArgument(
            "MSR outside the MSRPM ranges always exits",
        ))?;
        let b = &mut self.map.as_mut()[bit / 8];
        if intercept {
            *b |= 1 << (bit % 8);
        } else {
            *b &= !(1 << (bit % 8));
        }
        Ok(())
    }

    /// Intercepts or passes through both reads and writes of `msr`.
    pub fn set_read_write(&mut self, msr: u32, intercept: bool) -> Result {
        self.set_intercept(msr, MsrAccessKind::Read, intercept)?;
        self.set_intercept(msr, MsrAccessKind::Write, intercept)
    }

    /// Whether a `kind` access to `msr` exits.
    pub fn is_intercepted(&self, msr: u32, kind: MsrAccessKind) -> bool {
        match msrpm_bit(msr, kind) {
            Some(bit) => self.map.as_ref()[bit / 8] & (1 << (bit % 8)) != 0,
            None => true,
        }
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn iopm_bits() {
        let mut m = SvmIopm::new_intercept_all(vec![0u8; IOPM_SIZE]).unwrap();
        assert!(m.storage().iter().all(|&b| b == 0xff));
        m.set_intercept(0x80, false);
        // Port 0x80: byte 0x10, bit 0.
        assert_eq!(m.storage()[0x10], 0xfe);
        assert!(!m.is_intercepted(0x80));
        assert!(m.is_intercepted(0x81));
        m.set_intercept(0xffff, false);
        assert_eq!(m.storage()[0x1fff], 0x7f);
        // The wrap-around page stays intercepted.
        assert!(m.storage()[0x2000..].iter().all(|&b| b == 0xff));
        m.set_range(0x60, 0x67, false);
        assert_eq!(m.storage()[0xc], 0);
        assert!(SvmIopm::new_intercept_all(vec![0u8; 8192]).is_err());
    }

    #[test]
    fn msrpm_bits() {
        let mut m = SvmMsrpm::new_intercept_all(vec![0u8; MSRPM_SIZE]).unwrap();
        // EFER (0xC000_0080) read: byte 0x800 + 0x80*2/8 = 0x820, bit 0; write bit 1.
        m.set_intercept(0xc000_0080, MsrAccessKind::Read, false)
            .unwrap();
        assert_eq!(m.storage()[0x820], 0xfe);
        m.set_intercept(0xc000_0080, MsrAccessKind::Write, false)
            .unwrap();
        assert_eq!(m.storage()[0x820], 0xfc);
        // MSR 0x10 (TSC): byte 4, bits 0 and 1.
        m.set_read_write(0x10, false).unwrap();
        assert_eq!(m.storage()[4], 0xfc);
        // VM_HSAVE_PA (0xC001_0117): byte 0x1000 + 0x117*2/8 = 0x1045, bits 6/7.
        m.set_intercept(0xc001_0117, MsrAccessKind::Write, false)
            .unwrap();
        assert_eq!(m.storage()[0x1045], 0x7f);
        assert!(!m.is_intercepted(0xc000_0080, MsrAccessKind::Read));
        assert!(m.is_intercepted(0xc001_0117, MsrAccessKind::Read));
        assert!(m.is_intercepted(0x4000_0000, MsrAccessKind::Read));
        assert!(
            m.set_intercept(0x4000_0000, MsrAccessKind::Read, false)
                .is_err()
        );
        // The fourth (reserved) 2 KiB stays all ones.
        assert!(m.storage()[0x1800..].iter().all(|&b| b == 0xff));
    }
}
