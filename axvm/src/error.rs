//! The error type of the crate.

use axaddrspace::GuestPhysAddr;

/// Everything that can go wrong in `axvm`.
///
/// Image-loading failures name the offending field or range so that a user
/// handing the hypervisor a broken kernel learns what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No Multiboot v1 header (magic `0x1BADB002` with a valid checksum) in
    /// the first 8192 bytes of the image.
    #[error("no multiboot header (magic 0x1BADB002) in the first 8192 bytes of the image")]
    NoMultibootHeader,
    /// A Multiboot magic was found but `magic + flags + checksum != 0`, and no
    /// other header with a valid checksum follows it.
    #[error(
        "multiboot header at file offset {offset:#x} has a bad checksum \
         (0x1BADB002 + flags {flags:#010x} + checksum {checksum:#010x} != 0 mod 2^32)"
    )]
    BadChecksum {
        /// File offset of the magic.
        offset: usize,
        /// The header's `flags` field.
        flags: u32,
        /// The header's `checksum` field.
        checksum: u32,
    },
    /// The image ends before a structure it announces.
    #[error("image truncated: {what} needs {need} bytes of image, it has {have}")]
    Truncated {
        /// The structure that does not fit.
        what: &'static str,
        /// Image length needed to hold it.
        need: usize,
        /// Actual image length.
        have: usize,
    },
    /// The a.out-kludge address fields of a Multiboot header contradict each
    /// other or the file.
    #[error("multiboot header address fields invalid: {reason} ({field} = {value:#x})")]
    HeaderAddrInvalid {
        /// What is inconsistent.
        reason: &'static str,
        /// Name of the offending header field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
    /// The Multiboot header requires features (flags bits 0..=15) that this
    /// loader does not provide.
    #[error(
        "multiboot header flags {flags:#010x} require unsupported features (bits {unsupported:#06x})"
    )]
    UnsupportedMultibootFlags {
        /// The header's `flags` field.
        flags: u32,
        /// The required bits this loader does not know.
        unsupported: u32,
    },
    /// The image is not an ELF file (bad `\x7fELF` magic or class).
    #[error("not an ELF image (no \\x7fELF magic with class ELF32 or ELF64)")]
    NotElf,
    /// The ELF file is malformed or of a kind the loader does not take.
    #[error("bad ELF image: {0}")]
    BadElf(&'static str),
    /// The image has nothing to load.
    #[error("image has no loadable segment")]
    NoLoadSegments,
    /// A segment of a load plan does not lie inside guest memory; nothing was
    /// written.
    #[error("segment {gpa:?}..+{len:#x} lies outside guest memory (nothing was loaded)")]
    SegmentOutsideMemory {
        /// Start of the segment.
        gpa: GuestPhysAddr,
        /// Length of the segment in memory.
        len: usize,
    },
    /// A guest memory access touched an address that is not guest RAM.
    #[error("guest memory access {gpa:?}..+{len:#x} is outside guest memory")]
    OutsideGuestMemory {
        /// Start of the access.
        gpa: GuestPhysAddr,
        /// Length of the access.
        len: usize,
    },
    /// A memory region given as an argument is unusable.
    #[error("invalid region {gpa:?}..+{len:#x}: {reason}")]
    InvalidRegion {
        /// Start of the region.
        gpa: GuestPhysAddr,
        /// Length of the region.
        len: usize,
        /// Why it is unusable.
        reason: &'static str,
    },
    /// A value that a 32-bit boot protocol structure must hold is at or above
    /// 4 GiB.
    #[error("{what} at {addr:#x} is not below 4 GiB, as the 32-bit boot protocol needs")]
    AddressAbove4GiB {
        /// What the address is.
        what: &'static str,
        /// The address (or end address) that does not fit.
        addr: u64,
    },
    /// A string handed to the guest contains a NUL byte.
    #[error("{what} contains a NUL byte")]
    InvalidString {
        /// Which string.
        what: &'static str,
    },
    /// The kernel asked for page-aligned modules (Multiboot flag bit 0) and a
    /// module does not start on a 4 KiB boundary.
    #[error("module at {start:?} is not 4 KiB aligned, as the kernel requires")]
    ModuleNotPageAligned {
        /// Start of the module.
        start: GuestPhysAddr,
    },
    /// A feature this crate does not implement yet.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

/// Result type of the crate.
pub type Result<T = ()> = core::result::Result<T, Error>;
