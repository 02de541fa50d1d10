//! Multiboot v1 (specification 0.6.96) kernel images.

use axaddrspace::GuestPhysAddr;

use super::bytes::u32_at;
use super::{LoadPlan, Segment, plan_elf};
use crate::{Error, Result};

/// Magic number of a Multiboot header.
pub const MULTIBOOT_HEADER_MAGIC: u32 = 0x1BAD_B002;
/// Value of EAX when a Multiboot kernel is entered.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header must lie in the first `MULTIBOOT_SEARCH` bytes of the image.
pub const MULTIBOOT_SEARCH: usize = 8192;

/// The address fields of a Multiboot header (the "a.out kludge"), valid when
/// flag bit 16 is set: they tell the loader where to put the file without
/// looking at its ELF headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AoutKludge {
    /// Physical address where the header itself is loaded.
    pub header_addr: u32,
    /// Physical address of the start of the text segment.
    pub load_addr: u32,
    /// End of the data to load (`0`: to the end of the file).
    pub load_end_addr: u32,
    /// End of the BSS, zeroed after the data (`0`: no BSS).
    pub bss_end_addr: u32,
    /// Physical address of the entry point.
    pub entry_addr: u32,
}

/// A Multiboot v1 header found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultibootHeader {
    /// The `flags` field.
    pub flags: u32,
    /// The `checksum` field (`magic + flags + checksum == 0` mod 2^32).
    pub checksum: u32,
    /// The address fields, present when `flags` bit 16 is set.
    pub addresses: Option<AoutKludge>,
}

/// Offset of the first 4-byte aligned magic with a valid checksum in the
/// search window, with its flags and checksum.
pub(crate) fn scan(image: &[u8]) -> Option<(usize, u32, u32)> {
    scan_all(image).find_map(|(off, flags, checksum)| {
        let sum = MULTIBOOT_HEADER_MAGIC
            .wrapping_add(flags)
            .wrapping_add(checksum);
        (sum == 0).then_some((off, flags, checksum))
    })
}

/// Every 4-byte aligned magic of the search window, with the two words after
/// it.
fn scan_all(image: &[u8]) -> impl Iterator<Item = (usize, u32, u32)> + '_ {
    let window = &image[..image.len().min(MULTIBOOT_SEARCH)];
    let magic = MULTIBOOT_HEADER_MAGIC.to_le_bytes();
    window
        .chunks_exact(4)
        .enumerate()
        .filter(move |(_, w)| *w == magic)
        .filter_map(move |(i, _)| {
            let off = 4 * i;
            let word = |at| u32_at(window, off + at, "").ok();
            Some((off, word(4)?, word(8)?))
        })
}

impl MultibootHeader {
    /// Page-align modules (a required feature).
    pub const PAGE_ALIGN: u32 = 1 << 0;
    /// Provide memory information in the info structure (required).
    pub const MEMORY_INFO: u32 = 1 << 1;
    /// Provide the video mode table (required; not provided by this loader,
    /// which ignores it with a warning).
    pub const VIDEO_MODE: u32 = 1 << 2;
    /// The address fields (a.out kludge) are valid.
    pub const AOUT_KLUDGE: u32 = 1 << 16;
    /// Required-feature bits this loader satisfies (or knowingly ignores).
    pub const SUPPORTED_REQUIRED: u32 = Self::PAGE_ALIGN | Self::MEMORY_INFO | Self::VIDEO_MODE;

    /// Finds the Multiboot header of `image`: the first 4-byte aligned
    /// magic `0x1BADB002` in the first 8192 bytes whose checksum is valid.
    ///
    /// Returns its file offset and contents, `Ok(None)` if there is no magic
    /// at all, [`Error::BadChecksum`] for the first magic found if none has a
    /// valid checksum, and [`Error::Truncated`] if flag bit 16 is set but the
    /// image ends inside the address fields.
    pub fn find(image: &[u8]) -> Result<Option<(usize, MultibootHeader)>> {
        let Some((off, flags, checksum)) = scan(image) else {
            return match scan_all(image).next() {
                Some((offset, flags, checksum)) => Err(Error::BadChecksum {
                    offset,
                    flags,
                    checksum,
                }),
                None => Ok(None),
            };
        };
        let addresses = if flags & Self::AOUT_KLUDGE != 0 {
            let what = "multiboot header address fields";
            let f = super::bytes::slice(image, off + 12, 20, what)?;
            Some(AoutKludge {
                header_addr: u32_at(f, 0, what)?,
                load_addr: u32_at(f, 4, what)?,
                load_end_addr: u32_at(f, 8, what)?,
                bss_end_addr: u32_at(f, 12, what)?,
                entry_addr: u32_at(f, 16, what)?,
            })
        } else {
            None
        };
        Ok(Some((
            off,
            MultibootHeader {
                flags,
                checksum,
                addresses,
            },
        )))
    }

    /// Checks that this loader can honour every required flag (bits 0..=15).
    ///
    /// The video mode request (bit 2) is ignored with a warning; any other
    /// unknown required bit is [`Error::UnsupportedMultibootFlags`].
    /// Unknown optional bits (17..=31) are ignored, as the specification
    /// allows.
    pub fn check_flags(&self) -> Result {
        let unsupported = self.flags & 0xffff & !Self::SUPPORTED_REQUIRED;
        if unsupported != 0 {
            return Err(Error::UnsupportedMultibootFlags {
                flags: self.flags,
                unsupported,
            });
        }
        if self.flags & Self::VIDEO_MODE != 0 {
            log::warn!(
                "multiboot kernel asks for a video mode table (flag bit 2); none is provided"
            );
        }
        Ok(())
    }
}

/// Plans the load of a Multiboot v1 kernel.
///
/// With the address fields (flag bit 16) the file is placed by them, whatever
/// ELF headers it has: the data loaded at `load_addr` starts at file offset
/// `header_offset - (header_addr - load_addr)` and ends at `load_end_addr`
/// (`0`: end of file), then `[load_end_addr, bss_end_addr)` is zeroed, and
/// the entry is `entry_addr`. Without them the image must be an ELF file,
/// loaded as by [`plan_elf`].
pub fn plan_multiboot(image: &[u8]) -> Result<LoadPlan> {
    let (offset, header) = MultibootHeader::find(image)?.ok_or(Error::NoMultibootHeader)?;
    header.check_flags()?;
    let mut plan = match header.addresses {
        Some(a) => plan_aout(image, offset, &a)?,
        None => plan_elf(image)?,
    };
    plan.mb_flags = Some(header.flags);
    log::debug!(
        "multiboot header at {offset:#x}, flags {:#x}, entry {:?}",
        header.flags,
        plan.entry
    );
    Ok(plan)
}

fn plan_aout(image: &[u8], header_offset: usize, a: &AoutKludge) -> Result<LoadPlan> {
    let invalid = |reason, field, value| Error::HeaderAddrInvalid {
        reason,
        field,
        value,
    };
    if a.header_addr < a.load_addr {
        return Err(invalid(
            "header_addr is below load_addr",
            "header_addr",
            a.header_addr,
        ));
    }
    let delta = (a.header_addr - a.load_addr) as usize;
    let file_offset = header_offset.checked_sub(delta).ok_or(invalid(
        "header_addr - load_addr exceeds the header's file offset: the load would start before the file",
        "header_addr",
        a.header_addr,
    ))?;
    let file_len = if a.load_end_addr == 0 {
        image.len() - file_offset
    } else {
        if a.load_end_addr < a.load_addr {
            return Err(invalid(
                "load_end_addr is below load_addr",
                "load_end_addr",
                a.load_end_addr,
            ));
        }
        (a.load_end_addr - a.load_addr) as usize
    };
    super::bytes::slice(
        image,
        file_offset,
        file_len,
        "multiboot load area (load_addr..load_end_addr)",
    )?;
    let load_end = u64::from(a.load_addr) + file_len as u64;
    if load_end > 1 << 32 {
        return Err(invalid(
            "the loaded file does not fit below 4 GiB",
            "load_addr",
            a.load_addr,
        ));
    }
    let mem_end = if a.bss_end_addr == 0 {
        load_end
    } else if u64::from(a.bss_end_addr) < load_end {
        return Err(invalid(
            "bss_end_addr is below the end of the loaded data",
            "bss_end_addr",
            a.bss_end_addr,
        ));
    } else {
        u64::from(a.bss_end_addr)
    };
    let mem_len = (mem_end - u64::from(a.load_addr)) as usize;
    if mem_len == 0 {
        return Err(Error::NoLoadSegments);
    }
    Ok(LoadPlan {
        segments: alloc::vec![Segment {
            gpa: GuestPhysAddr::from_usize(a.load_addr as usize),
            file_offset,
            file_len,
            mem_len,
        }],
        entry: GuestPhysAddr::from_usize(a.entry_addr as usize),
        mb_flags: None,
    })
}
