//! The Multiboot information structure, read back the way a kernel reads it
//! (offsets from the Multiboot 0.6.96 specification, section 3.3).

use axvm::Error;
use axvm::loader::{
    GuestMemory, MULTIBOOT_BOOTLOADER_MAGIC, MultibootInfo, MultibootInfoBuilder, VecGuestMemory,
};

use crate::images::*;

/// The NUL-terminated string at `at` in guest memory.
fn c_str(mem: &VecGuestMemory, at: u32) -> String {
    let mut s = Vec::new();
    for a in at as usize.. {
        let b = read(mem, a, 1)[0];
        if b == 0 {
            break;
        }
        s.push(b);
    }
    String::from_utf8(s).unwrap()
}

/// Walks the memory map as the specification tells a kernel to: each entry
/// starts with its `size`, the next one is `size + 4` bytes further.
fn walk_mmap(mem: &VecGuestMemory, addr: u32, len: u32) -> Vec<(u32, u64, u64, u32)> {
    let mut out = Vec::new();
    let mut at = addr as usize;
    while at < (addr + len) as usize {
        let e = read(mem, at, 24);
        out.push((
            get_u32(&e, 0),
            get_u64(&e, 4),
            get_u64(&e, 12),
            get_u32(&e, 20),
        ));
        at += get_u32(&e, 0) as usize + 4;
    }
    out
}

#[test]
fn full_info_structure_matches_the_spec_layout() {
    assert_eq!(MULTIBOOT_BOOTLOADER_MAGIC, 0x2BAD_B002);
    let info = MultibootInfoBuilder::new()
        .ram(gpa(0), 128 << 20)
        .reserved(gpa(0xA_0000), 0x6_0000)
        .cmdline("console=ttyS0 quiet")
        .boot_loader_name("axvm")
        .module(gpa(0x40_0000), 0x1234, "initrd.img")
        .page_align_modules(true)
        .build(gpa(0x9000))
        .unwrap();
    let mut mem = poisoned_memory(0x80_0000);
    let ebx = info.write_to(&mut mem).unwrap();
    assert_eq!(ebx, 0x9000);
    assert_eq!(info.gpa, gpa(0x9000));

    let s = read(&mem, 0x9000, 116);
    // flags: mem (0), cmdline (2), mods (3), mmap (6), boot_loader_name (9).
    assert_eq!(get_u32(&s, 0), 0b10_0100_1101);
    assert_eq!(info.flags, 0b10_0100_1101);
    assert_eq!(get_u32(&s, 4), 640, "mem_lower");
    assert_eq!(get_u32(&s, 8), 128 * 1024 - 1024, "mem_upper");
    assert_eq!(get_u32(&s, 12), 0, "boot_device");
    assert_eq!(c_str(&mem, get_u32(&s, 16)), "console=ttyS0 quiet");
    assert_eq!(get_u32(&s, 20), 1, "mods_count");
    let m = read(&mem, get_u32(&s, 24) as usize, 16);
    assert_eq!(get_u32(&m, 0), 0x40_0000, "mod_start");
    assert_eq!(get_u32(&m, 4), 0x40_1234, "mod_end");
    assert_eq!(c_str(&mem, get_u32(&m, 8)), "initrd.img");
    assert_eq!(get_u32(&m, 12), 0, "reserved");
    assert!(s[28..44].iter().all(|&b| b == 0), "syms");
    assert_eq!(get_u32(&s, 44), 3 * 24, "mmap_length");
    let mmap_addr = get_u32(&s, 48);
    assert_eq!(mmap_addr % 8, 0);
    assert_eq!(
        walk_mmap(&mem, mmap_addr, get_u32(&s, 44)),
        [
            (20, 0, 0xA_0000, 1),
            (20, 0xA_0000, 0x6_0000, 2),
            (20, 0x10_0000, (128 << 20) - 0x10_0000, 1),
        ]
    );
    assert!(s[52..64].iter().all(|&b| b == 0), "drives, config_table");
    assert_eq!(c_str(&mem, get_u32(&s, 64)), "axvm");
    assert!(s[68..116].iter().all(|&b| b == 0), "apm, vbe, framebuffer");

    // Everything lies in the area written, right after the structure.
    let end = 0x9000 + info.bytes.len() as u32;
    for p in [get_u32(&s, 16), get_u32(&s, 24), mmap_addr, get_u32(&s, 64)] {
        assert!((0x9000 + 116..end).contains(&p), "{p:#x}");
    }
    assert_eq!(read(&mem, end as usize, 1), [0xAA]);
    assert_eq!(read(&mem, 0x8fff, 1), [0xAA]);
}

#[test]
fn minimal_info_sets_only_what_it_has() {
    let info = MultibootInfoBuilder::new()
        .ram(gpa(0), 16 << 20)
        .build(gpa(0x1_0000))
        .unwrap();
    let s = &info.bytes;
    assert_eq!(
        get_u32(s, 0),
        MultibootInfo::FLAG_MEM | MultibootInfo::FLAG_MMAP
    );
    assert_eq!(get_u32(s, 0), 0x41);
    assert_eq!((get_u32(s, 4), get_u32(s, 8)), (640, 15 * 1024));
    assert_eq!(get_u32(s, 16), 0);
    assert_eq!((get_u32(s, 20), get_u32(s, 24)), (0, 0));
    assert_eq!(get_u32(s, 44), 24);
    assert_eq!(get_u32(s, 64), 0);

    // Nothing at all: only the (zero) memory sizes.
    let info = MultibootInfoBuilder::new().build(gpa(0x1000)).unwrap();
    assert_eq!(info.flags, 1);
    assert_eq!(info.bytes.len(), 120);
    assert!(info.bytes[4..].iter().all(|&b| b == 0));
}

#[test]
fn unaligned_info_address_keeps_tables_aligned() {
    let info = MultibootInfoBuilder::new()
        .ram(gpa(0), 1 << 20)
        .module(gpa(0x8_0000), 0x10, "m")
        .build(gpa(0x9004))
        .unwrap();
    assert_eq!(get_u32(&info.bytes, 48) % 8, 0, "mmap_addr");
    assert_eq!(get_u32(&info.bytes, 24) % 8, 0, "mods_addr");
    assert_eq!(info.ebx(), 0x9004);
}

#[test]
fn bad_info_requests_are_typed_errors() {
    let b = || MultibootInfoBuilder::new().ram(gpa(0), 16 << 20);
    // 116 bytes at 4 GiB - 0x40 cross 4 GiB.
    assert!(matches!(
        b().build(gpa(0xFFFF_FFC0)),
        Err(Error::AddressAbove4GiB { .. })
    ));
    // mod_end is exclusive and 32 bits wide: a module may end at 0xFFFFFFFF
    // but not at 4 GiB.
    assert_eq!(
        b().module(gpa(0xFFFF_F000), 0x1000, "x").build(gpa(0x9000)),
        Err(Error::AddressAbove4GiB {
            what: "module end",
            addr: 0x1_0000_0000,
        })
    );
    let info = b()
        .module(gpa(0xFFFF_F000), 0xFFF, "x")
        .build(gpa(0x9000))
        .unwrap();
    let mods = get_u32(&info.bytes, 24) as usize - 0x9000;
    assert_eq!(get_u32(&info.bytes, mods + 4), 0xFFFF_FFFF);
    assert_eq!(
        b().module(gpa(0x40_0800), 0x10, "x")
            .page_align_modules(true)
            .build(gpa(0x9000)),
        Err(Error::ModuleNotPageAligned {
            start: gpa(0x40_0800)
        })
    );
    assert!(
        b().module(gpa(0x40_0800), 0x10, "x")
            .build(gpa(0x9000))
            .is_ok()
    );
    assert_eq!(
        b().cmdline("a\0b").build(gpa(0x9000)),
        Err(Error::InvalidString {
            what: "kernel command line"
        })
    );
    assert_eq!(
        b().module(gpa(0x40_0000), 1, "\0").build(gpa(0x9000)),
        Err(Error::InvalidString {
            what: "module string"
        })
    );
}

#[test]
fn info_outside_guest_memory_writes_nothing() {
    let info = MultibootInfoBuilder::new()
        .ram(gpa(0), 0x1_0000)
        .cmdline("x")
        .build(gpa(0xFFC0))
        .unwrap();
    let mut mem = poisoned_memory(0x1_0000);
    assert_eq!(
        info.write_to(&mut mem),
        Err(Error::OutsideGuestMemory {
            gpa: gpa(0xFFC0),
            len: info.bytes.len(),
        })
    );
    assert!(mem.contains(gpa(0xFFC0), 0x40));
    assert_eq!(read(&mem, 0xFFC0, 0x40), vec![0xAA; 0x40]);
}
