//! The error type of the crate.

use alloc::{string::String, vec::Vec};
use core::fmt;

use axaddrspace::GuestPhysAddr;
use axvmconfig::ConfigError;

/// Everything that can go wrong in `axvm`.
///
/// Image-loading failures name the offending field or range so that a user
/// handing the hypervisor a broken kernel learns what is wrong with it.
/// Failures of the lower crates keep their own error as a variant
/// ([`AddrSpace`](Self::AddrSpace), [`Device`](Self::Device),
/// [`VCpu`](Self::VCpu)).
///
/// A guest's misbehaviour (a wild access, a triple fault) is *not* an
/// error: it stops that VM and is reported as a
/// [`VmExit`](crate::VmExit).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The guest physical address space (nested page table, guest memory
    /// access) failed.
    #[error("address space: {0}")]
    AddrSpace(#[from] axaddrspace::Error),
    /// The device model failed (overlapping devices, a device that cannot
    /// be built).
    #[error("device: {0}")]
    Device(#[from] axdevice::Error),
    /// A virtual local APIC could not be created.
    #[error("local APIC: {0}")]
    Lapic(#[from] x86_vlapic::Error),
    /// A vCPU operation failed (the architecture backend, or an operation
    /// the vCPU state machine refuses).
    #[error("vCPU: {0}")]
    VCpu(#[from] axvcpu::Error),
    /// The VM configuration is invalid, or asks for something this crate
    /// cannot build: every problem, each naming its field. Converted from
    /// [`axvmconfig::Error`] (whose problems it keeps).
    #[error("{}", Problems(.0))]
    Config(Vec<ConfigError>),
    /// The configuration asks for an emulated device that this crate does
    /// not emulate yet.
    #[error("devices.emulated[{index}]: device kind {kind} not emulated yet")]
    DeviceNotEmulated {
        /// Index of the device in `devices.emulated`.
        index: usize,
        /// Its kind.
        kind: axvmconfig::DeviceKind,
    },
    /// There is no vCPU with this id in the VM.
    #[error("VM has no vCPU {id}")]
    NoSuchVCpu {
        /// The id asked for.
        id: usize,
    },
    /// The VM is stopped; it cannot run again.
    #[error("VM {id} is stopped: {reason}")]
    Stopped {
        /// The VM's id.
        id: usize,
        /// Why it stopped.
        reason: String,
    },
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

/// The problems of a configuration, one per line.
struct Problems<'a>(&'a [ConfigError]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("invalid VM configuration");
        }
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl Error {
    /// A configuration problem at `field`.
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config(alloc::vec![ConfigError::new(field, reason)])
    }
}

impl From<axvmconfig::Error> for Error {
    /// Keeps the problems of a parse or validation error; any other
    /// configuration error (binary form, file access) becomes one problem
    /// carrying its message.
    fn from(e: axvmconfig::Error) -> Self {
        match e {
            axvmconfig::Error::Parse(p) => Self::Config(alloc::vec![p]),
            axvmconfig::Error::Invalid(list) => Self::Config(list),
            other => {
                use alloc::string::ToString;
                Self::config("", other.to_string())
            }
        }
    }
}

/// Result type of the crate.
pub type Result<T = ()> = core::result::Result<T, Error>;
