//! Reading and writing guest physical memory.

use core::mem::{MaybeUninit, size_of};

use crate::{GuestPhysAddr, Result};

/// Plain data that may be copied to and from guest memory byte by byte.
///
/// # Safety
///
/// Every bit pattern must be a valid value of the type, and the type must
/// have no padding bytes (so all its bytes are initialized). Integers and
/// arrays of them qualify; a `#[repr(C)]` struct of such fields without
/// padding does too.
pub unsafe trait GuestPod: Copy + 'static {}

macro_rules! impl_pod {
    ($($t:ty),*) => { $(
        // SAFETY: a primitive integer: no padding, every bit pattern valid.
        unsafe impl GuestPod for $t {}
    )* };
}
impl_pod!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

// SAFETY: an array of `GuestPod` has no padding between elements and every
// element accepts any bit pattern.
unsafe impl<T: GuestPod, const N: usize> GuestPod for [T; N] {}

/// Something guest physical memory can be read from: an address space, or a
/// fake memory in tests.
pub trait GuestMemoryReader {
    /// Reads `buf.len()` bytes starting at `gpa`. Fails (without panicking)
    /// if any byte is not backed by memory.
    fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result;

    /// Reads a little-endian `u32`.
    fn read_u32(&self, gpa: GuestPhysAddr) -> Result<u32> {
        let mut b = [0; 4];
        self.read_bytes(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian `u64`.
    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64> {
        let mut b = [0; 8];
        self.read_bytes(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a value of a plain-data type.
    fn read_obj<T: GuestPod>(&self, gpa: GuestPhysAddr) -> Result<T>
    where
        Self: Sized,
    {
        let mut v = MaybeUninit::<T>::zeroed();
        // SAFETY: the zeroed storage is `size_of::<T>()` initialized bytes,
        // exclusively borrowed here.
        let bytes =
            unsafe { core::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), size_of::<T>()) };
        self.read_bytes(gpa, bytes)?;
        // SAFETY: `T: GuestPod` accepts any bit pattern.
        Ok(unsafe { v.assume_init() })
    }
}

/// Something guest physical memory can be written to.
pub trait GuestMemoryWriter {
    /// Writes `buf` starting at `gpa`. Fails if any byte is not backed by
    /// memory; bytes before the failing page may already be written.
    fn write_bytes(&mut self, gpa: GuestPhysAddr, buf: &[u8]) -> Result;

    /// Writes a value of a plain-data type.
    fn write_obj<T: GuestPod>(&mut self, gpa: GuestPhysAddr, val: &T) -> Result
    where
        Self: Sized,
    {
        // SAFETY: `T: GuestPod` has no padding, so all `size_of::<T>()`
        // bytes behind `val` are initialized.
        let bytes =
            unsafe { core::slice::from_raw_parts((val as *const T).cast::<u8>(), size_of::<T>()) };
        self.write_bytes(gpa, bytes)
    }
}

impl<M: GuestMemoryReader + ?Sized> GuestMemoryReader for &M {
    fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result {
        (**self).read_bytes(gpa, buf)
    }
}

impl<M: GuestMemoryReader + ?Sized> GuestMemoryReader for &mut M {
    fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result {
        (**self).read_bytes(gpa, buf)
    }
}

impl<M: GuestMemoryWriter + ?Sized> GuestMemoryWriter for &mut M {
    fn write_bytes(&mut self, gpa: GuestPhysAddr, buf: &[u8]) -> Result {
        (**self).write_bytes(gpa, buf)
    }
}
