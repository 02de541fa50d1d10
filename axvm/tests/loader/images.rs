//! Hand-built guest images for the loader tests.

use axaddrspace::GuestPhysAddr;
use axvm::loader::{GuestMemory, VecGuestMemory};

pub const MB_MAGIC: u32 = 0x1BAD_B002;

pub fn gpa(a: usize) -> GuestPhysAddr {
    GuestPhysAddr::from_usize(a)
}

/// Recognisable filler: byte `i` of a file is `pattern(i)`.
pub fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7) ^ (i >> 8)) as u8 | 1
}

pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
pub fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
pub fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The checksum a correct header carries.
pub fn checksum(flags: u32) -> u32 {
    0u32.wrapping_sub(MB_MAGIC.wrapping_add(flags))
}

/// The a.out-kludge address fields of a header.
#[derive(Clone, Copy)]
pub struct Aout {
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

/// Writes a Multiboot header at `at`: magic, flags, checksum, and the
/// address fields if given.
pub fn write_mb_header(b: &mut [u8], at: usize, flags: u32, checksum: u32, aout: Option<Aout>) {
    put_u32(b, at, MB_MAGIC);
    put_u32(b, at + 4, flags);
    put_u32(b, at + 8, checksum);
    if let Some(a) = aout {
        for (i, v) in [
            a.header_addr,
            a.load_addr,
            a.load_end_addr,
            a.bss_end_addr,
            a.entry_addr,
        ]
        .into_iter()
        .enumerate()
        {
            put_u32(b, at + 12 + 4 * i, v);
        }
    }
}

/// NimbOS' layout, scaled down: `_start` at file offset 0x1000 (GPA
/// 0x200000), the header 8 bytes later, `0x3000` bytes of kernel, BSS up to
/// 0x206000.
pub const SMALL_FLAGS: u32 = 0x0001_0002;
pub const SMALL_AOUT: Aout = Aout {
    header_addr: 0x0020_0008,
    load_addr: 0x0020_0000,
    load_end_addr: 0x0020_3000,
    bss_end_addr: 0x0020_6000,
    entry_addr: 0x0020_0000,
};

/// A file of `len` pattern bytes with a header at 0x1008.
pub fn aout_image(len: usize, flags: u32, aout: Aout) -> Vec<u8> {
    let mut b: Vec<u8> = (0..len).map(pattern).collect();
    write_mb_header(&mut b, 0x1008, flags, checksum(flags), Some(aout));
    b
}

/// The scaled-down NimbOS-like image: 0x1000 bytes of prefix plus 0x3000
/// bytes of kernel.
pub fn small_aout_image() -> Vec<u8> {
    aout_image(0x4000, SMALL_FLAGS, SMALL_AOUT)
}

pub const EM_386: u16 = 3;
pub const EM_X86_64: u16 = 62;
pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;

/// A program header and its data, for the ELF writer.
#[derive(Clone)]
pub struct Seg {
    pub p_type: u32,
    pub vaddr: u64,
    pub paddr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
}

impl Seg {
    pub fn load(vaddr: u64, paddr: u64, data: Vec<u8>, memsz: u64) -> Self {
        Seg {
            p_type: PT_LOAD,
            vaddr,
            paddr,
            data,
            memsz,
        }
    }
}

/// A little-endian ELF executable (class 64 or 32): ELF header, program
/// headers right after it, and each segment's data at the next 0x1000
/// boundary, as linkers lay kernels out. Returns the file and each
/// segment's file offset.
pub fn elf(is64: bool, machine: u16, entry: u64, segs: &[Seg]) -> (Vec<u8>, Vec<usize>) {
    let (ehsize, phentsize) = if is64 { (64, 56) } else { (52, 32) };
    let mut offsets = Vec::new();
    let mut end = ehsize + phentsize * segs.len();
    for s in segs {
        let at = end.next_multiple_of(0x1000);
        offsets.push(at);
        end = at + s.data.len();
    }
    let mut b = vec![0u8; end];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = if is64 { 2 } else { 1 };
    b[5] = 1; // little-endian
    b[6] = 1; // EV_CURRENT
    put_u16(&mut b, 16, 2); // ET_EXEC
    put_u16(&mut b, 18, machine);
    put_u32(&mut b, 20, 1);
    if is64 {
        put_u64(&mut b, 24, entry);
        put_u64(&mut b, 32, ehsize as u64);
        put_u16(&mut b, 52, ehsize as u16);
        put_u16(&mut b, 54, phentsize as u16);
        put_u16(&mut b, 56, segs.len() as u16);
    } else {
        put_u32(&mut b, 24, entry as u32);
        put_u32(&mut b, 28, ehsize as u32);
        put_u16(&mut b, 40, ehsize as u16);
        put_u16(&mut b, 42, phentsize as u16);
        put_u16(&mut b, 44, segs.len() as u16);
    }
    for (i, (s, &off)) in segs.iter().zip(&offsets).enumerate() {
        let ph = ehsize + i * phentsize;
        if is64 {
            put_u32(&mut b, ph, s.p_type);
            put_u32(&mut b, ph + 4, 5);
            put_u64(&mut b, ph + 8, off as u64);
            put_u64(&mut b, ph + 16, s.vaddr);
            put_u64(&mut b, ph + 24, s.paddr);
            put_u64(&mut b, ph + 32, s.data.len() as u64);
            put_u64(&mut b, ph + 40, s.memsz);
            put_u64(&mut b, ph + 48, 0x1000);
        } else {
            put_u32(&mut b, ph, s.p_type);
            put_u32(&mut b, ph + 4, off as u32);
            put_u32(&mut b, ph + 8, s.vaddr as u32);
            put_u32(&mut b, ph + 12, s.paddr as u32);
            put_u32(&mut b, ph + 16, s.data.len() as u32);
            put_u32(&mut b, ph + 20, s.memsz as u32);
            put_u32(&mut b, ph + 24, 5);
            put_u32(&mut b, ph + 28, 0x1000);
        }
        b[off..off + s.data.len()].copy_from_slice(&s.data);
    }
    (b, offsets)
}

/// `n` pattern bytes starting from pattern index `seed`.
pub fn data(seed: usize, n: usize) -> Vec<u8> {
    (seed..seed + n).map(pattern).collect()
}

/// Guest memory of `len` bytes at GPA 0, every byte `0xAA` (so that zeroing
/// and untouched bytes can be told apart).
pub fn poisoned_memory(len: usize) -> VecGuestMemory {
    let mut m = VecGuestMemory::new().with_region(gpa(0), len).unwrap();
    m.fill(gpa(0), len, 0xAA).unwrap();
    m
}

pub fn read(mem: &impl GuestMemory, at: usize, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    mem.read(gpa(at), &mut b).unwrap();
    b
}
