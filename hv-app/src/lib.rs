//! Host-testable logic of the hv-app hypervisor binary.
#![cfg_attr(not(test), no_std)]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

extern crate alloc;

/// `assert_eq!` for values holding an [`Error`], which has no `PartialEq`
/// (it wraps errors of other crates that have none): compares the `Debug`
/// forms, which spell out every variant and field.
#[cfg(test)]
macro_rules! assert_res_eq {
    ($left:expr, $right:expr $(,)?) => {
        // `match` keeps temporaries alive, as `assert_eq!` does; the array
        // makes both sides one type (which also drives inference).
        match (&$left, &$right) {
            (left, right) => {
                let _same_type = [left, right];
                assert_eq!(std::format!("{left:?}"), std::format!("{right:?}"))
            }
        }
    };
}

pub mod acpi;
pub mod apic;
pub mod cmdline;
pub mod descriptor;
pub mod exception;
pub mod frame;
pub mod guest_console;
pub mod heap;
pub mod hypercall;
pub mod logfmt;
pub mod memory;
pub mod multiboot;
pub mod paging;
pub mod percpu;
pub mod port;
pub mod root_vmx;
pub mod smp_plan;
pub mod timing;
pub mod uart16550;
pub mod vm_end;
pub mod vm_modules;

/// Errors of the hv-app logic.
///
/// Errors of the crates hv-app composes keep their own type as a variant
/// ([`Error::VmConfig`], [`Error::Vm`], [`Error::AddrSpace`],
/// [`Error::VCpu`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The loader's EAX is not the Multiboot v1 loader magic `0x2BADB002`.
    #[error("bad multiboot loader magic {0:#x} (expected 0x2badb002)")]
    BadMagic(u32),
    /// A physical range the boot information points to cannot be read.
    #[error("physical range {addr:#x} (+{len:#x} bytes) is not readable")]
    OutOfBounds {
        /// First address of the range.
        addr: u64,
        /// Length of the range in bytes.
        len: u64,
    },
    /// A memory map entry is smaller than 20 bytes or runs past the map.
    #[error("bad multiboot memory map entry at {addr:#x} (size field {size})")]
    BadMemoryMapEntry {
        /// Physical address of the entry's `size` field.
        addr: u64,
        /// Its `size` field.
        size: u32,
    },
    /// A memory map entry's `base + length` overflows 64 bits.
    #[error("memory region {base:#x} + {length:#x} overflows 64 bits")]
    RegionOverflow {
        /// Base address of the entry.
        base: u64,
        /// Length of the entry.
        length: u64,
    },
    /// The memory map is longer than [`multiboot::MAX_MMAP_LENGTH`].
    #[error("multiboot memory map of {0} bytes is too long")]
    MemoryMapTooLong(u32),
    /// More modules than [`multiboot::MAX_MODULES`].
    #[error("{0} multiboot modules are too many")]
    TooManyModules(u32),
    /// A module ends before it starts.
    #[error("multiboot module {index} ends ({end:#x}) before it starts ({start:#x})")]
    BadModule {
        /// Index of the module.
        index: u32,
        /// Its `mod_start`.
        start: u32,
        /// Its `mod_end`.
        end: u32,
    },
    /// No NUL within the buffer given for a string.
    #[error("string at {addr:#x} is longer than {max} bytes")]
    StringTooLong {
        /// Physical address of the string.
        addr: u64,
        /// Buffer length, the most bytes accepted including the NUL.
        max: usize,
    },
    /// A string is not UTF-8.
    #[error("string at {addr:#x} is not UTF-8")]
    InvalidUtf8 {
        /// Physical address of the string.
        addr: u64,
    },
    /// No valid Multiboot header in the first 8 KiB of an image.
    #[error("no multiboot header in the first 8 KiB")]
    HeaderNotFound,
    /// A Multiboot header's address fields are inconsistent.
    #[error("bad multiboot header: {0}")]
    BadHeader(&'static str),
    /// A UART baud rate that no 16-bit divisor of 115200 gives exactly.
    #[error("baud rate {0} is not 115200 divided by an integer in 1..=65535")]
    InvalidBaudRate(u32),
    /// A descriptor or gate argument out of range (IST index, DPL, size).
    #[error("invalid descriptor: {0}")]
    InvalidGate(&'static str),
    /// A physical range whose end is before its start (or overflows).
    #[error("bad physical range [{start:#x}, {end:#x})")]
    BadRange {
        /// First address.
        start: u64,
        /// End address.
        end: u64,
    },
    /// An alignment that is not a power of two.
    #[error("alignment {0:#x} is not a power of two")]
    BadAlignment(u64),
    /// A fixed-capacity range set is full.
    #[error("more than {capacity} physical ranges")]
    TooManyRanges {
        /// The set's capacity.
        capacity: usize,
    },
    /// No free memory of the requested size.
    #[error("out of memory for {bytes:#x} bytes")]
    OutOfMemory {
        /// Bytes requested.
        bytes: u64,
    },
    /// The frame allocator's bitmap is shorter than its span needs.
    #[error("frame bitmap of {given} words is too small ({needed} needed)")]
    BitmapTooSmall {
        /// Words needed.
        needed: usize,
        /// Words given.
        given: usize,
    },
    /// A frame address that is not 4 KiB aligned.
    #[error("frame address {0:#x} is not 4 KiB aligned")]
    MisalignedFrame(u64),
    /// Frames to free that are not within one usable range.
    #[error("{count} frames at {addr:#x} are not managed by the frame allocator")]
    FrameOutOfRange {
        /// First address.
        addr: u64,
        /// Number of frames.
        count: usize,
    },
    /// A frame to free is free already (a double free).
    #[error("frame {0:#x} is not allocated")]
    FrameNotAllocated(u64),
    /// [`heap::Heap::init`] called twice.
    #[error("the heap is initialized already")]
    HeapAlreadyInitialized,
    /// A heap region too small for one block.
    #[error("a heap region of {size} bytes holds no block")]
    HeapTooSmall {
        /// The region's size.
        size: usize,
    },
    /// A heap free of a block that is not allocated (outside the heap,
    /// misaligned, or free already).
    #[error("bad heap free at {addr:#x}")]
    BadFree {
        /// The block's address.
        addr: usize,
    },
    /// `crash=` names no [`cmdline::CrashTest`].
    #[error("unknown crash= test (expected de, bp, ud, gp, pf or df)")]
    UnknownCrashTest,
    /// A boot module tagged as a VM part has no partner
    /// (see [`vm_modules::pair_vm_modules`]).
    #[error("boot module {index} {problem}")]
    UnpairedVmModule {
        /// Index of the module in the loader's list.
        index: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A VM configuration module cannot be decoded or is invalid.
    #[error("VM configuration: {0}")]
    VmConfig(#[from] axvmconfig::Error),
    /// A VM cannot be built (image, devices, vCPUs) or run.
    #[error("VM: {0}")]
    Vm(#[from] axvm::Error),
    /// The guest physical address space failed.
    #[error("guest address space: {0}")]
    AddrSpace(#[from] axaddrspace::Error),
    /// Virtualization or a vCPU operation failed.
    #[error("vCPU: {0}")]
    VCpu(#[from] axvcpu::Error),
    /// A VMX capability check or control computation of `x86_vcpu` failed.
    #[error("VMX: {0}")]
    Vmx(#[from] x86_vcpu::Error),
    /// No ACPI structure of this name (`RSDP`, `MADT`) was found.
    #[error("ACPI {0} not found")]
    AcpiNotFound(&'static str),
    /// An ACPI table (or the RSDP) fails a check.
    #[error("ACPI {table} at {addr:#x}: {problem}")]
    BadAcpiTable {
        /// The table: `RSDP`, `RSDT`, `XSDT` or `MADT`.
        table: &'static str,
        /// Its physical address.
        addr: u64,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A page a STARTUP IPI cannot start a CPU at (not 4 KiB aligned, or
    /// outside `0x1000..0xA0000`).
    #[error("page {0:#x} cannot be a STARTUP IPI start page")]
    BadStartPage(u64),
    /// A configuration asks for something hv-app cannot do yet.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

/// Result type of the hv-app logic.
pub type Result<T = ()> = core::result::Result<T, Error>;
