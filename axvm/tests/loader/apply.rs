//! `LoadPlan::apply`, raw binaries and format detection.

use axvm::Error;
use axvm::loader::{
    GuestMemory, ImageKind, LoadPlan, Segment, VecGuestMemory, detect, plan, plan_raw,
};

use crate::images::*;

#[test]
fn apply_refuses_a_segment_outside_memory_and_writes_nothing() {
    let image = data(0, 0x2000);
    let plan = LoadPlan {
        segments: vec![
            Segment {
                gpa: gpa(0x1000),
                file_offset: 0,
                file_len: 0x1000,
                mem_len: 0x1000,
            },
            // Ends one byte past the 1 MiB of RAM.
            Segment {
                gpa: gpa(0xf_f000),
                file_offset: 0x1000,
                file_len: 0x800,
                mem_len: 0x1001,
            },
        ],
        entry: gpa(0x1000),
        mb_flags: None,
    };
    let mut mem = poisoned_memory(0x10_0000);
    assert_eq!(
        plan.apply(&image, &mut mem),
        Err(Error::SegmentOutsideMemory {
            gpa: gpa(0xf_f000),
            len: 0x1001,
        })
    );
    // The first segment, although valid, was not written.
    assert_eq!(read(&mem, 0x1000, 0x1000), vec![0xAA; 0x1000]);
    assert_eq!(read(&mem, 0xf_f000, 0x1000), vec![0xAA; 0x1000]);
}

#[test]
fn apply_spans_adjacent_regions_but_not_holes() {
    let image = small_aout_image();
    let plan = axvm::loader::plan_multiboot(&image).unwrap();
    // 0x200000..0x206000 split over two adjacent regions.
    let mut mem = VecGuestMemory::new()
        .with_region(gpa(0x20_4000), 0x10_0000)
        .unwrap()
        .with_region(gpa(0), 0x20_4000)
        .unwrap();
    plan.apply(&image, &mut mem).unwrap();
    assert_eq!(read(&mem, 0x20_0000, 0x3000), &image[0x1000..]);

    // Same, with a one-page hole at 0x205000.
    let mut mem = VecGuestMemory::new()
        .with_region(gpa(0), 0x20_5000)
        .unwrap()
        .with_region(gpa(0x20_6000), 0x1000)
        .unwrap();
    assert_eq!(
        plan.apply(&image, &mut mem),
        Err(Error::SegmentOutsideMemory {
            gpa: gpa(0x20_0000),
            len: 0x6000,
        })
    );
}

#[test]
fn apply_checks_the_plan_against_the_image() {
    let image = small_aout_image();
    let plan = axvm::loader::plan_multiboot(&image).unwrap();
    let mut mem = poisoned_memory(0x40_0000);
    assert_eq!(
        plan.apply(&image[..0x3fff], &mut mem),
        Err(Error::Truncated {
            what: "load segment file data",
            need: 0x4000,
            have: 0x3fff,
        })
    );
    let mut bad = plan.clone();
    bad.segments[0].mem_len = 0x2fff;
    assert!(matches!(
        bad.apply(&image, &mut mem),
        Err(Error::InvalidRegion { len: 0x2fff, .. })
    ));
    let mut wrap = plan.clone();
    wrap.segments[0].gpa = gpa(usize::MAX - 0x1000);
    assert!(matches!(
        wrap.apply(&image, &mut mem),
        Err(Error::InvalidRegion { .. })
    ));
    assert_eq!(read(&mem, 0x20_0000, 0x10), [0xAA; 0x10]);
}

#[test]
fn raw_binary_is_loaded_whole() {
    let image = data(5, 0x1234);
    let p = plan_raw(&image, gpa(0x7c00), gpa(0x7c10)).unwrap();
    assert_eq!(
        p,
        LoadPlan {
            segments: vec![Segment {
                gpa: gpa(0x7c00),
                file_offset: 0,
                file_len: 0x1234,
                mem_len: 0x1234,
            }],
            entry: gpa(0x7c10),
            mb_flags: None,
        }
    );
    let mut mem = poisoned_memory(0x10_0000);
    p.apply(&image, &mut mem).unwrap();
    assert_eq!(read(&mem, 0x7c00, 0x1234), image);
    assert_eq!(read(&mem, 0x7c00 + 0x1234, 1), [0xAA]);

    assert_eq!(plan_raw(&[], gpa(0), gpa(0)), Err(Error::NoLoadSegments));
    assert!(matches!(
        plan_raw(&image, gpa(usize::MAX - 0x100), gpa(0)),
        Err(Error::InvalidRegion { len: 0x1234, .. })
    ));
}

/// The start of a Linux x86 boot image: the boot sector signature and the
/// setup header magic.
fn bzimage() -> Vec<u8> {
    let mut b = vec![0u8; 0x400];
    b[510] = 0x55;
    b[511] = 0xAA;
    b[0x202..0x206].copy_from_slice(b"HdrS");
    put_u16(&mut b, 0x206, 0x020f); // boot protocol 2.15
    b
}

#[test]
fn bzimage_is_detected_but_not_planned_yet() {
    let image = bzimage();
    assert_eq!(detect(&image), ImageKind::LinuxBzImage);
    assert_eq!(
        plan(&image),
        Err(Error::Unsupported(
            "Linux bzImage boot (boot_params/e820) not implemented yet"
        ))
    );
    let mut no_hdrs = image.clone();
    no_hdrs[0x205] = b'T';
    assert_eq!(detect(&no_hdrs), ImageKind::Unknown);
    let mut no_sig = image.clone();
    no_sig[511] = 0;
    assert_eq!(detect(&no_sig), ImageKind::Unknown);
    assert_eq!(detect(&image[..0x205]), ImageKind::Unknown);
}

#[test]
fn unknown_images_need_plan_raw() {
    for image in [&[][..], &[0x7f, b'E', b'L'][..], &data(0, 0x100)[..]] {
        assert_eq!(detect(image), ImageKind::Unknown);
        assert!(matches!(plan(image), Err(Error::Unsupported(_))));
    }
    assert_eq!(detect(&small_aout_image()), ImageKind::Multiboot);
}

#[test]
fn guest_memory_is_object_safe() {
    let mut mem = poisoned_memory(0x1000);
    let dyn_mem: &mut dyn GuestMemory = &mut mem;
    plan_raw(&[1, 2, 3], gpa(0x10), gpa(0x10))
        .unwrap()
        .apply(&[1, 2, 3], dyn_mem)
        .unwrap();
    assert_eq!(read(&mem, 0xf, 5), [0xAA, 1, 2, 3, 0xAA]);
}
