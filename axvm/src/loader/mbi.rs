//! The Multiboot v1 information structure handed to the kernel in EBX.

use alloc::{string::String, vec, vec::Vec};

use axaddrspace::GuestPhysAddr;

use super::GuestMemory;
use crate::{Error, Result};

/// Byte offsets in `multiboot_info` (specification 0.6.96, section 3.3).
mod off {
    pub const FLAGS: usize = 0;
    pub const MEM_LOWER: usize = 4;
    pub const MEM_UPPER: usize = 8;
    pub const CMDLINE: usize = 16;
    pub const MODS_COUNT: usize = 20;
    pub const MODS_ADDR: usize = 24;
    pub const MMAP_LENGTH: usize = 44;
    pub const MMAP_ADDR: usize = 48;
    pub const BOOT_LOADER_NAME: usize = 64;
    /// Size of the structure, up to and including the framebuffer fields.
    pub const SIZE: usize = 116;
}

/// Size of one module structure (`mod_start`, `mod_end`, `string`,
/// `reserved`).
const MODULE_SIZE: usize = 16;
/// Size of one memory map entry including its leading `size` field.
const MMAP_ENTRY_SIZE: usize = 24;
/// The value of each entry's `size` field: the entry without that field.
const MMAP_ENTRY_SIZE_FIELD: u32 = 20;
const MIB: u64 = 1 << 20;
/// Lower memory ends at 640 KiB at most.
const LOWER_MEMORY_END: u64 = 0xA_0000;
const FOUR_GIB: u128 = 1 << 32;

/// Type of a memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MemoryKind {
    /// RAM the kernel may use (type 1).
    Available = 1,
    /// Memory the kernel must not use (type 2).
    Reserved = 2,
}

/// One entry of the Multiboot memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// First address.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the memory is.
    pub kind: MemoryKind,
}

/// A boot module already placed in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Module {
    start: GuestPhysAddr,
    len: usize,
    string: String,
}

/// Builds the Multiboot information structure for a kernel.
///
/// Give it the guest RAM regions, the ranges to report as reserved (they
/// win over RAM where both overlap), and optionally a command line, a boot
/// loader name and modules; then [`build`](Self::build) lays everything out
/// from a chosen guest physical address.
#[derive(Debug, Clone, Default)]
pub struct MultibootInfoBuilder {
    ram: Vec<(GuestPhysAddr, usize)>,
    reserved: Vec<(GuestPhysAddr, usize)>,
    cmdline: Option<String>,
    boot_loader_name: Option<String>,
    modules: Vec<Module>,
    page_align_modules: bool,
}

/// A laid-out Multiboot information area: the bytes to write at `gpa`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultibootInfo {
    /// Guest physical address of the `multiboot_info` structure (the value
    /// for EBX); the cmdline, modules and memory map follow it.
    pub gpa: GuestPhysAddr,
    /// The whole area: the structure, then the memory map, the module list
    /// and the strings.
    pub bytes: Vec<u8>,
    /// The `flags` field that was written.
    pub flags: u32,
}

impl MultibootInfo {
    /// `mem_lower` and `mem_upper` are valid.
    pub const FLAG_MEM: u32 = 1 << 0;
    /// `cmdline` is valid.
    pub const FLAG_CMDLINE: u32 = 1 << 2;
    /// `mods_count` and `mods_addr` are valid.
    pub const FLAG_MODS: u32 = 1 << 3;
    /// `mmap_length` and `mmap_addr` are valid.
    pub const FLAG_MMAP: u32 = 1 << 6;
    /// `boot_loader_name` is valid.
    pub const FLAG_BOOT_LOADER_NAME: u32 = 1 << 9;

    /// The value for EBX at kernel entry.
    pub fn ebx(&self) -> u32 {
        // `build` checked that the whole area lies below 4 GiB.
        self.gpa.as_usize() as u32
    }

    /// Writes the area to guest memory and returns the value for EBX.
    pub fn write_to<M: GuestMemory + ?Sized>(&self, mem: &mut M) -> Result<u32> {
        if !mem.contains(self.gpa, self.bytes.len()) {
            return Err(Error::OutsideGuestMemory {
                gpa: self.gpa,
                len: self.bytes.len(),
            });
        }
        mem.write(self.gpa, &self.bytes)?;
        Ok(self.ebx())
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// `[start, end)` of a region as u128, so that no sum overflows.
fn span(gpa: GuestPhysAddr, len: usize) -> (u128, u128) {
    let start = gpa.as_usize() as u128;
    (start, start + len as u128)
}

fn c_string<'a>(s: &'a str, what: &'static str) -> Result<&'a [u8]> {
    if s.as_bytes().contains(&0) {
        return Err(Error::InvalidString { what });
    }
    Ok(s.as_bytes())
}

impl MultibootInfoBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a guest RAM region.
    pub fn ram(mut self, gpa: GuestPhysAddr, len: usize) -> Self {
        self.ram.push((gpa, len));
        self
    }

    /// Adds a range to report as reserved (for example the legacy VGA/BIOS
    /// hole `0xA0000..0x100000`, or MMIO); it wins over RAM.
    pub fn reserved(mut self, gpa: GuestPhysAddr, len: usize) -> Self {
        self.reserved.push((gpa, len));
        self
    }

    /// Sets the kernel command line.
    pub fn cmdline(mut self, cmdline: &str) -> Self {
        self.cmdline = Some(cmdline.into());
        self
    }

    /// Sets the boot loader name reported to the kernel.
    pub fn boot_loader_name(mut self, name: &str) -> Self {
        self.boot_loader_name = Some(name.into());
        self
    }

    /// Adds a module of `len` bytes already placed at `start`, with its
    /// string.
    pub fn module(mut self, start: GuestPhysAddr, len: usize, string: &str) -> Self {
        self.modules.push(Module {
            start,
            len,
            string: string.into(),
        });
        self
    }

    /// Requires modules to start on 4 KiB boundaries (the kernel's
    /// Multiboot header flag bit 0, see
    /// [`LoadPlan::page_align_modules`](super::LoadPlan::page_align_modules)).
    pub fn page_align_modules(mut self, yes: bool) -> Self {
        self.page_align_modules = yes;
        self
    }

    /// The memory map: sorted, non-overlapping, adjacent ranges of the same
    /// kind merged; reserved ranges win over RAM; holes are left out.
    ///
    /// Empty regions are ignored; a region reaching beyond 2^64 is
    /// [`Error::InvalidRegion`].
    pub fn memory_map(&self) -> Result<Vec<MemoryMapEntry>> {
        let tagged = self
            .ram
            .iter()
            .map(|r| (r, MemoryKind::Available))
            .chain(self.reserved.iter().map(|r| (r, MemoryKind::Reserved)));
        let mut ranges = Vec::new();
        for (&(gpa, len), kind) in tagged {
            let (start, end) = span(gpa, len);
            if end > u64::MAX as u128 + 1 {
                return Err(Error::InvalidRegion {
                    gpa,
                    len,
                    reason: "memory region ends beyond 2^64",
                });
            }
            if len != 0 {
                ranges.push((start, end, kind));
            }
        }
        let mut bounds: Vec<u128> = ranges.iter().flat_map(|&(s, e, _)| [s, e]).collect();
        bounds.sort_unstable();
        bounds.dedup();

        let mut map: Vec<MemoryMapEntry> = Vec::new();
        for w in bounds.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            let covering = |k| {
                ranges
                    .iter()
                    .any(|&(s, e, kind)| kind == k && s <= lo && hi <= e)
            };
            let kind = if covering(MemoryKind::Reserved) {
                MemoryKind::Reserved
            } else if covering(MemoryKind::Available) {
                MemoryKind::Available
            } else {
                continue;
            };
            match map.last_mut() {
                Some(last) if last.kind == kind && last.base as u128 + last.len as u128 == lo => {
                    last.len += (hi - lo) as u64;
                }
                _ => map.push(MemoryMapEntry {
                    base: lo as u64,
                    len: (hi - lo) as u64,
                    kind,
                }),
            }
        }
        Ok(map)
    }

    /// `mem_lower` and `mem_upper` in KiB: available memory from address 0
    /// (at most 640 KiB) and available memory contiguous from 1 MiB.
    fn mem_lower_upper(map: &[MemoryMapEntry]) -> (u32, u32) {
        let avail = map.iter().filter(|e| e.kind == MemoryKind::Available);
        let end = |e: &MemoryMapEntry| e.base as u128 + e.len as u128;
        let lower = avail
            .clone()
            .find(|e| e.base == 0)
            .map_or(0, |e| end(e).min(LOWER_MEMORY_END as u128) / 1024);
        let upper = avail
            .clone()
            .find(|e| e.base <= MIB && (MIB as u128) < end(e))
            .map_or(0, |e| (end(e) - MIB as u128) / 1024);
        (lower as u32, upper.min(u32::MAX as u128) as u32)
    }

    /// Lays the information area out at `info_gpa`: the `multiboot_info`
    /// structure (116 bytes), then the memory map, the module list, and the
    /// NUL-terminated strings, each table 8-byte aligned.
    ///
    /// Every address the structure holds is 32 bits wide, so the whole area
    /// and every module must lie below 4 GiB ([`Error::AddressAbove4GiB`]).
    pub fn build(&self, info_gpa: GuestPhysAddr) -> Result<MultibootInfo> {
        let map = self.memory_map()?;
        let (mem_lower, mem_upper) = Self::mem_lower_upper(&map);
        let base = info_gpa.as_usize() as u128;
        let align8 = |rel: usize| rel + ((8 - (base + rel as u128) % 8) % 8) as usize;

        let mmap_at = align8(off::SIZE);
        let mods_at = align8(mmap_at + map.len() * MMAP_ENTRY_SIZE);
        let mut strings_at = mods_at + self.modules.len() * MODULE_SIZE;
        let mut bytes = vec![0u8; strings_at];
        // Appends a NUL-terminated string and returns its relative offset.
        let mut push_str = |bytes: &mut Vec<u8>, s: &[u8]| {
            let at = strings_at;
            bytes.extend_from_slice(s);
            bytes.push(0);
            strings_at = bytes.len();
            at
        };

        let mut flags = MultibootInfo::FLAG_MEM;
        put_u32(&mut bytes, off::MEM_LOWER, mem_lower);
        put_u32(&mut bytes, off::MEM_UPPER, mem_upper);

        // Relative offsets now, made absolute once the length is known.
        let mut pointers: Vec<(usize, usize)> = Vec::new();
        if let Some(cmdline) = &self.cmdline {
            let at = push_str(&mut bytes, c_string(cmdline, "kernel command line")?);
            flags |= MultibootInfo::FLAG_CMDLINE;
            pointers.push((off::CMDLINE, at));
        }
        if let Some(name) = &self.boot_loader_name {
            let at = push_str(&mut bytes, c_string(name, "boot loader name")?);
            flags |= MultibootInfo::FLAG_BOOT_LOADER_NAME;
            pointers.push((off::BOOT_LOADER_NAME, at));
        }
        if !self.modules.is_empty() {
            flags |= MultibootInfo::FLAG_MODS;
            put_u32(&mut bytes, off::MODS_COUNT, self.modules.len() as u32);
            pointers.push((off::MODS_ADDR, mods_at));
        }
        for (i, m) in self.modules.iter().enumerate() {
            let (start, end) = span(m.start, m.len);
            // `mod_end` is exclusive and 32 bits wide.
            if end > u32::MAX as u128 {
                return Err(Error::AddressAbove4GiB {
                    what: "module end",
                    addr: end as u64,
                });
            }
            if self.page_align_modules && start % 4096 != 0 {
                return Err(Error::ModuleNotPageAligned { start: m.start });
            }
            let at = mods_at + i * MODULE_SIZE;
            put_u32(&mut bytes, at, start as u32);
            put_u32(&mut bytes, at + 4, end as u32);
            let s = push_str(&mut bytes, c_string(&m.string, "module string")?);
            pointers.push((at + 8, s));
        }
        if !map.is_empty() {
            flags |= MultibootInfo::FLAG_MMAP;
            put_u32(
                &mut bytes,
                off::MMAP_LENGTH,
                (map.len() * MMAP_ENTRY_SIZE) as u32,
            );
            pointers.push((off::MMAP_ADDR, mmap_at));
        }
        for (i, e) in map.iter().enumerate() {
            let at = mmap_at + i * MMAP_ENTRY_SIZE;
            put_u32(&mut bytes, at, MMAP_ENTRY_SIZE_FIELD);
            put_u64(&mut bytes, at + 4, e.base);
            put_u64(&mut bytes, at + 12, e.len);
            put_u32(&mut bytes, at + 20, e.kind as u32);
        }

        let end = base + bytes.len() as u128;
        if end > FOUR_GIB {
            return Err(Error::AddressAbove4GiB {
                what: "multiboot information area end",
                addr: end as u64,
            });
        }
        for (field, rel) in pointers {
            put_u32(&mut bytes, field, (base + rel as u128) as u32);
        }
        put_u32(&mut bytes, off::FLAGS, flags);
        Ok(MultibootInfo {
            gpa: info_gpa,
            bytes,
            flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpa(a: usize) -> GuestPhysAddr {
        GuestPhysAddr::from_usize(a)
    }

    #[test]
    fn reserved_wins_and_neighbours_merge() {
        let b = MultibootInfoBuilder::new()
            .ram(gpa(0x10_0000), 0x700_0000)
            .ram(gpa(0), 0x10_0000)
            .reserved(gpa(0xA_0000), 0x6_0000)
            .reserved(gpa(0xFEE0_0000), 0x1000)
            .ram(gpa(0x8000_0000), 0);
        let map = b.memory_map().unwrap();
        let e = |base, len, kind| MemoryMapEntry { base, len, kind };
        assert_eq!(
            map,
            [
                e(0, 0xA_0000, MemoryKind::Available),
                e(0xA_0000, 0x6_0000, MemoryKind::Reserved),
                e(0x10_0000, 0x700_0000, MemoryKind::Available),
                e(0xFEE0_0000, 0x1000, MemoryKind::Reserved),
            ]
        );
        // 640 KiB of lower memory, (113 MiB - 1 MiB) / 1 KiB of upper memory.
        assert_eq!(
            MultibootInfoBuilder::mem_lower_upper(&map),
            (640, 112 * 1024)
        );
    }

    #[test]
    fn mem_upper_counts_from_one_mib_inside_a_larger_region() {
        // QEMU reports (RAM KiB - 1024) for a single block of RAM from 0.
        let map = MultibootInfoBuilder::new()
            .ram(gpa(0), 128 << 20)
            .memory_map()
            .unwrap();
        assert_eq!(MultibootInfoBuilder::mem_lower_upper(&map), (640, 130_048));
        // No RAM at 0 or at 1 MiB: both zero.
        let map = MultibootInfoBuilder::new()
            .ram(gpa(0x20_0000), 1 << 20)
            .memory_map()
            .unwrap();
        assert_eq!(MultibootInfoBuilder::mem_lower_upper(&map), (0, 0));
    }

    #[test]
    fn region_beyond_2_pow_64_is_rejected() {
        let r = MultibootInfoBuilder::new()
            .ram(gpa(usize::MAX - 0xfff), 0x2000)
            .memory_map();
        assert_eq!(
            r,
            Err(Error::InvalidRegion {
                gpa: gpa(usize::MAX - 0xfff),
                len: 0x2000,
                reason: "memory region ends beyond 2^64"
            })
        );
    }
}
