//! Bounds-checked little-endian reads from an image.

use crate::{Error, Result};

/// The bytes `image[off..off + len]`, or `Truncated` naming `what`.
pub(crate) fn slice<'a>(
    image: &'a [u8],
    off: usize,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8]> {
    let truncated = |need| Error::Truncated {
        what,
        need,
        have: image.len(),
    };
    let end = off.checked_add(len).ok_or(truncated(usize::MAX))?;
    image.get(off..end).ok_or(truncated(end))
}

fn array<const N: usize>(image: &[u8], off: usize, what: &'static str) -> Result<[u8; N]> {
    let mut a = [0u8; N];
    a.copy_from_slice(slice(image, off, N, what)?);
    Ok(a)
}

/// Little-endian `u16` at `off`.
pub(crate) fn u16_at(image: &[u8], off: usize, what: &'static str) -> Result<u16> {
    array(image, off, what).map(u16::from_le_bytes)
}

/// Little-endian `u32` at `off`.
pub(crate) fn u32_at(image: &[u8], off: usize, what: &'static str) -> Result<u32> {
    array(image, off, what).map(u32::from_le_bytes)
}

/// Little-endian `u64` at `off`.
pub(crate) fn u64_at(image: &[u8], off: usize, what: &'static str) -> Result<u64> {
    array(image, off, what).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian() {
        let b = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09];
        assert_eq!(u16_at(&b, 1, "x"), Ok(0x0302));
        assert_eq!(u32_at(&b, 0, "x"), Ok(0x0403_0201));
        assert_eq!(u64_at(&b, 1, "x"), Ok(0x0908_0706_0504_0302));
    }

    #[test]
    fn short_reads_are_truncated_errors() {
        let b = [0u8; 6];
        assert_eq!(
            u32_at(&b, 4, "field"),
            Err(Error::Truncated {
                what: "field",
                need: 8,
                have: 6
            })
        );
        assert_eq!(
            u64_at(&b, usize::MAX - 2, "far"),
            Err(Error::Truncated {
                what: "far",
                need: usize::MAX,
                have: 6
            })
        );
        assert_eq!(slice(&b, 6, 0, "empty"), Ok(&[][..]));
    }
}
