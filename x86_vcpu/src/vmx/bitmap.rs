//! VMX I/O bitmaps and MSR bitmap (Intel SDM vol. 3, 25.6.4 and 25.6.9).
//!
//! Both are plain bit arrays over caller-provided storage (a heap array in
//! tests, [`crate::PhysFrames`] on the machine). A set bit means "exit".

use crate::hal::PAGE_SIZE;
use crate::{Error, Result};

fn check_len(s: &[u8], len: usize) -> Result {
    if s.len() != len {
        return Err(Error::InvalidArgument("bitmap storage has the wrong size"));
    }
    Ok(())
}

fn set_bit(bytes: &mut [u8], bit: usize, on: bool) {
    let mask = 1u8 << (bit % 8);
    if on {
        bytes[bit / 8] |= mask;
    } else {
        bytes[bit / 8] &= !mask;
    }
}

fn get_bit(bytes: &[u8], bit: usize) -> bool {
    bytes[bit / 8] & (1 << (bit % 8)) != 0
}

/// The two 4 KiB I/O bitmaps: A covers ports 0x0000-0x7FFF, B covers
/// 0x8000-0xFFFF, one bit per port.
#[derive(Debug)]
pub struct VmxIoBitmap<S> {
    a: S,
    b: S,
}

impl<S: AsRef<[u8]> + AsMut<[u8]>> VmxIoBitmap<S> {
    /// Wraps two 4096-byte storages, leaving their content as is.
    pub fn new(a: S, b: S) -> Result<Self> {
        check_len(a.as_ref(), PAGE_SIZE)?;
        check_len(b.as_ref(), PAGE_SIZE)?;
        Ok(Self { a, b })
    }

    fn locate(&mut self, port: u16) -> (&mut [u8], usize) {
        let p = usize::from(port);
        if p < 0x8000 {
            (self.a.as_mut(), p)
        } else {
            (self.b.as_mut(), p - 0x8000)
        }
    }

    /// Makes accesses to `port` exit (`true`) or pass through (`false`).
    pub fn set_intercept(&mut self, port: u16, intercept: bool) {
        let (bytes, bit) = self.locate(port);
        set_bit(bytes, bit, intercept);
    }

    /// [`Self::set_intercept`] for every port of `first..=last`.
    pub fn set_range(&mut self, first: u16, last: u16, intercept: bool) {
        for port in first..=last {
            self.set_intercept(port, intercept);
        }
    }

    /// Intercepts (`true`) or passes through (`false`) every port.
    pub fn set_all(&mut self, intercept: bool) {
        let byte = if intercept { 0xff } else { 0 };
        self.a.as_mut().fill(byte);
        self.b.as_mut().fill(byte);
    }

    /// Whether an access to `port` exits. A multi-byte access exits if any
    /// of its ports does (the processor checks each byte).
    pub fn is_intercepted(&self, port: u16) -> bool {
        let p = usize::from(port);
        if p < 0x8000 {
            get_bit(self.a.as_ref(), p)
        } else {
            get_bit(self.b.as_ref(), p - 0x8000)
        }
    }

    /// The storage of bitmap A and bitmap B.
    pub fn storage(&self) -> (&S, &S) {
        (&self.a, &self.b)
    }
}

/// Whether an MSR bitmap entry is about reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrAccessKind {
    /// RDMSR.
    Read,
    /// WRMSR.
    Write,
}

/// The 4 KiB VMX MSR bitmap: read-low at offset 0x000 (MSRs
/// 0x0000_0000-0x0000_1FFF), read-high at 0x400 (0xC000_0000-0xC000_1FFF),
/// write-low at 0x800, write-high at 0xC00. MSRs outside both ranges always
/// exit.
#[derive(Debug)]
pub struct VmxMsrBitmap<S> {
    page: S,
}

/// Bit position of `msr` in the VMX MSR bitmap, `None` outside the ranges.
pub fn vmx_msr_bit(msr: u32, kind: MsrAccessKind) -> Option<usize> {
    let (base, index) = match msr {
        0..=0x1fff => (0x000, msr),
        0xc000_0000..=0xc000_1fff => (0x400, msr - 0xc000_0000),
        _ => return None,
    };
    let base = match kind {
        MsrAccessKind::Read => base,
        MsrAccessKind::Write => base + 0x800,
    };
    Some(base * 8 + index as usize)
}

impl<S: AsRef<[u8]> + AsMut<[u8]>> VmxMsrBitmap<S> {
    /// Wraps one 4096-byte storage, leaving its content as is.
    pub fn new(page: S) -> Result<Self> {
        check_len(page.as_ref(), PAGE_SIZE)?;
        Ok(Self { page })
    }

    /// Makes `kind` accesses to `msr` exit or not. MSRs outside the two
    /// ranges cannot be passed through: [`Error::InvalidArgument`].
    pub fn set_intercept(&mut self, msr: u32, kind: MsrAccessKind, intercept: bool) -> Result {
        let bit = vmx_msr_bit(msr, kind).ok_or(Error::InvalidArgument(
            "MSR outside the VMX MSR bitmap ranges always exits",
        ))?;
        set_bit(self.page.as_mut(), bit, intercept);
        Ok(())
    }

    /// Intercepts or passes through both reads and writes of `msr`.
    pub fn set_read_write(&mut self, msr: u32, intercept: bool) -> Result {
        self.set_intercept(msr, MsrAccessKind::Read, intercept)?;
        self.set_intercept(msr, MsrAccessKind::Write, intercept)
    }

    /// Intercepts (`true`) or passes through (`false`) every MSR in range.
    pub fn set_all(&mut self, intercept: bool) {
        self.page.as_mut().fill(if intercept { 0xff } else { 0 });
    }

    /// Whether a `kind` access to `msr` exits.
    pub fn is_intercepted(&self, msr: u32, kind: MsrAccessKind) -> bool {
        match vmx_msr_bit(msr, kind) {
            Some(bit) => get_bit(self.page.as_ref(), bit),
            None => true,
        }
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn io_bitmap_bit_positions() {
        let mut bm = VmxIoBitmap::new(vec![0u8; 4096], vec![0u8; 4096]).unwrap();
        bm.set_intercept(0x3f8, true);
        bm.set_intercept(0x8000, true);
        bm.set_intercept(0xffff, true);
        let (a, b) = bm.storage();
        // Port 0x3f8: byte 0x7f, bit 0 of bitmap A.
        assert_eq!(a[0x7f], 0x01);
        // Port 0x8000: byte 0, bit 0 of bitmap B; 0xffff: last bit of B.
        assert_eq!(b[0], 0x01);
        assert_eq!(b[0xfff], 0x80);
        assert_eq!(a.iter().map(|x| x.count_ones()).sum::<u32>(), 1);
        assert!(bm.is_intercepted(0x3f8));
        assert!(!bm.is_intercepted(0x3f9));
        bm.set_intercept(0x3f8, false);
        assert!(!bm.is_intercepted(0x3f8));
        assert_eq!(bm.storage().0[0x7f], 0);
    }

    #[test]
    fn io_bitmap_ranges_and_all() {
        let mut bm = VmxIoBitmap::new(vec![0u8; 4096], vec![0u8; 4096]).unwrap();
        bm.set_range(0x3f8, 0x3ff, true);
        assert_eq!(bm.storage().0[0x7f], 0xff);
        assert_eq!(bm.storage().0[0x7e], 0x00);
        bm.set_all(true);
        assert!(
            bm.storage()
                .0
                .iter()
                .chain(bm.storage().1.iter())
                .all(|&x| x == 0xff)
        );
        bm.set_intercept(0x80, false);
        assert_eq!(bm.storage().0[0x10], 0xfe);
        assert!(VmxIoBitmap::new(vec![0u8; 4095], vec![0u8; 4096]).is_err());
    }

    #[test]
    fn msr_bitmap_regions() {
        let mut bm = VmxMsrBitmap::new(vec![0u8; 4096]).unwrap();
        // IA32_APIC_BASE (0x1B) read: byte 3 bit 3 of read-low.
        bm.set_intercept(0x1b, MsrAccessKind::Read, true).unwrap();
        assert_eq!(bm.storage()[0x003], 0x08);
        // IA32_EFER (0xC0000080) write: write-high at 0xC00, byte 0x10 bit 0.
        bm.set_intercept(0xc000_0080, MsrAccessKind::Write, true)
            .unwrap();
        assert_eq!(bm.storage()[0xc10], 0x01);
        // x2APIC ICR 0x830 read+write: read-low byte 0x106 bit 0, write-low 0x906.
        bm.set_read_write(0x830, true).unwrap();
        assert_eq!(bm.storage()[0x106], 0x01);
        assert_eq!(bm.storage()[0x906], 0x01);
        // 0xC0001FFF read: last bit of read-high.
        bm.set_intercept(0xc000_1fff, MsrAccessKind::Read, true)
            .unwrap();
        assert_eq!(bm.storage()[0x7ff], 0x80);
        assert_eq!(bm.storage().iter().map(|x| x.count_ones()).sum::<u32>(), 5);

        assert!(bm.is_intercepted(0x1b, MsrAccessKind::Read));
        assert!(!bm.is_intercepted(0x1b, MsrAccessKind::Write));
        assert!(bm.is_intercepted(0xc000_0080, MsrAccessKind::Write));
        assert!(!bm.is_intercepted(0xc000_0080, MsrAccessKind::Read));
        // Outside the ranges: always exits, cannot be passed through.
        assert!(bm.is_intercepted(0x2000, MsrAccessKind::Read));
        assert!(bm.is_intercepted(0xc001_0114, MsrAccessKind::Write));
        assert!(
            bm.set_intercept(0x4000_0000, MsrAccessKind::Read, false)
                .is_err()
        );
    }
}
