//! ELF32 and ELF64 executables, loaded by their physical addresses.

use alloc::vec::Vec;

use axaddrspace::GuestPhysAddr;

use super::bytes::{u16_at, u32_at, u64_at};
use super::{LoadPlan, Segment};
use crate::{Error, Result};

const ELFMAG: &[u8; 4] = b"\x7fELF";
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PN_XNUM: u16 = 0xffff;

/// ELF file class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Elf32,
    Elf64,
}

/// The class of `image` if it starts with an ELF identification.
pub(crate) fn class(image: &[u8]) -> Option<Class> {
    if image.get(..4)? != ELFMAG {
        return None;
    }
    match *image.get(EI_CLASS)? {
        ELFCLASS32 => Some(Class::Elf32),
        ELFCLASS64 => Some(Class::Elf64),
        _ => None,
    }
}

/// One program header, widened to 64 bits.
struct Phdr {
    p_type: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn to_usize(v: u64, what: &'static str) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::BadElf(what))
}

/// Plans the load of an ELF32 or ELF64 x86 executable.
///
/// Each `PT_LOAD` segment goes to its physical address `p_paddr`: `p_filesz`
/// bytes are copied and the rest up to `p_memsz` is zeroed. The entry point
/// is `e_entry`, translated to a physical address when it lies inside a
/// segment's virtual range (`e_entry - p_vaddr + p_paddr`).
///
/// Beware of kernels whose `p_paddr` is a virtual address (NimbOS and ArceOS
/// put `0xffffff80_00200000` there): load those through their Multiboot
/// header ([`plan_multiboot`](super::plan_multiboot)) instead.
pub fn plan_elf(image: &[u8]) -> Result<LoadPlan> {
    let class = class(image).ok_or(Error::NotElf)?;
    let is64 = class == Class::Elf64;
    let ehsize = if is64 { 64 } else { 52 };
    super::bytes::slice(image, 0, ehsize, "ELF header")?;
    if image[EI_DATA] != ELFDATA2LSB {
        return Err(Error::BadElf("not little-endian (EI_DATA != ELFDATA2LSB)"));
    }
    let e_type = u16_at(image, 16, "ELF header")?;
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(Error::BadElf("e_type is neither ET_EXEC nor ET_DYN"));
    }
    let machine = u16_at(image, 18, "ELF header")?;
    if machine != EM_386 && machine != EM_X86_64 {
        return Err(Error::BadElf("e_machine is neither EM_386 nor EM_X86_64"));
    }
    let (entry, phoff, phentsize, phnum, min_phentsize) = if is64 {
        (
            u64_at(image, 24, "ELF header")?,
            u64_at(image, 32, "ELF header")?,
            u16_at(image, 54, "ELF header")?,
            u16_at(image, 56, "ELF header")?,
            56,
        )
    } else {
        (
            u64::from(u32_at(image, 24, "ELF header")?),
            u64::from(u32_at(image, 28, "ELF header")?),
            u16_at(image, 42, "ELF header")?,
            u16_at(image, 44, "ELF header")?,
            32,
        )
    };
    if phnum == PN_XNUM {
        return Err(Error::Unsupported(
            "ELF extended program header numbering (e_phnum = PN_XNUM)",
        ));
    }
    if phnum == 0 {
        return Err(Error::NoLoadSegments);
    }
    if usize::from(phentsize) < min_phentsize {
        return Err(Error::BadElf(
            "e_phentsize is smaller than a program header",
        ));
    }
    let phoff = to_usize(phoff, "e_phoff does not fit in usize")?;
    let table_len = usize::from(phentsize) * usize::from(phnum);
    super::bytes::slice(image, phoff, table_len, "ELF program header table")?;

    let mut phdrs = Vec::new();
    for i in 0..usize::from(phnum) {
        let at = phoff + i * usize::from(phentsize);
        let what = "ELF program header";
        let ph = if is64 {
            Phdr {
                p_type: u32_at(image, at, what)?,
                offset: u64_at(image, at + 8, what)?,
                vaddr: u64_at(image, at + 16, what)?,
                paddr: u64_at(image, at + 24, what)?,
                filesz: u64_at(image, at + 32, what)?,
                memsz: u64_at(image, at + 40, what)?,
            }
        } else {
            Phdr {
                p_type: u32_at(image, at, what)?,
                offset: u32_at(image, at + 4, what)?.into(),
                vaddr: u32_at(image, at + 8, what)?.into(),
                paddr: u32_at(image, at + 12, what)?.into(),
                filesz: u32_at(image, at + 16, what)?.into(),
                memsz: u32_at(image, at + 20, what)?.into(),
            }
        };
        if ph.p_type == PT_LOAD && ph.memsz != 0 {
            phdrs.push(ph);
        }
    }
    if phdrs.is_empty() {
        return Err(Error::NoLoadSegments);
    }

    let mut segments = Vec::with_capacity(phdrs.len());
    for ph in &phdrs {
        if ph.filesz > ph.memsz {
            return Err(Error::BadElf("PT_LOAD segment has p_filesz > p_memsz"));
        }
        let file_offset = to_usize(ph.offset, "p_offset does not fit in usize")?;
        let file_len = to_usize(ph.filesz, "p_filesz does not fit in usize")?;
        let mem_len = to_usize(ph.memsz, "p_memsz does not fit in usize")?;
        let gpa = to_usize(ph.paddr, "p_paddr does not fit in usize")?;
        if gpa.checked_add(mem_len).is_none() {
            return Err(Error::BadElf(
                "PT_LOAD segment wraps around the physical address space",
            ));
        }
        super::bytes::slice(image, file_offset, file_len, "ELF PT_LOAD segment data")?;
        segments.push(Segment {
            gpa: GuestPhysAddr::from_usize(gpa),
            file_offset,
            file_len,
            mem_len,
        });
    }

    let entry = phdrs
        .iter()
        .find(|ph| entry >= ph.vaddr && entry - ph.vaddr < ph.memsz)
        .map_or(entry, |ph| entry - ph.vaddr + ph.paddr);
    let entry = to_usize(entry, "entry address does not fit in usize")?;
    Ok(LoadPlan {
        segments,
        entry: GuestPhysAddr::from_usize(entry),
        mb_flags: None,
    })
}
