//! Multiboot v1 header search and a.out-kludge / ELF planning.

use axvm::Error;
use axvm::loader::{
    AoutKludge, ImageKind, LoadPlan, MultibootHeader, Segment, detect, plan_elf, plan_multiboot,
};

use crate::images::*;

/// NimbOS' header as GUESTS.md lists it (commit 545ab80).
const NIMBOS_FLAGS: u32 = 0x0001_0002;
const NIMBOS_AOUT: Aout = Aout {
    header_addr: 0x0020_0008,
    load_addr: 0x0020_0000,
    load_end_addr: 0x0028_e000,
    bss_end_addr: 0x0069_3000,
    entry_addr: 0x0020_0000,
};

#[test]
fn nimbos_header_gives_nimbos_plan() {
    // The checksum our builder computes is the one in the NimbOS binary.
    assert_eq!(checksum(NIMBOS_FLAGS), 0xe451_4ffc);
    let image = aout_image(0x1000 + 0x8e000, NIMBOS_FLAGS, NIMBOS_AOUT);

    let (off, h) = MultibootHeader::find(&image).unwrap().unwrap();
    assert_eq!(off, 0x1008);
    assert_eq!(
        h,
        MultibootHeader {
            flags: 0x0001_0002,
            checksum: 0xe451_4ffc,
            addresses: Some(AoutKludge {
                header_addr: 0x0020_0008,
                load_addr: 0x0020_0000,
                load_end_addr: 0x0028_e000,
                bss_end_addr: 0x0069_3000,
                entry_addr: 0x0020_0000,
            }),
        }
    );

    let plan = plan_multiboot(&image).unwrap();
    assert_eq!(
        plan,
        LoadPlan {
            segments: vec![Segment {
                gpa: gpa(0x20_0000),
                file_offset: 0x1000,
                file_len: 0x8e000,
                mem_len: 0x69_3000 - 0x20_0000,
            }],
            entry: gpa(0x20_0000),
            mb_flags: Some(0x0001_0002),
        }
    );
    assert!(!plan.page_align_modules());
    assert_eq!(plan.extent(), Some((gpa(0x20_0000), gpa(0x69_3000))));
    assert_eq!(detect(&image), ImageKind::Multiboot);
}

#[test]
fn aout_apply_copies_from_load_offset_and_zeroes_bss() {
    let image = small_aout_image();
    let plan = plan_multiboot(&image).unwrap();
    let mut mem = poisoned_memory(0x40_0000);
    plan.apply(&image, &mut mem).unwrap();

    // 0x200000.. holds file bytes 0x1000..0x4000, the header among them.
    assert_eq!(read(&mem, 0x20_0000, 0x3000), &image[0x1000..0x4000]);
    assert_eq!(get_u32(&read(&mem, 0x20_0008, 4), 0), 0x1BAD_B002);
    // BSS 0x203000..0x206000 is zero.
    assert!(read(&mem, 0x20_3000, 0x3000).iter().all(|&b| b == 0));
    // Neighbours are untouched.
    assert_eq!(read(&mem, 0x1f_fff0, 0x10), [0xAA; 0x10]);
    assert_eq!(read(&mem, 0x20_6000, 0x10), [0xAA; 0x10]);
}

#[test]
fn zero_load_end_means_end_of_file_and_zero_bss_end_means_no_bss() {
    let aout = Aout {
        load_end_addr: 0,
        bss_end_addr: 0,
        ..SMALL_AOUT
    };
    let image = aout_image(0x2345, SMALL_FLAGS, aout);
    let plan = plan_multiboot(&image).unwrap();
    assert_eq!(
        plan.segments,
        [Segment {
            gpa: gpa(0x20_0000),
            file_offset: 0x1000,
            file_len: 0x1345,
            mem_len: 0x1345,
        }]
    );
}

#[test]
fn header_addr_offset_chooses_file_offset() {
    // Header at file offset 0x1008 but 0x808 bytes after load_addr: the
    // load starts at file offset 0x800.
    let aout = Aout {
        header_addr: 0x10_0808,
        load_addr: 0x10_0000,
        load_end_addr: 0x10_1000,
        bss_end_addr: 0,
        entry_addr: 0x10_0010,
    };
    let image = aout_image(0x3000, SMALL_FLAGS, aout);
    let plan = plan_multiboot(&image).unwrap();
    assert_eq!(plan.segments[0].file_offset, 0x800);
    assert_eq!(plan.segments[0].file_len, 0x1000);
    assert_eq!(plan.entry, gpa(0x10_0010));
}

#[test]
fn every_truncation_of_an_aout_image_errors() {
    let image = small_aout_image();
    for len in 0..image.len() {
        let err = plan_multiboot(&image[..len]).unwrap_err();
        let expected = if len < 0x1008 + 12 {
            Error::NoMultibootHeader
        } else if len < 0x1008 + 32 {
            Error::Truncated {
                what: "multiboot header address fields",
                need: 0x1008 + 32,
                have: len,
            }
        } else {
            Error::Truncated {
                what: "multiboot load area (load_addr..load_end_addr)",
                need: 0x4000,
                have: len,
            }
        };
        assert_eq!(err, expected, "len {len:#x}");
    }
    assert!(plan_multiboot(&image).is_ok());
}

#[test]
fn bad_checksum_is_reported_and_not_detected() {
    let mut image = small_aout_image();
    put_u32(&mut image, 0x1010, 0xe451_4ffd);
    assert_eq!(
        MultibootHeader::find(&image),
        Err(Error::BadChecksum {
            offset: 0x1008,
            flags: 0x0001_0002,
            checksum: 0xe451_4ffd,
        })
    );
    assert_eq!(
        plan_multiboot(&image),
        Err(Error::BadChecksum {
            offset: 0x1008,
            flags: 0x0001_0002,
            checksum: 0xe451_4ffd,
        })
    );
    assert_eq!(detect(&image), ImageKind::Unknown);
}

#[test]
fn a_bad_magic_before_a_good_header_is_skipped() {
    let mut image = small_aout_image();
    write_mb_header(&mut image, 0x100, 0x0001_0002, 0x1234_5678, None);
    let (off, h) = MultibootHeader::find(&image).unwrap().unwrap();
    assert_eq!((off, h.flags), (0x1008, 0x0001_0002));
}

#[test]
fn header_must_be_aligned_and_within_8192_bytes() {
    let mut image = vec![0u8; 0x3000];
    // Unaligned: ignored.
    write_mb_header(&mut image, 0x1006, 2, checksum(2), None);
    assert_eq!(MultibootHeader::find(&image), Ok(None));
    assert_eq!(plan_multiboot(&image), Err(Error::NoMultibootHeader));

    // Ending exactly at byte 8192: found.
    let mut image = vec![0u8; 0x3000];
    write_mb_header(&mut image, 8192 - 12, 2, checksum(2), None);
    assert_eq!(
        MultibootHeader::find(&image).unwrap().map(|(o, _)| o),
        Some(8180)
    );

    // Crossing byte 8192: not found.
    let mut image = vec![0u8; 0x3000];
    write_mb_header(&mut image, 8184, 2, checksum(2), None);
    assert_eq!(MultibootHeader::find(&image), Ok(None));
}

fn addr_err(aout: Aout) -> Error {
    plan_multiboot(&aout_image(0x4000, SMALL_FLAGS, aout)).unwrap_err()
}

#[test]
fn inconsistent_address_fields_are_rejected() {
    assert_eq!(
        addr_err(Aout {
            load_addr: 0x20_0010,
            ..SMALL_AOUT
        }),
        Error::HeaderAddrInvalid {
            reason: "header_addr is below load_addr",
            field: "header_addr",
            value: 0x20_0008,
        }
    );
    // The header would sit 0x2008 bytes into the load, but it is only at file
    // offset 0x1008: the load would start before the file.
    assert!(matches!(
        addr_err(Aout {
            header_addr: 0x20_2008,
            ..SMALL_AOUT
        }),
        Error::HeaderAddrInvalid {
            field: "header_addr",
            value: 0x20_2008,
            ..
        }
    ));
    assert_eq!(
        addr_err(Aout {
            load_end_addr: 0x1f_f000,
            ..SMALL_AOUT
        }),
        Error::HeaderAddrInvalid {
            reason: "load_end_addr is below load_addr",
            field: "load_end_addr",
            value: 0x1f_f000,
        }
    );
    assert_eq!(
        addr_err(Aout {
            bss_end_addr: 0x20_2fff,
            ..SMALL_AOUT
        }),
        Error::HeaderAddrInvalid {
            reason: "bss_end_addr is below the end of the loaded data",
            field: "bss_end_addr",
            value: 0x20_2fff,
        }
    );
    // load_end_addr one byte past the end of the file.
    assert_eq!(
        addr_err(Aout {
            load_end_addr: 0x20_3001,
            ..SMALL_AOUT
        }),
        Error::Truncated {
            what: "multiboot load area (load_addr..load_end_addr)",
            need: 0x4001,
            have: 0x4000,
        }
    );
    // Loading to the end of the file from 0xFFFFF000 crosses 4 GiB.
    assert!(matches!(
        addr_err(Aout {
            header_addr: 0xffff_f008,
            load_addr: 0xffff_f000,
            load_end_addr: 0,
            bss_end_addr: 0,
            entry_addr: 0xffff_f000,
        }),
        Error::HeaderAddrInvalid {
            field: "load_addr",
            value: 0xffff_f000,
            ..
        }
    ));
}

#[test]
fn required_flags_are_checked() {
    let plan_with = |flags| plan_multiboot(&aout_image(0x4000, flags, SMALL_AOUT));
    // Page-aligned modules, memory info: supported.
    assert!(plan_with(0x0001_0003).unwrap().page_align_modules());
    // Video mode (bit 2): ignored with a warning.
    assert_eq!(plan_with(0x0001_0006).unwrap().mb_flags, Some(0x0001_0006));
    // Bit 3 and bit 15 are required features nobody defined: refused.
    assert_eq!(
        plan_with(0x0001_800a),
        Err(Error::UnsupportedMultibootFlags {
            flags: 0x0001_800a,
            unsupported: 0x8008,
        })
    );
    // Unknown optional bits (17..=31) are ignored.
    assert!(plan_with(0x8003_0002).is_ok());
}

#[test]
fn without_address_fields_the_elf_headers_are_used() {
    // A classic higher-half ELF32 Multiboot kernel: linked at 0xC0100000,
    // loaded at 1 MiB, header at the start of .text.
    let mut text = data(0, 0x40);
    write_mb_header(&mut text, 0, 0x3, checksum(0x3), None);
    let segs = [
        Seg::load(0xC010_0000, 0x10_0000, text, 0x40),
        Seg::load(0xC010_1000, 0x10_1000, data(9, 0x10), 0x100),
    ];
    let (image, offsets) = elf(false, EM_386, 0xC010_0010, &segs);
    let plan = plan_multiboot(&image).unwrap();
    assert_eq!(
        plan,
        LoadPlan {
            segments: vec![
                Segment {
                    gpa: gpa(0x10_0000),
                    file_offset: offsets[0],
                    file_len: 0x40,
                    mem_len: 0x40,
                },
                Segment {
                    gpa: gpa(0x10_1000),
                    file_offset: offsets[1],
                    file_len: 0x10,
                    mem_len: 0x100,
                },
            ],
            entry: gpa(0x10_0010),
            mb_flags: Some(0x3),
        }
    );
    assert_eq!(detect(&image), ImageKind::Multiboot);
}

#[test]
fn without_address_fields_a_non_elf_is_refused() {
    let mut image = vec![0u8; 0x100];
    write_mb_header(&mut image, 0x10, 0x2, checksum(0x2), None);
    assert_eq!(plan_multiboot(&image), Err(Error::NotElf));
}

/// NimbOS' real file: an ELF64 whose PT_LOAD says p_vaddr = p_paddr =
/// 0xffffff80_00200000, with the a.out-kludge header at file offset 0x1008.
#[test]
fn nimbos_like_elf_is_loaded_by_its_address_fields_not_its_paddr() {
    let high = 0xffff_ff80_0020_0000;
    let mut text = data(0, 0x3000);
    write_mb_header(
        &mut text,
        8,
        SMALL_FLAGS,
        checksum(SMALL_FLAGS),
        Some(SMALL_AOUT),
    );
    let (image, offsets) = elf(
        true,
        EM_X86_64,
        high,
        &[Seg::load(high, high, text, 0x6000)],
    );
    assert_eq!(offsets, [0x1000]);
    assert_eq!(image.len(), 0x4000);

    let plan = plan_multiboot(&image).unwrap();
    assert_eq!(
        plan.segments,
        [Segment {
            gpa: gpa(0x20_0000),
            file_offset: 0x1000,
            file_len: 0x3000,
            mem_len: 0x6000,
        }]
    );
    assert_eq!(plan.entry, gpa(0x20_0000));
    let mut mem = poisoned_memory(0x80_0000);
    plan.apply(&image, &mut mem).unwrap();
    assert_eq!(read(&mem, 0x20_0000, 0x3000), &image[0x1000..0x4000]);

    // A plain ELF loader would follow p_paddr, which is not RAM.
    let elf_plan = plan_elf(&image).unwrap();
    assert_eq!(elf_plan.segments[0].gpa, gpa(high as usize));
    assert_eq!(elf_plan.entry, gpa(high as usize));
    let mut mem = poisoned_memory(0x80_0000);
    assert_eq!(
        elf_plan.apply(&image, &mut mem),
        Err(Error::SegmentOutsideMemory {
            gpa: gpa(high as usize),
            len: 0x6000,
        })
    );
}
