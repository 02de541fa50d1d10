//! ELF32 / ELF64 planning by physical address.

use axvm::Error;
use axvm::loader::{ImageKind, Segment, detect, plan, plan_elf};

use crate::images::*;

/// Text at 1 MiB linked at -2 GiB, data with BSS after it, and a PT_NOTE.
fn kernel_segs() -> Vec<Seg> {
    vec![
        Seg::load(0xffff_ffff_8010_0000, 0x10_0000, data(0, 0x180), 0x180),
        Seg {
            p_type: PT_NOTE,
            vaddr: 0,
            paddr: 0,
            data: data(1, 0x20),
            memsz: 0x20,
        },
        Seg::load(0xffff_ffff_8010_2000, 0x10_2000, data(2, 0x50), 0x1000),
    ]
}

#[test]
fn elf64_segments_go_to_paddr_and_entry_is_translated() {
    let (image, off) = elf(true, EM_X86_64, 0xffff_ffff_8010_0040, &kernel_segs());
    let p = plan_elf(&image).unwrap();
    assert_eq!(
        p.segments,
        [
            Segment {
                gpa: gpa(0x10_0000),
                file_offset: off[0],
                file_len: 0x180,
                mem_len: 0x180,
            },
            Segment {
                gpa: gpa(0x10_2000),
                file_offset: off[2],
                file_len: 0x50,
                mem_len: 0x1000,
            },
        ]
    );
    assert_eq!(p.entry, gpa(0x10_0040));
    assert_eq!(p.mb_flags, None);
    assert_eq!(detect(&image), ImageKind::Elf64);
    assert_eq!(plan(&image), Ok(p.clone()));

    let mut mem = poisoned_memory(0x20_0000);
    p.apply(&image, &mut mem).unwrap();
    assert_eq!(read(&mem, 0x10_0000, 0x180), data(0, 0x180));
    assert_eq!(read(&mem, 0x10_2000, 0x50), data(2, 0x50));
    assert!(read(&mem, 0x10_2050, 0x1000 - 0x50).iter().all(|&b| b == 0));
    assert_eq!(read(&mem, 0x10_3000, 4), [0xAA; 4]);
    assert_eq!(read(&mem, 0x10_0180, 4), [0xAA; 4]);
}

#[test]
fn elf32_segments_go_to_paddr_and_entry_is_translated() {
    let segs = [
        Seg::load(0xC010_0000, 0x10_0000, data(0, 0x100), 0x100),
        Seg::load(0xC010_1000, 0x10_1000, data(3, 0x20), 0x80),
    ];
    let (image, off) = elf(false, EM_386, 0xC010_1004, &segs);
    let p = plan_elf(&image).unwrap();
    assert_eq!(p.segments[1].gpa, gpa(0x10_1000));
    assert_eq!(p.segments[1].file_offset, off[1]);
    assert_eq!(
        (p.segments[1].file_len, p.segments[1].mem_len),
        (0x20, 0x80)
    );
    // The entry lies in the second segment's BSS part: still translated.
    assert_eq!(p.entry, gpa(0x10_1004));
    assert_eq!(detect(&image), ImageKind::Elf32);
}

#[test]
fn entry_outside_every_segment_is_kept_as_is() {
    let segs = [Seg::load(0xC010_0000, 0x10_0000, data(0, 0x100), 0x100)];
    let (image, _) = elf(false, EM_386, 0x10_0020, &segs);
    assert_eq!(plan_elf(&image).unwrap().entry, gpa(0x10_0020));
    // One past the end of the segment is outside it.
    let (image, _) = elf(false, EM_386, 0xC010_0100, &segs);
    assert_eq!(plan_elf(&image).unwrap().entry, gpa(0xC010_0100));
}

#[test]
fn every_truncation_of_an_elf_errors() {
    for is64 in [true, false] {
        let segs: Vec<Seg> = if is64 {
            kernel_segs()
        } else {
            vec![Seg::load(0xC010_0000, 0x10_0000, data(0, 0x100), 0x200)]
        };
        let m = if is64 { EM_X86_64 } else { EM_386 };
        let (image, _) = elf(is64, m, 0x10_0000, &segs);
        for len in 0..image.len() {
            let err = plan_elf(&image[..len]).unwrap_err();
            let ok = match err {
                Error::NotElf => len < 5,
                Error::Truncated { need, have, .. } => have == len && need > len,
                _ => false,
            };
            assert!(ok, "is64 {is64} len {len:#x}: {err:?}");
        }
        assert!(plan_elf(&image).is_ok());
    }
}

#[test]
fn segment_data_beyond_the_file_is_truncated() {
    let (mut image, _) = elf(true, EM_X86_64, 0, &kernel_segs());
    // p_offset of the first program header (at 64) -> just before the end.
    let len = image.len();
    put_u64(&mut image, 64 + 8, len as u64 - 0x10);
    assert_eq!(
        plan_elf(&image),
        Err(Error::Truncated {
            what: "ELF PT_LOAD segment data",
            need: image.len() - 0x10 + 0x180,
            have: image.len(),
        })
    );
}

#[test]
fn malformed_elfs_are_rejected() {
    let (good, _) = elf(true, EM_X86_64, 0, &kernel_segs());
    let with = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        plan_elf(&b)
    };
    assert_eq!(with(0, b"\x7fELG"), Err(Error::NotElf));
    assert_eq!(with(4, &[3]), Err(Error::NotElf));
    assert_eq!(
        with(5, &[2]),
        Err(Error::BadElf("not little-endian (EI_DATA != ELFDATA2LSB)"))
    );
    assert_eq!(
        with(16, &[1, 0]),
        Err(Error::BadElf("e_type is neither ET_EXEC nor ET_DYN"))
    );
    // ET_DYN is accepted.
    assert!(with(16, &[3, 0]).is_ok());
    assert_eq!(
        with(18, &[40, 0]),
        Err(Error::BadElf("e_machine is neither EM_386 nor EM_X86_64"))
    );
    assert_eq!(
        with(54, &[32, 0]),
        Err(Error::BadElf(
            "e_phentsize is smaller than a program header"
        ))
    );
    assert!(matches!(
        with(56, &[0xff, 0xff]),
        Err(Error::Unsupported(_))
    ));
    assert_eq!(with(56, &[0, 0]), Err(Error::NoLoadSegments));
    // p_filesz (at 64 + 32) > p_memsz.
    assert_eq!(
        with(64 + 32, &0x181u64.to_le_bytes()),
        Err(Error::BadElf("PT_LOAD segment has p_filesz > p_memsz"))
    );
    // p_paddr at the top of the address space: the segment would wrap.
    assert_eq!(
        with(64 + 24, &(u64::MAX - 0x10).to_le_bytes()),
        Err(Error::BadElf(
            "PT_LOAD segment wraps around the physical address space"
        ))
    );
}

#[test]
fn only_empty_or_non_load_segments_means_nothing_to_load() {
    let segs = [
        Seg {
            p_type: PT_NOTE,
            vaddr: 0,
            paddr: 0,
            data: data(0, 8),
            memsz: 8,
        },
        Seg::load(0x1000, 0x1000, vec![], 0),
    ];
    let (image, _) = elf(true, EM_X86_64, 0x1000, &segs);
    assert_eq!(plan_elf(&image), Err(Error::NoLoadSegments));
}
