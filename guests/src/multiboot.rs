//! Multiboot v1: the header every guest carries and the boot information
//! its loader hands over.
//!
//! Magic numbers, flag bits and offsets are those of the Multiboot
//! Specification 0.6.96: section 3.1 (header), 3.2 (machine state) and 3.3
//! (boot information). The parsing works on byte slices, so it is tested
//! on the host; `boot_info` and `memory_map` (bare metal only) read the
//! real structure on the guest.

/// `magic` field of the Multiboot header (spec 3.1.2).
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;

/// Value the loader leaves in EAX when it enters the image (spec 3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// Header flag bit 1: the loader must provide `mem_*` (and the memory map
/// if it has one) in the boot information.
pub const HEADER_FLAG_MEMORY_INFO: u32 = 1 << 1;

/// Header flag bit 16: the header's address fields are valid and the loader
/// uses them instead of the ELF headers. QEMU `-kernel` needs this for an
/// ELF64 image.
pub const HEADER_FLAG_ADDRESS_FIELDS: u32 = 1 << 16;

/// The flags of the guests' header: memory information and address fields.
pub const GUEST_HEADER_FLAGS: u32 = HEADER_FLAG_MEMORY_INFO | HEADER_FLAG_ADDRESS_FIELDS;

/// The `checksum` field for a header with `flags`: the value that makes
/// `magic + flags + checksum` zero modulo 2^32 (spec 3.1.2).
pub const fn header_checksum(flags: u32) -> u32 {
    0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags))
}

/// Boot information flag bit 0: `mem_lower` and `mem_upper` are valid.
pub const INFO_FLAG_MEMORY: u32 = 1 << 0;

/// Boot information flag bit 6: `mmap_length` and `mmap_addr` are valid.
pub const INFO_FLAG_MEMORY_MAP: u32 = 1 << 6;

/// How many bytes of the boot information [`BootInfo::parse`] reads: the
/// fields up to and including `mmap_addr` (offsets 0..52).
pub const INFO_LEN: usize = 52;

/// Size of one memory map entry without its leading `size` field:
/// `base_addr` (8), `length` (8), `type` (4).
pub const MMAP_ENTRY_MIN_SIZE: u32 = 20;

/// Memory map entry type of RAM the OS may use (spec 3.3: "1 indicates
/// available RAM").
pub const MMAP_TYPE_AVAILABLE: u32 = 1;

/// What went wrong while reading the boot information.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The loader passed a null boot information address.
    #[error("no multiboot information (null address)")]
    NoInfo,
    /// The bytes end before a field that has to be read.
    #[error("multiboot information truncated: {need} bytes needed, {have} available")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A memory map entry whose `size` field is too small for an entry, or
    /// runs past the end of the map.
    #[error("memory map entry at offset {offset} has a bad size {size}")]
    BadMmapEntry {
        /// Offset of the entry's `size` field in the map.
        offset: usize,
        /// The `size` field.
        size: u32,
    },
}

/// Result of this crate's fallible functions.
pub type Result<T = ()> = core::result::Result<T, Error>;

/// Reads the little-endian `u32` at `offset`.
fn le32(bytes: &[u8], offset: usize) -> Result<u32> {
    let need = offset + 4;
    let b = bytes.get(offset..need).ok_or(Error::Truncated {
        need,
        have: bytes.len(),
    })?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads the little-endian `u64` at `offset`.
fn le64(bytes: &[u8], offset: usize) -> Result<u64> {
    Ok(u64::from(le32(bytes, offset)?) | (u64::from(le32(bytes, offset + 4)?) << 32))
}

/// The basic memory information (`mem_lower`, `mem_upper`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BasicMemory {
    /// KiB of memory from address 0 (at most 640).
    pub lower_kib: u32,
    /// KiB of memory from 1 MiB up to the first hole.
    pub upper_kib: u32,
}

impl BasicMemory {
    /// End of the memory that starts at 1 MiB: `1 MiB + mem_upper KiB`. For
    /// a machine with less than 3 GiB of RAM this is its RAM size.
    pub const fn upper_end(&self) -> u64 {
        0x10_0000 + self.upper_kib as u64 * 1024
    }
}

/// Where the memory map lies (`mmap_addr`, `mmap_length`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapLocation {
    /// Physical address of the first entry's `size` field.
    pub addr: u32,
    /// Length of the map in bytes.
    pub length: u32,
}

/// The parts of the boot information the guests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// The `flags` field: which parts are valid.
    pub flags: u32,
    /// `mem_lower`/`mem_upper`, when flag bit 0 is set.
    pub memory: Option<BasicMemory>,
    /// The memory map, when flag bit 6 is set.
    pub memory_map: Option<MemoryMapLocation>,
}

impl BootInfo {
    /// Parses the first [`INFO_LEN`] bytes of a boot information structure.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < INFO_LEN {
            return Err(Error::Truncated {
                need: INFO_LEN,
                have: bytes.len(),
            });
        }
        let flags = le32(bytes, 0)?;
        let memory = if flags & INFO_FLAG_MEMORY != 0 {
            Some(BasicMemory {
                lower_kib: le32(bytes, 4)?,
                upper_kib: le32(bytes, 8)?,
            })
        } else {
            None
        };
        let memory_map = if flags & INFO_FLAG_MEMORY_MAP != 0 {
            Some(MemoryMapLocation {
                length: le32(bytes, 44)?,
                addr: le32(bytes, 48)?,
            })
        } else {
            None
        };
        Ok(Self {
            flags,
            memory,
            memory_map,
        })
    }
}

/// One memory map entry (spec 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmapEntry {
    /// First address of the region.
    pub base: u64,
    /// Length of the region in bytes.
    pub length: u64,
    /// Region type; [`MMAP_TYPE_AVAILABLE`] is usable RAM.
    pub kind: u32,
}

/// Iterator over the entries of a memory map, from [`mmap_entries`]. After
/// an error it yields nothing more.
#[derive(Debug, Clone)]
pub struct MmapIter<'a> {
    bytes: &'a [u8],
    offset: usize,
}

/// The entries of the memory map `bytes` (`mmap_length` bytes from
/// `mmap_addr`). Each entry is a `size` field followed by `size` bytes, of
/// which the first 20 are `base_addr`, `length` and `type`.
pub fn mmap_entries(bytes: &[u8]) -> MmapIter<'_> {
    MmapIter { bytes, offset: 0 }
}

impl Iterator for MmapIter<'_> {
    type Item = Result<MmapEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.offset >= self.bytes.len() {
            return None;
        }
        let at = self.offset;
        let entry = (|| {
            let size = le32(self.bytes, at)?;
            let end = (at + 4).checked_add(size as usize);
            if size < MMAP_ENTRY_MIN_SIZE || end.is_none_or(|e| e > self.bytes.len()) {
                return Err(Error::BadMmapEntry { offset: at, size });
            }
            Ok((
                MmapEntry {
                    base: le64(self.bytes, at + 4)?,
                    length: le64(self.bytes, at + 12)?,
                    kind: le32(self.bytes, at + 20)?,
                },
                at + 4 + size as usize,
            ))
        })();
        match entry {
            Ok((e, next)) => {
                self.offset = next;
                Some(Ok(e))
            }
            Err(e) => {
                self.offset = self.bytes.len();
                Some(Err(e))
            }
        }
    }
}

/// Sum of the lengths of the available-RAM entries of the memory map
/// `bytes`, and how many such entries there are.
pub fn usable_memory(bytes: &[u8]) -> Result<(u64, usize)> {
    let mut total = 0u64;
    let mut regions = 0;
    for entry in mmap_entries(bytes) {
        let entry = entry?;
        if entry.kind == MMAP_TYPE_AVAILABLE {
            total = total.saturating_add(entry.length);
            regions += 1;
        }
    }
    Ok((total, regions))
}

/// Reads the boot information at `mb_info`.
///
/// # Safety
///
/// `mb_info` must be the address the Multiboot loader passed in EBX (the
/// argument of the guest's main function), below 4 GiB and so identity
/// mapped by the runtime.
#[cfg(target_os = "none")]
pub unsafe fn boot_info(mb_info: u32) -> Result<BootInfo> {
    if mb_info == 0 {
        return Err(Error::NoInfo);
    }
    // SAFETY: the caller promises `mb_info` is the loader's boot
    // information, which is at least INFO_LEN bytes long (spec 3.3) and
    // identity mapped; nothing writes it while the slice lives.
    let bytes = unsafe { core::slice::from_raw_parts(mb_info as usize as *const u8, INFO_LEN) };
    BootInfo::parse(bytes)
}

/// The bytes of the memory map that `info` describes, if it has one.
///
/// # Safety
///
/// `info` must come from [`boot_info`], so that its memory map location is
/// the loader's (identity mapped, below 4 GiB, not written by the guest).
#[cfg(target_os = "none")]
pub unsafe fn memory_map(info: &BootInfo) -> Option<&'static [u8]> {
    let map = info.memory_map?;
    if map.addr == 0 {
        return None;
    }
    // SAFETY: the caller promises the location is the loader's memory map
    // of `length` bytes at `addr`, identity mapped and left alone.
    Some(unsafe {
        core::slice::from_raw_parts(map.addr as usize as *const u8, map.length as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boot information block with `flags`, `mem_lower`/`mem_upper` and
    /// the memory map fields set.
    fn info(flags: u32, lower: u32, upper: u32, mmap_len: u32, mmap_addr: u32) -> Vec<u8> {
        let mut b = vec![0u8; INFO_LEN];
        b[0..4].copy_from_slice(&flags.to_le_bytes());
        b[4..8].copy_from_slice(&lower.to_le_bytes());
        b[8..12].copy_from_slice(&upper.to_le_bytes());
        b[44..48].copy_from_slice(&mmap_len.to_le_bytes());
        b[48..52].copy_from_slice(&mmap_addr.to_le_bytes());
        b
    }

    /// One memory map entry with the given `size` field.
    fn entry(size: u32, base: u64, length: u64, kind: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&base.to_le_bytes());
        b.extend_from_slice(&length.to_le_bytes());
        b.extend_from_slice(&kind.to_le_bytes());
        b.resize(4 + size as usize, 0);
        b
    }

    #[test]
    fn header_checksum_makes_the_sum_zero() {
        assert_eq!(GUEST_HEADER_FLAGS, 0x0001_0002);
        let sum = HEADER_MAGIC
            .wrapping_add(GUEST_HEADER_FLAGS)
            .wrapping_add(header_checksum(GUEST_HEADER_FLAGS));
        assert_eq!(sum, 0);
        // 0x1BADB002 + 0x00010002 = 0x1BAEB004; its negation:
        assert_eq!(header_checksum(GUEST_HEADER_FLAGS), 0xE451_4FFC);
    }

    #[test]
    fn parses_memory_fields_when_flag_0_is_set() {
        // QEMU -m 64M: mem_lower 639 KiB, mem_upper 64 MiB - 1 MiB.
        let i = BootInfo::parse(&info(INFO_FLAG_MEMORY, 639, 64512, 0, 0)).unwrap();
        let m = i.memory.unwrap();
        assert_eq!((m.lower_kib, m.upper_kib), (639, 64512));
        assert_eq!(m.upper_end(), 64 << 20);
        assert_eq!(i.memory_map, None);
    }

    #[test]
    fn ignores_fields_whose_flag_is_clear() {
        let i = BootInfo::parse(&info(0, 639, 64512, 48, 0x9000)).unwrap();
        assert_eq!(i.memory, None);
        assert_eq!(i.memory_map, None);
    }

    #[test]
    fn parses_memory_map_location_when_flag_6_is_set() {
        let i = BootInfo::parse(&info(INFO_FLAG_MEMORY_MAP, 0, 0, 48, 0x9000)).unwrap();
        assert_eq!(
            i.memory_map,
            Some(MemoryMapLocation {
                addr: 0x9000,
                length: 48
            })
        );
    }

    #[test]
    fn short_info_is_truncated() {
        assert_eq!(
            BootInfo::parse(&[0; 51]),
            Err(Error::Truncated { need: 52, have: 51 })
        );
    }

    #[test]
    fn sums_available_regions_of_the_memory_map() {
        let mut map = entry(20, 0, 0x9_fc00, MMAP_TYPE_AVAILABLE);
        map.extend(entry(20, 0x9_fc00, 0x400, 2));
        // A larger `size` (24): the next entry starts after it.
        map.extend(entry(24, 0x10_0000, 0x3ef_0000, MMAP_TYPE_AVAILABLE));
        map.extend(entry(20, 0xfffc_0000, 0x4_0000, 2));
        let entries: Vec<_> = mmap_entries(&map).map(|e| e.unwrap()).collect();
        assert_eq!(entries.len(), 4);
        assert_eq!(
            entries[2],
            MmapEntry {
                base: 0x10_0000,
                length: 0x3ef_0000,
                kind: 1
            }
        );
        assert_eq!(usable_memory(&map), Ok((0x9_fc00 + 0x3ef_0000, 2)));
    }

    #[test]
    fn entry_size_below_20_is_an_error_and_ends_iteration() {
        let mut map = entry(20, 0, 0x1000, 1);
        map.extend(entry(16, 0x1000, 0x1000, 1));
        let mut it = mmap_entries(&map);
        assert!(it.next().unwrap().is_ok());
        assert_eq!(
            it.next(),
            Some(Err(Error::BadMmapEntry {
                offset: 24,
                size: 16
            }))
        );
        assert_eq!(it.next(), None);
    }

    #[test]
    fn entry_running_past_the_map_is_an_error() {
        let map = entry(20, 0, 0x1000, 1);
        assert_eq!(
            usable_memory(&map[..20]),
            Err(Error::BadMmapEntry {
                offset: 0,
                size: 20
            })
        );
        assert_eq!(usable_memory(&[]), Ok((0, 0)));
    }
}
