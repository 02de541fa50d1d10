//! A device that behaves like RAM: the test window for MMIO emulation.

use alloc::{format, string::String, vec::Vec};

use axaddrspace::{AccessWidth, GuestPhysAddr};
use spin::Mutex;

use crate::device::{BaseDevice, MmioDevice, MmioRange};
use crate::error::{Error, Result};

/// An MMIO device that behaves like RAM over its range: a write stores the
/// low `width` bytes of the value little endian, a read returns the stored
/// bytes, and a fresh device reads 0.
///
/// Unlike guest RAM, every access traps to the hypervisor, so a guest can
/// check instruction by instruction that MMIO emulation (decode, width,
/// zero/sign extension, register write-back) is right: the project's `mmio`
/// test guest expects one of these at GPA `0xFEB0_0000`, 4 KiB
/// ([`TEST_BASE`](Self::TEST_BASE), [`TEST_SIZE`](Self::TEST_SIZE)).
pub struct RamDevice {
    name: String,
    range: MmioRange,
    bytes: Mutex<Vec<u8>>,
}

impl RamDevice {
    /// Where the project's `mmio` test guest expects the device.
    pub const TEST_BASE: usize = 0xfeb0_0000;
    /// The size the project's `mmio` test guest expects: one page.
    pub const TEST_SIZE: usize = 0x1000;
    /// The largest size [`new`](Self::new) accepts (16 MiB): the storage is
    /// host heap.
    pub const MAX_SIZE: usize = 16 << 20;

    /// A zero-filled device of `size` bytes at `base`.
    ///
    /// Errors: [`Error::EmptyRange`] for size 0, [`Error::RangeOverflow`] if
    /// the range runs past the end of the address space,
    /// [`Error::Device`] if `size` is above [`MAX_SIZE`](Self::MAX_SIZE) or
    /// the host heap cannot hold it.
    pub fn new(base: GuestPhysAddr, size: usize) -> Result<Self> {
        let name = format!("ram-device@{:#x}", base.as_usize());
        crate::device::make_span(
            crate::DeviceKind::Mmio,
            &name,
            base.as_usize() as u64,
            size as u64,
            usize::MAX as u64,
        )?;
        if size > Self::MAX_SIZE {
            return Err(Error::Device {
                dev: name,
                reason: format!(
                    "size {size:#x} is above the limit of {:#x} bytes",
                    Self::MAX_SIZE
                ),
            });
        }
        let mut bytes = Vec::new();
        if bytes.try_reserve_exact(size).is_err() {
            return Err(Error::Device {
                dev: name,
                reason: format!("cannot allocate {size:#x} bytes of backing store"),
            });
        }
        bytes.resize(size, 0);
        Ok(Self {
            name,
            range: MmioRange::new(base, size),
            bytes: Mutex::new(bytes),
        })
    }

    /// The device the `mmio` test guest expects: 4 KiB at `0xFEB0_0000`.
    /// Fails only if the host heap cannot hold 4 KiB.
    pub fn test_window() -> Result<Self> {
        Self::new(GuestPhysAddr::from_usize(Self::TEST_BASE), Self::TEST_SIZE)
    }

    /// A copy of the stored bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.lock().clone()
    }

    /// The offset of an access of `width` at `addr`, if it lies entirely in
    /// the device.
    #[inline]
    fn offset(&self, addr: GuestPhysAddr, width: AccessWidth) -> Result<usize> {
        let off = addr.as_usize().wrapping_sub(self.range.base.as_usize());
        if off < self.range.size && width.size() <= self.range.size - off {
            Ok(off)
        } else {
            Err(self.offset_error(off, width))
        }
    }

    #[cold]
    #[inline(never)]
    fn offset_error(&self, off: usize, width: AccessWidth) -> Error {
        if off >= self.range.size {
            Error::BadOffset {
                dev: self.name.clone(),
                offset: off as u64,
            }
        } else {
            Error::BadWidth {
                dev: self.name.clone(),
                offset: off as u64,
                width,
            }
        }
    }
}

impl BaseDevice for RamDevice {
    fn name(&self) -> &str {
        &self.name
    }
}

impl MmioDevice for RamDevice {
    fn mmio_range(&self) -> MmioRange {
        self.range
    }

    fn mmio_read(&self, addr: GuestPhysAddr, width: AccessWidth) -> Result<u64> {
        let off = self.offset(addr, width)?;
        let bytes = self.bytes.lock();
        // `offset` checked that `width` bytes from `off` are in the window,
        // so the fixed-size reads below find their bytes.
        let s = &bytes[off..];
        Ok(match width {
            AccessWidth::Byte => s.first_chunk::<1>().map(|b| u64::from(b[0])),
            AccessWidth::Word => s.first_chunk().map(|b| u16::from_le_bytes(*b).into()),
            AccessWidth::Dword => s.first_chunk().map(|b| u32::from_le_bytes(*b).into()),
            AccessWidth::Qword => s.first_chunk().map(|b| u64::from_le_bytes(*b)),
        }
        .unwrap_or(0))
    }

    fn mmio_write(&self, addr: GuestPhysAddr, width: AccessWidth, val: u64) -> Result {
        let off = self.offset(addr, width)?;
        let mut bytes = self.bytes.lock();
        let s = &mut bytes[off..];
        match width {
            AccessWidth::Byte => s.first_chunk_mut::<1>().map(|b| *b = [val as u8]),
            AccessWidth::Word => s.first_chunk_mut().map(|b| *b = (val as u16).to_le_bytes()),
            AccessWidth::Dword => s.first_chunk_mut().map(|b| *b = (val as u32).to_le_bytes()),
            AccessWidth::Qword => s.first_chunk_mut().map(|b| *b = val.to_le_bytes()),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceKind, DeviceSet};
    use std::sync::Arc;

    fn gpa(a: usize) -> GuestPhysAddr {
        GuestPhysAddr::from_usize(a)
    }

    #[test]
    fn stores_little_endian_and_reads_back() {
        let d = RamDevice::test_window().unwrap();
        assert_eq!(d.mmio_range(), MmioRange::new(gpa(0xfeb0_0000), 0x1000));
        assert_eq!(d.name(), "ram-device@0xfeb00000");
        // Fresh: zero everywhere.
        assert_eq!(d.mmio_read(gpa(0xfeb0_0ff8), AccessWidth::Qword), Ok(0));
        d.mmio_write(gpa(0xfeb0_0004), AccessWidth::Dword, 0xdead_beef)
            .unwrap();
        // Little endian: the low byte lands at the lowest address.
        assert_eq!(&d.snapshot()[4..8], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(d.mmio_read(gpa(0xfeb0_0006), AccessWidth::Word), Ok(0xdead));
        assert_eq!(
            d.mmio_read(gpa(0xfeb0_0000), AccessWidth::Qword),
            Ok(0xdead_beef_0000_0000)
        );
        // A byte write changes one byte and ignores the value's upper bits.
        d.mmio_write(gpa(0xfeb0_0005), AccessWidth::Byte, 0x1234)
            .unwrap();
        assert_eq!(
            d.mmio_read(gpa(0xfeb0_0004), AccessWidth::Dword),
            Ok(0xdead_34ef)
        );
    }

    #[test]
    fn accesses_past_the_end_are_refused() {
        let d = RamDevice::new(gpa(0x1000), 0x10).unwrap();
        d.mmio_write(gpa(0x1008), AccessWidth::Qword, u64::MAX)
            .unwrap();
        assert_eq!(
            d.mmio_read(gpa(0x100c), AccessWidth::Qword),
            Err(Error::BadWidth {
                dev: "ram-device@0x1000".into(),
                offset: 0xc,
                width: AccessWidth::Qword
            })
        );
        assert_eq!(
            d.mmio_write(gpa(0x1010), AccessWidth::Byte, 0),
            Err(Error::BadOffset {
                dev: "ram-device@0x1000".into(),
                offset: 0x10
            })
        );
        assert!(d.mmio_read(gpa(0xfff), AccessWidth::Byte).is_err());
        assert_eq!(d.snapshot()[8..], [0xff; 8]);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert_eq!(
            RamDevice::new(gpa(0x1000), 0).err(),
            Some(Error::EmptyRange {
                kind: DeviceKind::Mmio,
                dev: "ram-device@0x1000".into()
            })
        );
        assert!(matches!(
            RamDevice::new(gpa(usize::MAX - 0xfff), 0x2000),
            Err(Error::RangeOverflow { .. })
        ));
        assert!(matches!(
            RamDevice::new(gpa(0), RamDevice::MAX_SIZE + 1),
            Err(Error::Device { .. })
        ));
    }

    #[test]
    fn routed_through_a_device_set() {
        let d = Arc::new(RamDevice::test_window().unwrap());
        let mut set = DeviceSet::new();
        set.add_mmio(d.clone()).unwrap();
        set.handle_mmio_write(gpa(0xfeb0_0ffc), AccessWidth::Dword, 0xcafe_f00d)
            .unwrap();
        assert_eq!(
            set.handle_mmio_read(gpa(0xfeb0_0ffe), AccessWidth::Word),
            Ok(0xcafe)
        );
        // The last dword is fine; one byte further crosses the end.
        assert!(matches!(
            set.handle_mmio_read(gpa(0xfeb0_0ffd), AccessWidth::Dword),
            Err(Error::CrossesEnd { .. })
        ));
        assert_eq!(
            set.handle_mmio_read(gpa(0xfeb0_1000), AccessWidth::Byte),
            Err(Error::Unclaimed {
                kind: DeviceKind::Mmio,
                addr: 0xfeb0_1000
            })
        );
    }
}
