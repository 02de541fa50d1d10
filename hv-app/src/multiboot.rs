//! Multiboot v1: the header an image carries and the boot information a
//! loader hands over.
//!
//! Offsets, magic numbers and flag bits are those of the Multiboot
//! Specification 0.6.96, section 3.1 (header) and section 3.3 (boot
//! information). Everything here is pure code over bytes: the boot
//! information is read through a [`PhysReader`], so it runs on the host
//! against a [`SliceReader`] and on the machine against identity-mapped
//! physical memory. A malformed structure gives an [`Error`], never a panic.

use bitflags::bitflags;

use crate::{Error, Result};

/// `magic` field of a Multiboot header (spec 3.1.2).
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;

/// Value a Multiboot loader leaves in EAX when it enters the image (spec 3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// The header must lie entirely within this many first bytes of the image,
/// 32-bit aligned (spec 3.1.1).
pub const HEADER_SEARCH_LEN: usize = 8192;

/// Most modules [`BootInfo::parse`] accepts: a bound on the work a corrupt
/// `mods_count` can cause.
pub const MAX_MODULES: u32 = 256;

/// Longest memory map [`BootInfo::parse`] accepts, in bytes (4096 entries of
/// the usual 24 bytes).
pub const MAX_MMAP_LENGTH: u32 = 24 * 4096;

bitflags! {
    /// `flags` field of the Multiboot header: what the image asks of the
    /// loader (spec 3.1.2).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct HeaderFlags: u32 {
        /// Bit 0: align boot modules on 4 KiB page boundaries.
        const PAGE_ALIGN_MODULES = 1 << 0;
        /// Bit 1: provide `mem_*` and the memory map in the boot information.
        const MEMORY_INFO = 1 << 1;
        /// Bit 2: provide the video mode table.
        const VIDEO_MODE = 1 << 2;
        /// Bit 16: the address fields of the header are valid; the loader
        /// uses them instead of parsing the image format. QEMU `-kernel`
        /// needs this for an ELF64 image.
        const ADDRESS_FIELDS = 1 << 16;
    }
}

/// The header flags of the hv-app image: page-aligned modules, memory
/// information, and address fields.
pub const HV_APP_HEADER_FLAGS: HeaderFlags = HeaderFlags::PAGE_ALIGN_MODULES
    .union(HeaderFlags::MEMORY_INFO)
    .union(HeaderFlags::ADDRESS_FIELDS);

/// The `checksum` field for a header with these `flags`: the 32-bit value
/// that makes `magic + flags + checksum` zero (spec 3.1.2).
pub const fn header_checksum(flags: u32) -> u32 {
    0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags))
}

/// The address fields of a header with [`HeaderFlags::ADDRESS_FIELDS`]
/// (spec 3.1.3), all physical addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressFields {
    /// Where the header itself is loaded.
    pub header_addr: u32,
    /// Start of the loaded image (text segment).
    pub load_addr: u32,
    /// End of the loaded image (data segment); 0 means "to the end of the file".
    pub load_end_addr: u32,
    /// End of the bss the loader clears; 0 means "no bss".
    pub bss_end_addr: u32,
    /// Where the loader jumps to.
    pub entry_addr: u32,
}

/// A Multiboot header found in an image by [`find_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Offset of the header in the image file.
    pub offset: usize,
    /// The header flags (unknown bits kept).
    pub flags: HeaderFlags,
    /// The address fields, if [`HeaderFlags::ADDRESS_FIELDS`] is set.
    pub addresses: Option<AddressFields>,
}

impl Header {
    /// File offset from which a loader copies the image to
    /// `addresses.load_addr` (`offset - (header_addr - load_addr)`), if the
    /// header has address fields.
    pub fn load_file_offset(&self) -> Option<usize> {
        let a = self.addresses?;
        let delta = a.header_addr.checked_sub(a.load_addr)? as usize;
        self.offset.checked_sub(delta)
    }
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Finds and checks the Multiboot header of an image file, as a loader does.
///
/// Looks at every 32-bit aligned offset of the first [`HEADER_SEARCH_LEN`]
/// bytes for [`HEADER_MAGIC`] with a valid checksum. With address fields, it
/// also checks what QEMU's and GRUB's loaders check: `load_addr <=
/// header_addr`, the header lies in the loaded part, the file holds
/// `load_end_addr - load_addr` bytes from the load offset, `bss_end_addr` is
/// not below `load_end_addr`, and the entry lies in the loaded image.
pub fn find_header(image: &[u8]) -> Result<Header> {
    let window = image.len().min(HEADER_SEARCH_LEN);
    let offset = (0..window)
        .step_by(4)
        .find(|&i| {
            i + 12 <= window
                && le_u32(image, i) == Some(HEADER_MAGIC)
                && match (le_u32(image, i + 4), le_u32(image, i + 8)) {
                    (Some(f), Some(c)) => HEADER_MAGIC.wrapping_add(f).wrapping_add(c) == 0,
                    _ => false,
                }
        })
        .ok_or(Error::HeaderNotFound)?;
    let flags = HeaderFlags::from_bits_retain(le_u32(image, offset + 4).unwrap_or(0));
    let mut header = Header {
        offset,
        flags,
        addresses: None,
    };
    if !flags.contains(HeaderFlags::ADDRESS_FIELDS) {
        return Ok(header);
    }
    let field = |n: usize| {
        le_u32(image, offset + 12 + 4 * n).ok_or(Error::BadHeader("truncated address fields"))
    };
    let a = AddressFields {
        header_addr: field(0)?,
        load_addr: field(1)?,
        load_end_addr: field(2)?,
        bss_end_addr: field(3)?,
        entry_addr: field(4)?,
    };
    header.addresses = Some(a);
    if a.load_addr > a.header_addr {
        return Err(Error::BadHeader("load_addr is above header_addr"));
    }
    let file_start = header.load_file_offset().ok_or(Error::BadHeader(
        "header_addr - load_addr exceeds the header's file offset",
    ))?;
    let load_end = if a.load_end_addr == 0 {
        let file_len = u32::try_from(image.len() - file_start)
            .map_err(|_| Error::BadHeader("image larger than 4 GiB"))?;
        a.load_addr
            .checked_add(file_len)
            .ok_or(Error::BadHeader("image end overflows 32 bits"))?
    } else {
        if a.load_end_addr <= a.header_addr {
            return Err(Error::BadHeader("load_end_addr is not above header_addr"));
        }
        let load_len = (a.load_end_addr - a.load_addr) as usize;
        if file_start + load_len > image.len() {
            return Err(Error::BadHeader(
                "file is shorter than load_end_addr - load_addr",
            ));
        }
        a.load_end_addr
    };
    let image_end = if a.bss_end_addr == 0 {
        load_end
    } else if a.bss_end_addr < load_end {
        return Err(Error::BadHeader("bss_end_addr is below load_end_addr"));
    } else {
        a.bss_end_addr
    };
    if a.entry_addr < a.load_addr || a.entry_addr >= image_end {
        return Err(Error::BadHeader("entry_addr is outside the loaded image"));
    }
    Ok(header)
}

/// Read access to physical memory, the seam between the parser and the
/// machine.
pub trait PhysReader {
    /// Fills `buf` with the bytes at physical address `paddr`, or fails with
    /// [`Error::OutOfBounds`] if any of them is not readable.
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<()>;
}

/// A [`PhysReader`] over a byte slice that stands for the physical memory
/// at `base..base + bytes.len()`.
#[derive(Debug, Clone, Copy)]
pub struct SliceReader<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl<'a> SliceReader<'a> {
    /// Memory whose byte `i` is at physical address `base + i`.
    pub const fn new(base: u64, bytes: &'a [u8]) -> Self {
        Self { base, bytes }
    }
}

impl PhysReader for SliceReader<'_> {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<()> {
        let oob = || Error::OutOfBounds {
            addr: paddr,
            len: buf.len() as u64,
        };
        let start = paddr.checked_sub(self.base).ok_or_else(oob)?;
        let start = usize::try_from(start).map_err(|_| oob())?;
        let end = start.checked_add(buf.len()).ok_or_else(oob)?;
        let src = self.bytes.get(start..end).ok_or_else(oob)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

fn add(base: u64, off: u64) -> Result<u64> {
    base.checked_add(off).ok_or(Error::OutOfBounds {
        addr: base,
        len: off,
    })
}

fn read_u32<R: PhysReader + ?Sized>(r: &R, addr: u64) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read(addr, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64<R: PhysReader + ?Sized>(r: &R, addr: u64) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read(addr, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Reads the NUL-terminated string at `addr` into `buf` and returns it
/// (without the NUL). Fails if no NUL comes within `buf.len()` bytes or the
/// bytes are not UTF-8.
pub fn read_c_str<'b, R: PhysReader + ?Sized>(
    reader: &R,
    addr: u64,
    buf: &'b mut [u8],
) -> Result<&'b str> {
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(Error::StringTooLong {
                addr,
                max: buf.len(),
            });
        }
        let mut byte = [0u8; 1];
        reader.read(add(addr, len as u64)?, &mut byte)?;
        if byte[0] == 0 {
            break;
        }
        buf[len] = byte[0];
        len += 1;
    }
    core::str::from_utf8(&buf[..len]).map_err(|_| Error::InvalidUtf8 { addr })
}

bitflags! {
    /// `flags` field of the boot information: which fields are valid
    /// (spec 3.3).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct InfoFlags: u32 {
        /// Bit 0: `mem_lower` and `mem_upper`.
        const MEMORY = 1 << 0;
        /// Bit 1: `boot_device`.
        const BOOT_DEVICE = 1 << 1;
        /// Bit 2: `cmdline`.
        const CMDLINE = 1 << 2;
        /// Bit 3: `mods_count` and `mods_addr`.
        const MODULES = 1 << 3;
        /// Bit 4: a.out symbol table.
        const AOUT_SYMBOLS = 1 << 4;
        /// Bit 5: ELF section header table.
        const ELF_SECTIONS = 1 << 5;
        /// Bit 6: `mmap_length` and `mmap_addr`.
        const MEMORY_MAP = 1 << 6;
        /// Bit 7: drives table.
        const DRIVES = 1 << 7;
        /// Bit 8: ROM configuration table.
        const CONFIG_TABLE = 1 << 8;
        /// Bit 9: `boot_loader_name`.
        const BOOT_LOADER_NAME = 1 << 9;
        /// Bit 10: APM table.
        const APM_TABLE = 1 << 10;
        /// Bit 11: VBE information.
        const VBE = 1 << 11;
        /// Bit 12: framebuffer information.
        const FRAMEBUFFER = 1 << 12;
    }
}

/// Byte offsets of the boot information fields (spec 3.3).
mod off {
    pub const FLAGS: u64 = 0;
    pub const MEM_LOWER: u64 = 4;
    pub const MEM_UPPER: u64 = 8;
    pub const BOOT_DEVICE: u64 = 12;
    pub const CMDLINE: u64 = 16;
    pub const MODS_COUNT: u64 = 20;
    pub const MODS_ADDR: u64 = 24;
    pub const MMAP_LENGTH: u64 = 44;
    pub const MMAP_ADDR: u64 = 48;
    pub const BOOT_LOADER_NAME: u64 = 64;
}

/// Size of one module entry (spec 3.3: `mod_start`, `mod_end`, `string`,
/// reserved).
const MODULE_ENTRY_SIZE: u64 = 16;

/// Smallest `size` of a memory map entry: `base_addr`, `length` and `type`.
const MMAP_ENTRY_MIN_SIZE: u32 = 20;

/// `mem_lower` and `mem_upper` (spec 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BasicMemory {
    /// KiB of memory from address 0 (at most 640).
    pub lower_kib: u32,
    /// KiB of memory from 1 MiB up to the first hole.
    pub upper_kib: u32,
}

/// Where the module entries are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleTable {
    /// Physical address of the first entry.
    pub addr: u32,
    /// Number of entries.
    pub count: u32,
}

/// Where the memory map is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapTable {
    /// Physical address of the first entry's `size` field.
    pub addr: u32,
    /// Length of the map in bytes.
    pub length: u32,
}

/// The parsed fixed part of the Multiboot boot information. The variable
/// parts (memory map, modules, strings) are read on demand through the same
/// [`PhysReader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// Physical address of the boot information structure.
    pub info_addr: u64,
    /// Which fields the loader filled in (unknown bits kept).
    pub flags: InfoFlags,
    /// `mem_lower` / `mem_upper`, if [`InfoFlags::MEMORY`].
    pub memory: Option<BasicMemory>,
    /// `boot_device`, if [`InfoFlags::BOOT_DEVICE`].
    pub boot_device: Option<u32>,
    /// Physical address of the command line, if [`InfoFlags::CMDLINE`].
    pub cmdline_addr: Option<u32>,
    /// The module table, if [`InfoFlags::MODULES`].
    pub modules: Option<ModuleTable>,
    /// The memory map, if [`InfoFlags::MEMORY_MAP`].
    pub memory_map: Option<MemoryMapTable>,
    /// Physical address of the loader's name, if
    /// [`InfoFlags::BOOT_LOADER_NAME`].
    pub boot_loader_name_addr: Option<u32>,
}

impl BootInfo {
    /// Checks `magic` (the loader's EAX) and reads the boot information at
    /// `info_addr` (the loader's EBX). Only the fields whose flag is set are
    /// read. Fails on a wrong magic, an unreadable field, more than
    /// [`MAX_MODULES`] modules or a memory map longer than
    /// [`MAX_MMAP_LENGTH`].
    pub fn parse<R: PhysReader + ?Sized>(reader: &R, magic: u32, info_addr: u64) -> Result<Self> {
        if magic != BOOTLOADER_MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let field = |off: u64| -> Result<u32> { read_u32(reader, add(info_addr, off)?) };
        let flags = InfoFlags::from_bits_retain(field(off::FLAGS)?);
        let mut info = BootInfo {
            info_addr,
            flags,
            memory: None,
            boot_device: None,
            cmdline_addr: None,
            modules: None,
            memory_map: None,
            boot_loader_name_addr: None,
        };
        if flags.contains(InfoFlags::MEMORY) {
            info.memory = Some(BasicMemory {
                lower_kib: field(off::MEM_LOWER)?,
                upper_kib: field(off::MEM_UPPER)?,
            });
        }
        if flags.contains(InfoFlags::BOOT_DEVICE) {
            info.boot_device = Some(field(off::BOOT_DEVICE)?);
        }
        if flags.contains(InfoFlags::CMDLINE) {
            info.cmdline_addr = Some(field(off::CMDLINE)?);
        }
        if flags.contains(InfoFlags::MODULES) {
            let count = field(off::MODS_COUNT)?;
            if count > MAX_MODULES {
                return Err(Error::TooManyModules(count));
            }
            info.modules = Some(ModuleTable {
                addr: field(off::MODS_ADDR)?,
                count,
            });
        }
        if flags.contains(InfoFlags::MEMORY_MAP) {
            let length = field(off::MMAP_LENGTH)?;
            if length > MAX_MMAP_LENGTH {
                return Err(Error::MemoryMapTooLong(length));
            }
            info.memory_map = Some(MemoryMapTable {
                addr: field(off::MMAP_ADDR)?,
                length,
            });
        }
        if flags.contains(InfoFlags::BOOT_LOADER_NAME) {
            info.boot_loader_name_addr = Some(field(off::BOOT_LOADER_NAME)?);
        }
        Ok(info)
    }

    /// The memory map entries (none if the loader gave no map).
    pub fn memory_map<'r, R: PhysReader + ?Sized>(&self, reader: &'r R) -> MemoryMapIter<'r, R> {
        let (next, end) = match self.memory_map {
            Some(m) => (u64::from(m.addr), u64::from(m.addr) + u64::from(m.length)),
            None => (0, 0),
        };
        MemoryMapIter {
            reader,
            next,
            end,
            failed: false,
        }
    }

    /// The boot modules (none if the loader gave none).
    pub fn modules<'r, R: PhysReader + ?Sized>(&self, reader: &'r R) -> ModuleIter<'r, R> {
        let (addr, count) = self.modules.map_or((0, 0), |m| (m.addr, m.count));
        ModuleIter {
            reader,
            addr: u64::from(addr),
            index: 0,
            count,
            failed: false,
        }
    }

    /// The command line, copied into `buf` (`None` if the loader gave none).
    pub fn cmdline<'b, R: PhysReader + ?Sized>(
        &self,
        reader: &R,
        buf: &'b mut [u8],
    ) -> Result<Option<&'b str>> {
        self.cmdline_addr
            .map(|a| read_c_str(reader, u64::from(a), buf))
            .transpose()
    }

    /// The loader's name, copied into `buf` (`None` if the loader gave none).
    pub fn boot_loader_name<'b, R: PhysReader + ?Sized>(
        &self,
        reader: &R,
        buf: &'b mut [u8],
    ) -> Result<Option<&'b str>> {
        self.boot_loader_name_addr
            .map(|a| read_c_str(reader, u64::from(a), buf))
            .transpose()
    }
}

/// The `type` of a memory map entry (spec 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// 1: RAM available to the OS.
    Available,
    /// 3: ACPI tables, usable once they are read.
    AcpiReclaimable,
    /// 4: ACPI non-volatile storage, preserved across hibernation.
    AcpiNvs,
    /// 5: defective RAM.
    Defective,
    /// 2 or any other value: reserved.
    Reserved(u32),
}

impl MemoryKind {
    /// The kind for a raw `type` value.
    pub const fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::Available,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Defective,
            other => Self::Reserved(other),
        }
    }
}

/// One memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First physical address.
    pub base: u64,
    /// Length in bytes.
    pub length: u64,
    /// What the memory is.
    pub kind: MemoryKind,
}

impl MemoryRegion {
    /// The address just past the region, or `None` if it overflows 64 bits.
    pub const fn end(&self) -> Option<u64> {
        self.base.checked_add(self.length)
    }
}

/// Iterator over the memory map; after the first error it yields nothing.
#[derive(Debug)]
pub struct MemoryMapIter<'r, R: ?Sized> {
    reader: &'r R,
    next: u64,
    end: u64,
    failed: bool,
}

impl<R: PhysReader + ?Sized> MemoryMapIter<'_, R> {
    fn entry(&mut self) -> Result<MemoryRegion> {
        let at = self.next;
        let size = read_u32(self.reader, at)?;
        if size < MMAP_ENTRY_MIN_SIZE {
            return Err(Error::BadMemoryMapEntry { addr: at, size });
        }
        let entry_end = at + 4 + u64::from(size);
        if entry_end > self.end {
            return Err(Error::BadMemoryMapEntry { addr: at, size });
        }
        let region = MemoryRegion {
            base: read_u64(self.reader, at + 4)?,
            length: read_u64(self.reader, at + 12)?,
            kind: MemoryKind::from_raw(read_u32(self.reader, at + 20)?),
        };
        if region.end().is_none() {
            return Err(Error::RegionOverflow {
                base: region.base,
                length: region.length,
            });
        }
        self.next = entry_end;
        Ok(region)
    }
}

impl<R: PhysReader + ?Sized> Iterator for MemoryMapIter<'_, R> {
    type Item = Result<MemoryRegion>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.end {
            return None;
        }
        let r = self.entry();
        self.failed = r.is_err();
        Some(r)
    }
}

/// One boot module (spec 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module {
    /// Physical address of the first byte.
    pub start: u32,
    /// Physical address just past the last byte.
    pub end: u32,
    /// Physical address of the module's NUL-terminated string (0 if none).
    pub string_addr: u32,
}

impl Module {
    /// Size in bytes.
    pub const fn len(&self) -> u32 {
        self.end - self.start
    }

    /// Whether the module is empty.
    pub const fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Iterator over the boot modules; after the first error it yields nothing.
#[derive(Debug)]
pub struct ModuleIter<'r, R: ?Sized> {
    reader: &'r R,
    addr: u64,
    index: u32,
    count: u32,
    failed: bool,
}

impl<R: PhysReader + ?Sized> ModuleIter<'_, R> {
    fn entry(&self) -> Result<Module> {
        let at = add(self.addr, u64::from(self.index) * MODULE_ENTRY_SIZE)?;
        let start = read_u32(self.reader, at)?;
        let end = read_u32(self.reader, add(at, 4)?)?;
        let string_addr = read_u32(self.reader, add(at, 8)?)?;
        if end < start {
            return Err(Error::BadModule {
                index: self.index,
                start,
                end,
            });
        }
        Ok(Module {
            start,
            end,
            string_addr,
        })
    }
}

impl<R: PhysReader + ?Sized> Iterator for ModuleIter<'_, R> {
    type Item = Result<Module>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.index >= self.count {
            return None;
        }
        let r = self.entry();
        self.failed = r.is_err();
        self.index += 1;
        Some(r)
    }
}

/// Totals over a memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemorySummary {
    /// Number of entries.
    pub regions: usize,
    /// Number of [`MemoryKind::Available`] entries.
    pub available_regions: usize,
    /// Sum of the available entries' lengths.
    pub available_bytes: u64,
    /// Highest end address of an available entry (0 if none).
    pub available_end: u64,
}

/// Sums up a memory map, stopping at its first error.
pub fn summarize<I>(regions: I) -> Result<MemorySummary>
where
    I: IntoIterator<Item = Result<MemoryRegion>>,
{
    let mut s = MemorySummary::default();
    for region in regions {
        let region = region?;
        s.regions += 1;
        if region.kind == MemoryKind::Available {
            let end = region.end().ok_or(Error::RegionOverflow {
                base: region.base,
                length: region.length,
            })?;
            s.available_regions += 1;
            s.available_bytes = s.available_bytes.saturating_add(region.length);
            s.available_end = s.available_end.max(end);
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a fake physical memory image at `BASE` by placing little-endian
    /// fields at absolute addresses.
    const BASE: u64 = 0x9000;

    struct Mem(Vec<u8>);

    impl Mem {
        fn new(len: usize) -> Self {
            Mem(vec![0; len])
        }
        fn put(&mut self, addr: u64, bytes: &[u8]) {
            let i = (addr - BASE) as usize;
            self.0[i..i + bytes.len()].copy_from_slice(bytes);
        }
        fn u32(&mut self, addr: u64, v: u32) {
            self.put(addr, &v.to_le_bytes());
        }
        fn u64(&mut self, addr: u64, v: u64) {
            self.put(addr, &v.to_le_bytes());
        }
        fn mmap_entry(&mut self, at: u64, base: u64, len: u64, kind: u32) -> u64 {
            self.u32(at, 20);
            self.u64(at + 4, base);
            self.u64(at + 12, len);
            self.u32(at + 20, kind);
            at + 24
        }
        fn reader(&self) -> SliceReader<'_> {
            SliceReader::new(BASE, &self.0)
        }
    }

    const INFO: u64 = BASE;
    const MMAP: u64 = BASE + 0x100;
    const MODS: u64 = BASE + 0x200;
    const CMDLINE: u64 = BASE + 0x300;
    const NAME: u64 = BASE + 0x380;

    /// What QEMU 7.2 gives a `-m 256M` machine: flags 0x24f (MEMORY,
    /// BOOT_DEVICE, CMDLINE, MODULES, MEMORY_MAP, BOOT_LOADER_NAME), the
    /// e820 map of SeaBIOS.
    fn qemu_like() -> Mem {
        let mut m = Mem::new(0x400);
        m.u32(INFO, 0x24f);
        m.u32(INFO + 4, 639);
        m.u32(INFO + 8, 260_992);
        m.u32(INFO + 12, 0x8000_ffff);
        m.u32(INFO + 16, CMDLINE as u32);
        m.u32(INFO + 20, 1);
        m.u32(INFO + 24, MODS as u32);
        m.u32(INFO + 44, 6 * 24);
        m.u32(INFO + 48, MMAP as u32);
        m.u32(INFO + 64, NAME as u32);
        let mut at = MMAP;
        at = m.mmap_entry(at, 0, 0x9_fc00, 1);
        at = m.mmap_entry(at, 0x9_fc00, 0x400, 2);
        at = m.mmap_entry(at, 0xf_0000, 0x1_0000, 2);
        at = m.mmap_entry(at, 0x10_0000, 0xfee_0000, 1);
        at = m.mmap_entry(at, 0xffe_0000, 0x2_0000, 2);
        m.mmap_entry(at, 0xfffc_0000, 0x4_0000, 2);
        m.u32(MODS, 0x0020_0000);
        m.u32(MODS + 4, 0x0020_1234);
        m.u32(MODS + 8, NAME as u32);
        m.put(CMDLINE, b"/boot/hv-app log=debug\0");
        m.put(NAME, b"qemu\0");
        m
    }

    #[test]
    fn header_constants_match_the_spec() {
        assert_eq!(HEADER_MAGIC, 0x1BADB002);
        assert_eq!(BOOTLOADER_MAGIC, 0x2BADB002);
        assert_eq!(HV_APP_HEADER_FLAGS.bits(), 0x0001_0003);
        // magic + flags + checksum == 0 (mod 2^32).
        assert_eq!(header_checksum(0x0001_0003), 0xE4514FFB);
        assert_eq!(header_checksum(0), 0xE4524FFE);
    }

    fn header_image(fields: [u32; 8], at: usize, len: usize) -> Vec<u8> {
        let mut img = vec![0xAAu8; len];
        for (i, f) in fields.iter().enumerate() {
            img[at + 4 * i..at + 4 * i + 4].copy_from_slice(&f.to_le_bytes());
        }
        img
    }

    fn hv_header(header_addr: u32, load_end: u32, bss_end: u32, entry: u32) -> [u32; 8] {
        let flags = HV_APP_HEADER_FLAGS.bits();
        [
            HEADER_MAGIC,
            flags,
            header_checksum(flags),
            header_addr,
            0x10_0000,
            load_end,
            bss_end,
            entry,
        ]
    }

    #[test]
    fn finds_a_header_with_address_fields() {
        // Header at file offset 0x1000, the first byte of the image, which
        // loads at 1 MiB; 0x3000 bytes load, bss to 0x110000.
        let img = header_image(
            hv_header(0x10_0000, 0x10_3000, 0x11_0000, 0x10_0020),
            0x1000,
            0x4000,
        );
        let h = find_header(&img).unwrap();
        assert_eq!(h.offset, 0x1000);
        assert_eq!(h.flags, HV_APP_HEADER_FLAGS);
        assert_eq!(h.load_file_offset(), Some(0x1000));
        assert_eq!(h.addresses.unwrap().bss_end_addr, 0x11_0000);
    }

    #[test]
    fn header_search_stops_at_8k_and_needs_alignment() {
        let mut fields = hv_header(0x10_0000, 0, 0, 0x10_0000);
        fields[1] = 0;
        fields[2] = header_checksum(0);
        // At 8192: outside the window.
        let img = header_image(fields, 8192, 9000);
        assert_res_eq!(find_header(&img), Err(Error::HeaderNotFound));
        // At 8180: the 12 bytes end at 8192, inside.
        let img = header_image(fields, 8180, 9000);
        assert_eq!(find_header(&img).unwrap().offset, 8180);
        // Unaligned: not found.
        let img = header_image(fields, 102, 1000);
        assert_res_eq!(find_header(&img), Err(Error::HeaderNotFound));
    }

    #[test]
    fn header_with_bad_checksum_is_skipped() {
        let mut fields = hv_header(0x10_0000, 0x10_3000, 0, 0x10_0000);
        fields[2] ^= 1;
        let img = header_image(fields, 0, 0x4000);
        assert_res_eq!(find_header(&img), Err(Error::HeaderNotFound));
    }

    #[test]
    fn inconsistent_address_fields_are_errors() {
        let cases = [
            // load_addr above header_addr
            (hv_header(0x0F_F000, 0x10_3000, 0, 0x10_0000), 0x1000),
            // header_addr - load_addr (0x2000) exceeds the file offset (0x1000)
            (hv_header(0x10_2000, 0x10_3000, 0, 0x10_2000), 0x1000),
            // file too short for 0x3_0000 bytes
            (hv_header(0x10_0000, 0x13_0000, 0, 0x10_0000), 0x1000),
            // bss below load end
            (
                hv_header(0x10_0000, 0x10_3000, 0x10_2000, 0x10_0000),
                0x1000,
            ),
            // entry past the image
            (
                hv_header(0x10_0000, 0x10_3000, 0x10_4000, 0x10_4000),
                0x1000,
            ),
        ];
        for (fields, at) in cases {
            let img = header_image(fields, at, 0x4000);
            assert!(
                matches!(find_header(&img), Err(Error::BadHeader(_))),
                "{fields:x?}"
            );
        }
    }

    #[test]
    fn parses_qemu_like_info() {
        let m = qemu_like();
        let r = m.reader();
        let info = BootInfo::parse(&r, BOOTLOADER_MAGIC, INFO).unwrap();
        assert_eq!(info.flags.bits(), 0x24f);
        assert_eq!(
            info.memory,
            Some(BasicMemory {
                lower_kib: 639,
                upper_kib: 260_992
            })
        );
        assert_eq!(info.boot_device, Some(0x8000_ffff));
        assert_eq!(
            info.modules,
            Some(ModuleTable {
                addr: MODS as u32,
                count: 1
            })
        );
        let mut buf = [0u8; 64];
        assert_eq!(
            info.cmdline(&r, &mut buf).unwrap(),
            Some("/boot/hv-app log=debug")
        );
        assert_eq!(info.boot_loader_name(&r, &mut buf).unwrap(), Some("qemu"));

        let regions: Vec<_> = info.memory_map(&r).collect::<Result<_>>().unwrap();
        assert_eq!(regions.len(), 6);
        assert_eq!(
            regions[3],
            MemoryRegion {
                base: 0x10_0000,
                length: 0xfee_0000,
                kind: MemoryKind::Available
            }
        );
        assert_eq!(regions[1].kind, MemoryKind::Reserved(2));
        let s = summarize(info.memory_map(&r)).unwrap();
        assert_eq!(s.regions, 6);
        assert_eq!(s.available_regions, 2);
        assert_eq!(s.available_bytes, 0x9_fc00 + 0xfee_0000);
        assert_eq!(s.available_end, 0xffe_0000);

        let mods: Vec<_> = info.modules(&r).collect::<Result<_>>().unwrap();
        assert_eq!(mods.len(), 1);
        assert_eq!(mods[0].len(), 0x1234);
        assert_res_eq!(
            read_c_str(&r, u64::from(mods[0].string_addr), &mut buf),
            Ok("qemu")
        );
    }

    #[test]
    fn only_flagged_fields_are_read() {
        // Flags 0 and a 4-byte structure: nothing else is touched.
        let bytes = 0u32.to_le_bytes();
        let r = SliceReader::new(0x5000, &bytes);
        let info = BootInfo::parse(&r, BOOTLOADER_MAGIC, 0x5000).unwrap();
        assert_eq!(info.memory, None);
        assert_eq!(info.memory_map(&r).count(), 0);
        assert_eq!(info.modules(&r).count(), 0);
        assert_res_eq!(info.cmdline(&r, &mut [0; 8]), Ok(None));
    }

    #[test]
    fn bad_magic_is_rejected() {
        let m = qemu_like();
        assert_res_eq!(
            BootInfo::parse(&m.reader(), 0x1BADB002, INFO),
            Err(Error::BadMagic(0x1BADB002))
        );
    }

    #[test]
    fn unreadable_info_is_an_error() {
        let m = qemu_like();
        let r = m.reader();
        // Below the memory.
        assert_res_eq!(
            BootInfo::parse(&r, BOOTLOADER_MAGIC, 0x1000),
            Err(Error::OutOfBounds {
                addr: 0x1000,
                len: 4
            })
        );
        // Flags readable, mem_upper past the end.
        let end = BASE + 0x400;
        let mut tail = Mem::new(0x400);
        tail.u32(end - 8, 0x1);
        assert_res_eq!(
            BootInfo::parse(&tail.reader(), BOOTLOADER_MAGIC, end - 8),
            Err(Error::OutOfBounds { addr: end, len: 4 })
        );
        // Address arithmetic overflow.
        assert!(matches!(
            BootInfo::parse(&r, BOOTLOADER_MAGIC, u64::MAX - 2),
            Err(Error::OutOfBounds { .. })
        ));
    }

    #[test]
    fn oversized_tables_are_rejected() {
        let mut m = qemu_like();
        m.u32(INFO + 20, MAX_MODULES + 1);
        assert_res_eq!(
            BootInfo::parse(&m.reader(), BOOTLOADER_MAGIC, INFO),
            Err(Error::TooManyModules(257))
        );
        let mut m = qemu_like();
        m.u32(INFO + 44, u32::MAX);
        assert_res_eq!(
            BootInfo::parse(&m.reader(), BOOTLOADER_MAGIC, INFO),
            Err(Error::MemoryMapTooLong(u32::MAX))
        );
    }

    #[test]
    fn small_mmap_entry_size_stops_iteration() {
        let mut m = qemu_like();
        m.u32(MMAP + 24, 0); // second entry: size 0 would loop forever
        let r = m.reader();
        let info = BootInfo::parse(&r, BOOTLOADER_MAGIC, INFO).unwrap();
        let got: Vec<_> = info.memory_map(&r).collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        assert_res_eq!(
            got[1],
            Err(Error::BadMemoryMapEntry {
                addr: MMAP + 24,
                size: 0
            })
        );
        assert_res_eq!(
            summarize(info.memory_map(&r)),
            Err(Error::BadMemoryMapEntry {
                addr: MMAP + 24,
                size: 0
            })
        );
    }

    #[test]
    fn mmap_entry_past_the_map_length_is_an_error() {
        let mut m = qemu_like();
        m.u32(INFO + 44, 24 + 10); // second entry cut short
        let r = m.reader();
        let info = BootInfo::parse(&r, BOOTLOADER_MAGIC, INFO).unwrap();
        let got: Vec<_> = info.memory_map(&r).collect();
        assert_eq!(got.len(), 2);
        assert_res_eq!(
            got[1],
            Err(Error::BadMemoryMapEntry {
                addr: MMAP + 24,
                size: 20
            })
        );
    }

    #[test]
    fn mmap_entries_honour_a_larger_size_field() {
        // GRUB and others may use size > 20; the next entry follows at
        // size + 4.
        let mut m = Mem::new(0x400);
        m.u32(INFO, InfoFlags::MEMORY_MAP.bits());
        m.u32(INFO + 44, 32 + 24);
        m.u32(INFO + 48, MMAP as u32);
        m.mmap_entry(MMAP, 0x1000, 0x2000, 1);
        m.u32(MMAP, 28);
        m.mmap_entry(MMAP + 32, 0x10_0000, 0x10_0000, 3);
        let r = m.reader();
        let info = BootInfo::parse(&r, BOOTLOADER_MAGIC, INFO).unwrap();
        let got: Vec<_> = info.memory_map(&r).collect::<Result<_>>().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].kind, MemoryKind::AcpiReclaimable);
        assert_eq!(got[1].base, 0x10_0000);
    }

    #[test]
    fn overflowing_region_is_an_error() {
        let mut m = qemu_like();
        m.u64(MMAP + 4, u64::MAX - 0xff);
        let r = m.reader();
        let info = BootInfo::parse(&r, BOOTLOADER_MAGIC, INFO).unwrap();
        assert_res_eq!(
            info.memory_map(&r).next(),
            Some(Err(Error::RegionOverflow {
                base: u64::MAX - 0xff,
                length: 0x9_fc00
            }))
        );
    }

    #[test]
    fn module_with_end_before_start_is_an_error() {
        let mut m = qemu_like();
        m.u32(MODS + 4, 0x1f_0000);
        let r = m.reader();
        let info = BootInfo::parse(&r, BOOTLOADER_MAGIC, INFO).unwrap();
        assert_res_eq!(
            info.modules(&r).next(),
            Some(Err(Error::BadModule {
                index: 0,
                start: 0x20_0000,
                end: 0x1f_0000
            }))
        );
    }

    #[test]
    fn strings_are_bounded_and_checked() {
        let mut m = qemu_like();
        let r = m.reader();
        let info = BootInfo::parse(&r, BOOTLOADER_MAGIC, INFO).unwrap();
        // 22 characters do not fit a 22-byte buffer together with the NUL.
        assert_res_eq!(
            info.cmdline(&r, &mut [0; 22]),
            Err(Error::StringTooLong {
                addr: CMDLINE,
                max: 22
            })
        );
        assert_res_eq!(
            info.cmdline(&r, &mut [0; 23]),
            Ok(Some("/boot/hv-app log=debug"))
        );
        m.put(NAME, &[0xff, 0xfe, 0]);
        let r = m.reader();
        assert_res_eq!(
            info.boot_loader_name(&r, &mut [0; 8]),
            Err(Error::InvalidUtf8 { addr: NAME })
        );
        // A string running off the end of memory.
        m.put(BASE + 0x3fc, b"abcd");
        let r = m.reader();
        assert_res_eq!(
            read_c_str(&r, BASE + 0x3fc, &mut [0; 16]),
            Err(Error::OutOfBounds {
                addr: BASE + 0x400,
                len: 1
            })
        );
    }

    #[test]
    fn memory_kinds_follow_the_spec_numbers() {
        assert_eq!(MemoryKind::from_raw(1), MemoryKind::Available);
        assert_eq!(MemoryKind::from_raw(2), MemoryKind::Reserved(2));
        assert_eq!(MemoryKind::from_raw(3), MemoryKind::AcpiReclaimable);
        assert_eq!(MemoryKind::from_raw(4), MemoryKind::AcpiNvs);
        assert_eq!(MemoryKind::from_raw(5), MemoryKind::Defective);
        assert_eq!(MemoryKind::from_raw(0), MemoryKind::Reserved(0));
    }
}
