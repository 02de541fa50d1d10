//! The seam between the loaders and the memory of a guest.

use alloc::{vec, vec::Vec};

use axaddrspace::GuestPhysAddr;

use crate::{Error, Result};

/// Guest physical memory as the loaders see it.
///
/// The VM implements it over its address space; tests and tools use
/// [`VecGuestMemory`]. Accesses may span several backing regions as long as
/// every byte is guest memory; an access that is not entirely inside guest
/// memory fails with [`Error::OutsideGuestMemory`] and, for `write` and
/// `fill`, should change nothing.
pub trait GuestMemory {
    /// Copies `data` to guest memory at `gpa`.
    fn write(&mut self, gpa: GuestPhysAddr, data: &[u8]) -> Result;
    /// Sets `len` bytes at `gpa` to `byte`.
    fn fill(&mut self, gpa: GuestPhysAddr, len: usize, byte: u8) -> Result;
    /// Copies guest memory at `gpa` into `buf`.
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result;
    /// Whether all of `gpa..gpa + len` is guest memory.
    fn contains(&self, gpa: GuestPhysAddr, len: usize) -> bool;
}

/// Guest memory backed by heap buffers, one per region: for tests, tools, and
/// building a guest image before copying it into a real VM.
#[derive(Debug, Clone, Default)]
pub struct VecGuestMemory {
    /// Regions sorted by start address, never overlapping.
    regions: Vec<(usize, Vec<u8>)>,
}

impl VecGuestMemory {
    /// Memory with no region yet.
    pub const fn new() -> Self {
        Self {
            regions: Vec::new(),
        }
    }

    /// Adds a zero-filled region of `len` bytes at `gpa`.
    ///
    /// Fails with [`Error::InvalidRegion`] if the region is empty, wraps
    /// around the address space, or overlaps an existing region.
    pub fn add_region(&mut self, gpa: GuestPhysAddr, len: usize) -> Result {
        let start = gpa.as_usize();
        let invalid = |reason| Error::InvalidRegion { gpa, len, reason };
        if len == 0 {
            return Err(invalid("region is empty"));
        }
        let end = start
            .checked_add(len)
            .ok_or(invalid("region wraps around the address space"))?;
        if self
            .regions
            .iter()
            .any(|(s, b)| start < s + b.len() && *s < end)
        {
            return Err(invalid("region overlaps an existing region"));
        }
        let at = self.regions.partition_point(|(s, _)| *s < start);
        self.regions.insert(at, (start, vec![0; len]));
        Ok(())
    }

    /// Builder form of [`add_region`](Self::add_region).
    pub fn with_region(mut self, gpa: GuestPhysAddr, len: usize) -> Result<Self> {
        self.add_region(gpa, len)?;
        Ok(self)
    }

    /// The regions as `(start, length)`, sorted by start.
    pub fn regions(&self) -> impl Iterator<Item = (GuestPhysAddr, usize)> + '_ {
        self.regions
            .iter()
            .map(|(s, b)| (GuestPhysAddr::from_usize(*s), b.len()))
    }

    /// Splits `gpa..gpa + len` into `(region index, offset in region, chunk
    /// length)` pieces, or `None` if a byte of it is not guest memory.
    fn chunks(&self, gpa: GuestPhysAddr, len: usize) -> Option<Vec<(usize, usize, usize)>> {
        let mut addr = gpa.as_usize();
        let end = addr.checked_add(len)?;
        let mut out = Vec::new();
        while addr < end {
            let i = self
                .regions
                .partition_point(|(s, _)| *s <= addr)
                .checked_sub(1)?;
            let (start, buf) = &self.regions[i];
            let off = addr - start;
            if off >= buf.len() {
                return None;
            }
            let n = (buf.len() - off).min(end - addr);
            out.push((i, off, n));
            addr += n;
        }
        Some(out)
    }

    fn chunks_or_err(&self, gpa: GuestPhysAddr, len: usize) -> Result<Vec<(usize, usize, usize)>> {
        self.chunks(gpa, len)
            .ok_or(Error::OutsideGuestMemory { gpa, len })
    }
}

impl GuestMemory for VecGuestMemory {
    fn write(&mut self, gpa: GuestPhysAddr, data: &[u8]) -> Result {
        let mut src = data;
        for (i, off, n) in self.chunks_or_err(gpa, data.len())? {
            let (head, rest) = src.split_at(n);
            self.regions[i].1[off..off + n].copy_from_slice(head);
            src = rest;
        }
        Ok(())
    }

    fn fill(&mut self, gpa: GuestPhysAddr, len: usize, byte: u8) -> Result {
        for (i, off, n) in self.chunks_or_err(gpa, len)? {
            self.regions[i].1[off..off + n].fill(byte);
        }
        Ok(())
    }

    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result {
        let mut dst = &mut buf[..];
        for (i, off, n) in self.chunks_or_err(gpa, dst.len())? {
            let (head, rest) = dst.split_at_mut(n);
            head.copy_from_slice(&self.regions[i].1[off..off + n]);
            dst = rest;
        }
        Ok(())
    }

    fn contains(&self, gpa: GuestPhysAddr, len: usize) -> bool {
        self.chunks(gpa, len).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpa(a: usize) -> GuestPhysAddr {
        GuestPhysAddr::from_usize(a)
    }

    #[test]
    fn accesses_span_adjacent_regions_but_not_holes() {
        let mut m = VecGuestMemory::new()
            .with_region(gpa(0x2000), 0x1000)
            .unwrap()
            .with_region(gpa(0x1000), 0x1000)
            .unwrap()
            .with_region(gpa(0x4000), 0x1000)
            .unwrap();
        assert_eq!(
            m.regions().collect::<Vec<_>>(),
            [
                (gpa(0x1000), 0x1000),
                (gpa(0x2000), 0x1000),
                (gpa(0x4000), 0x1000)
            ]
        );
        assert!(m.contains(gpa(0x1ffe), 4));
        assert!(m.contains(gpa(0x1000), 0x2000));
        assert!(!m.contains(gpa(0x1000), 0x2001));
        assert!(!m.contains(gpa(0xfff), 1));
        assert!(!m.contains(gpa(0x2fff), 0x1002));
        assert!(!m.contains(gpa(usize::MAX), 2));

        m.write(gpa(0x1ffe), &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 6];
        m.read(gpa(0x1ffd), &mut b).unwrap();
        assert_eq!(b, [0, 1, 2, 3, 4, 0]);
        m.fill(gpa(0x1fff), 2, 0xaa).unwrap();
        m.read(gpa(0x1ffd), &mut b).unwrap();
        assert_eq!(b, [0, 1, 0xaa, 0xaa, 4, 0]);
    }

    #[test]
    fn out_of_range_access_changes_nothing() {
        let mut m = VecGuestMemory::new()
            .with_region(gpa(0x1000), 0x1000)
            .unwrap();
        assert_eq!(
            m.write(gpa(0x1ffe), &[9, 9, 9, 9]),
            Err(Error::OutsideGuestMemory {
                gpa: gpa(0x1ffe),
                len: 4
            })
        );
        assert_eq!(
            m.fill(gpa(0x1800), 0x1000, 9),
            Err(Error::OutsideGuestMemory {
                gpa: gpa(0x1800),
                len: 0x1000
            })
        );
        let mut b = [0xffu8; 2];
        m.read(gpa(0x1ffe), &mut b).unwrap();
        assert_eq!(b, [0, 0]);
        assert!(m.read(gpa(0x2000), &mut b).is_err());
    }

    #[test]
    fn bad_regions_are_rejected() {
        let mut m = VecGuestMemory::new();
        m.add_region(gpa(0x1000), 0x1000).unwrap();
        for (start, len, reason) in [
            (0x1800, 0x1000, "region overlaps an existing region"),
            (0x0, 0x1001, "region overlaps an existing region"),
            (0x3000, 0, "region is empty"),
            (usize::MAX - 1, 4, "region wraps around the address space"),
        ] {
            assert_eq!(
                m.add_region(gpa(start), len),
                Err(Error::InvalidRegion {
                    gpa: gpa(start),
                    len,
                    reason
                })
            );
        }
        m.add_region(gpa(0x0), 0x1000).unwrap();
        assert_eq!(m.regions().count(), 2);
    }
}
