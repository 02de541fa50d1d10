//! The error type of this crate.

use core::fmt;

use crate::{GuestPhysAddr, GuestVirtAddr, MappingFlags};

/// Why a walk of the guest's own page tables failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageFaultReason {
    /// An entry on the walk has its present bit (bit 0) clear.
    NotPresent,
    /// An entry on the walk has a reserved bit set (the hardware reports
    /// such a fault with the RSVD bit, bit 3, of the error code).
    ReservedBit,
    /// The translation exists but does not allow the access (write to a
    /// read-only page, user access to a supervisor page, fetch from an NX
    /// page).
    Protection,
}

impl fmt::Display for PageFaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotPresent => "not present",
            Self::ReservedBit => "reserved bit",
            Self::Protection => "protection violation",
        })
    }
}

/// Errors of the address space, the nested page table and the guest walk.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Error {
    /// The host frame allocator has no free frame.
    #[error("out of memory: no free host frame")]
    NoMemory,
    /// A mapping (or a memory area) already covers `gpa`.
    #[error("{gpa:?} is already mapped")]
    AlreadyMapped {
        /// First guest physical address found mapped.
        gpa: GuestPhysAddr,
    },
    /// Nothing is mapped at `gpa`.
    #[error("{gpa:?} is not mapped")]
    NotMapped {
        /// The guest physical address that has no mapping.
        gpa: GuestPhysAddr,
    },
    /// An address or size is not aligned as required.
    #[error("{addr:#x} is not aligned to {align:#x}")]
    Misaligned {
        /// The offending address or size.
        addr: usize,
        /// The required alignment, in bytes.
        align: usize,
    },
    /// `gpa` lies outside the guest physical address space (or above the
    /// 48 bits a 4-level nested page table translates).
    #[error("{gpa:?} is outside the guest physical address space")]
    OutOfRange {
        /// The guest physical address out of range.
        gpa: GuestPhysAddr,
    },
    /// Mapping flags the entry format cannot express (no access at all, write
    /// without read, or execute-only on AMD NPT).
    #[error("invalid mapping flags {0:?}")]
    InvalidFlags(MappingFlags),
    /// An argument is invalid (empty range, overflow, ...).
    #[error("invalid argument: {0}")]
    InvalidInput(&'static str),
    /// A linear address that is not canonical in 4-level paging (bits 63:47
    /// not all equal): the hardware raises #GP, not #PF.
    #[error("{gva:?} is not canonical")]
    NonCanonical {
        /// The non-canonical guest virtual address.
        gva: GuestVirtAddr,
    },
    /// The walk of the guest's own page tables failed: the guest would take a
    /// page fault (#PF, vector 14) with `error_code` and CR2 = `gva`.
    #[error("guest page fault at {gva:?} (level {level}): {reason}")]
    GuestPageFault {
        /// The guest virtual address being translated.
        gva: GuestVirtAddr,
        /// Paging-structure level of the faulting entry: 4 = PML4E,
        /// 3 = PDPTE, 2 = PDE, 1 = PTE.
        level: u8,
        /// What was wrong with the entry.
        reason: PageFaultReason,
        /// The x86 page-fault error code the guest should receive
        /// (bit 0 P, bit 1 W/R, bit 2 U/S, bit 3 RSVD, bit 4 I/D).
        error_code: u32,
    },
    /// A feature that is not implemented.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

/// The result type of this crate.
pub type Result<T = ()> = core::result::Result<T, Error>;
