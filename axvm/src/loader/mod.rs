//! Guest image loaders.
//!
//! Loading is split in two steps, so that a bad image is rejected before
//! anything is written to the guest:
//!
//! 1. *Planning* ([`plan`], [`plan_multiboot`], [`plan_elf`], [`plan_raw`])
//!    parses the image and returns a [`LoadPlan`]: which file bytes go to
//!    which guest physical address, how much to zero after them, and the
//!    entry point. Planning is pure and never touches guest memory.
//! 2. [`LoadPlan::apply`] checks that every segment lies inside guest memory
//!    and only then copies and zeroes.
//!
//! For Multiboot kernels, [`MultibootInfoBuilder`] then writes the boot
//! information structure whose address goes to EBX, with
//! [`MULTIBOOT_BOOTLOADER_MAGIC`] in EAX.

mod bytes;
mod elf;
mod mbi;
mod memory;
mod multiboot;

use alloc::vec::Vec;

use axaddrspace::GuestPhysAddr;

use crate::{Error, Result};

pub use elf::plan_elf;
pub use mbi::{MemoryKind, MemoryMapEntry, MultibootInfo, MultibootInfoBuilder};
pub use memory::{GuestMemory, VecGuestMemory};
pub use multiboot::{
    AoutKludge, MULTIBOOT_BOOTLOADER_MAGIC, MULTIBOOT_HEADER_MAGIC, MULTIBOOT_SEARCH,
    MultibootHeader, plan_multiboot,
};

/// One piece of an image to place in guest memory: `file_len` bytes from
/// `file_offset` in the image copied to `gpa`, then zeroes up to `mem_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address of the first byte.
    pub gpa: GuestPhysAddr,
    /// Offset of the first byte in the image file.
    pub file_offset: usize,
    /// Number of bytes copied from the file.
    pub file_len: usize,
    /// Number of bytes the segment occupies in memory (`>= file_len`); the
    /// bytes after `file_len` are zeroed (BSS).
    pub mem_len: usize,
}

impl Segment {
    /// First guest physical address after the segment (saturating at the
    /// top of the address space).
    pub fn end(&self) -> GuestPhysAddr {
        GuestPhysAddr::from_usize(self.gpa.as_usize().saturating_add(self.mem_len))
    }
}

/// How to load an image: its segments and where to start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadPlan {
    /// The pieces to place in guest memory, in file order.
    pub segments: Vec<Segment>,
    /// Guest physical address of the first instruction.
    pub entry: GuestPhysAddr,
    /// The Multiboot header flags if the image is a Multiboot kernel; such a
    /// kernel expects EAX = [`MULTIBOOT_BOOTLOADER_MAGIC`] and EBX = the
    /// address of a Multiboot information structure
    /// ([`MultibootInfoBuilder`]).
    pub mb_flags: Option<u32>,
}

impl LoadPlan {
    /// Whether the kernel asked for page-aligned modules (Multiboot header
    /// flag bit 0).
    pub fn page_align_modules(&self) -> bool {
        self.mb_flags
            .is_some_and(|f| f & MultibootHeader::PAGE_ALIGN != 0)
    }

    /// Lowest and highest-plus-one guest physical address the plan writes,
    /// or `None` if it has no segment.
    pub fn extent(&self) -> Option<(GuestPhysAddr, GuestPhysAddr)> {
        let start = self.segments.iter().map(|s| s.gpa).min()?;
        let end = self.segments.iter().map(Segment::end).max()?;
        Some((start, end))
    }

    /// Copies the segments of `image` into `mem` and zeroes their BSS parts.
    ///
    /// Every segment is checked first, against the image and against guest
    /// memory: if one does not lie entirely inside guest memory the result is
    /// [`Error::SegmentOutsideMemory`] and nothing has been written.
    pub fn apply<M: GuestMemory + ?Sized>(&self, image: &[u8], mem: &mut M) -> Result {
        for s in &self.segments {
            bytes::slice(image, s.file_offset, s.file_len, "load segment file data")?;
            if s.gpa.as_usize().checked_add(s.mem_len).is_none() {
                return Err(Error::InvalidRegion {
                    gpa: s.gpa,
                    len: s.mem_len,
                    reason: "segment wraps around the address space",
                });
            }
            if s.file_len > s.mem_len {
                return Err(Error::InvalidRegion {
                    gpa: s.gpa,
                    len: s.mem_len,
                    reason: "segment copies more file bytes than it occupies in memory",
                });
            }
            if !mem.contains(s.gpa, s.mem_len) {
                return Err(Error::SegmentOutsideMemory {
                    gpa: s.gpa,
                    len: s.mem_len,
                });
            }
        }
        for s in &self.segments {
            log::debug!(
                "load {:?}..{:?} from file {:#x}+{:#x}",
                s.gpa,
                s.end(),
                s.file_offset,
                s.file_len
            );
            mem.write(s.gpa, &image[s.file_offset..s.file_offset + s.file_len])?;
            mem.fill(s.gpa + s.file_len, s.mem_len - s.file_len, 0)?;
        }
        Ok(())
    }
}

/// The kind of a guest image, as told by its magic numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// A Multiboot v1 kernel: a header with a valid checksum in the first
    /// 8192 bytes (it may also be an ELF file).
    Multiboot,
    /// An ELF64 file without a Multiboot header.
    Elf64,
    /// An ELF32 file without a Multiboot header.
    Elf32,
    /// A Linux x86 boot image: boot sector signature `0x55AA` at offset 510
    /// and `"HdrS"` at offset 0x202.
    LinuxBzImage,
    /// None of the above; load it with [`plan_raw`].
    Unknown,
}

/// Tells what kind of image `image` is.
///
/// A Multiboot header wins over the ELF magic, because the Multiboot
/// protocol also defines the entry state. A Multiboot magic with a bad
/// checksum does not count.
pub fn detect(image: &[u8]) -> ImageKind {
    if multiboot::scan(image).is_some() {
        ImageKind::Multiboot
    } else if image.get(510..512) == Some(&[0x55, 0xaa]) && image.get(0x202..0x206) == Some(b"HdrS")
    {
        ImageKind::LinuxBzImage
    } else {
        match elf::class(image) {
            Some(elf::Class::Elf64) => ImageKind::Elf64,
            Some(elf::Class::Elf32) => ImageKind::Elf32,
            None => ImageKind::Unknown,
        }
    }
}

/// Plans the load of an image whose format is told by its magic numbers
/// ([`detect`]).
///
/// Linux bzImages are recognised but not loadable yet, and images of
/// unknown format need a load address: both give [`Error::Unsupported`].
pub fn plan(image: &[u8]) -> Result<LoadPlan> {
    match detect(image) {
        ImageKind::Multiboot => plan_multiboot(image),
        ImageKind::Elf64 | ImageKind::Elf32 => plan_elf(image),
        ImageKind::LinuxBzImage => Err(Error::Unsupported(
            "Linux bzImage boot (boot_params/e820) not implemented yet",
        )),
        ImageKind::Unknown => Err(Error::Unsupported(
            "image format not recognised (not Multiboot, ELF or bzImage): load it with plan_raw",
        )),
    }
}

/// Plans the load of a raw binary: the whole file at `load_gpa`, started at
/// `entry_gpa`.
pub fn plan_raw(
    image: &[u8],
    load_gpa: GuestPhysAddr,
    entry_gpa: GuestPhysAddr,
) -> Result<LoadPlan> {
    if image.is_empty() {
        return Err(Error::NoLoadSegments);
    }
    if load_gpa.as_usize().checked_add(image.len()).is_none() {
        return Err(Error::InvalidRegion {
            gpa: load_gpa,
            len: image.len(),
            reason: "raw image would wrap around the address space",
        });
    }
    Ok(LoadPlan {
        segments: alloc::vec![Segment {
            gpa: load_gpa,
            file_offset: 0,
            file_len: image.len(),
            mem_len: image.len(),
        }],
        entry: entry_gpa,
        mb_flags: None,
    })
}
