//! The crate's error type.

use alloc::string::String;
use core::fmt;

use axaddrspace::AccessWidth;

/// The three address spaces a device can live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// Guest physical memory (memory-mapped I/O).
    Mmio,
    /// The x86 I/O port space (`in`/`out`).
    Port,
    /// Model-specific registers (`rdmsr`/`wrmsr`).
    Msr,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mmio => "MMIO",
            Self::Port => "port",
            Self::Msr => "MSR",
        })
    }
}

/// An inclusive address span `first..=last`, as reported in errors.
///
/// Inclusive so that a range ending at the very top of an address space
/// (`u64::MAX`, port `0xffff`, MSR `0xffff_ffff`) is representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    /// First address of the span.
    pub first: u64,
    /// Last address of the span (inclusive).
    pub last: u64,
}

impl Span {
    /// Whether `self` and `other` share at least one address.
    pub const fn overlaps(&self, other: &Span) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// Whether `addr` lies in the span.
    pub const fn contains(&self, addr: u64) -> bool {
        self.first <= addr && addr <= self.last
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..={:#x}", self.first, self.last)
    }
}

/// Everything that can go wrong in the device model.
///
/// Errors caused by the guest (an access nobody claims, a bad width or
/// offset) are reported, never panicked on: the caller (the VM) decides what
/// the guest sees, e.g. all-ones for an unclaimed port read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A device's range overlaps the range of a device already registered
    /// in the same address space.
    #[error(
        "{kind} range {new} of device `{new_dev}` overlaps {existing} of device `{existing_dev}`"
    )]
    Overlap {
        /// Address space of both devices.
        kind: DeviceKind,
        /// Name of the device being added.
        new_dev: String,
        /// Range of the device being added.
        new: Span,
        /// Name of the device already registered.
        existing_dev: String,
        /// Range of the device already registered.
        existing: Span,
    },
    /// A device declared a range of zero length.
    #[error("{kind} range of device `{dev}` is empty")]
    EmptyRange {
        /// Address space of the device.
        kind: DeviceKind,
        /// Name of the device.
        dev: String,
    },
    /// A device declared a range running past the end of its address space.
    #[error(
        "{kind} range of device `{dev}` starting at {start:#x} with length {len:#x} runs past the end of the address space"
    )]
    RangeOverflow {
        /// Address space of the device.
        kind: DeviceKind,
        /// Name of the device.
        dev: String,
        /// First address of the range.
        start: u64,
        /// Declared length of the range.
        len: u64,
    },
    /// No device claims the accessed address. Not a hypervisor failure: the
    /// caller decides what the guest sees.
    #[error("no {kind} device claims address {addr:#x}")]
    Unclaimed {
        /// Address space of the access.
        kind: DeviceKind,
        /// Accessed address (GPA, port number or MSR index).
        addr: u64,
    },
    /// An access starts inside a device's range but runs past its end.
    #[error(
        "{kind} access of {width} byte(s) at {addr:#x} crosses the end of device `{dev}` ({range})"
    )]
    CrossesEnd {
        /// Address space of the access.
        kind: DeviceKind,
        /// Name of the device whose range the access starts in.
        dev: String,
        /// Accessed address.
        addr: u64,
        /// Access width in bytes.
        width: usize,
        /// Range of the device.
        range: Span,
    },
    /// A device does not support an access of this width at this offset.
    #[error("device `{dev}` does not support a {width:?} access at offset {offset:#x}")]
    BadWidth {
        /// Name of the device.
        dev: String,
        /// Offset of the access inside the device's range.
        offset: u64,
        /// Width of the access.
        width: AccessWidth,
    },
    /// A device has no register at this offset.
    #[error("device `{dev}` has no register at offset {offset:#x}")]
    BadOffset {
        /// Name of the device.
        dev: String,
        /// Offset of the access inside the device's range.
        offset: u64,
    },
    /// A device does not implement a feature the access needs.
    #[error("device `{dev}` does not support {what}")]
    Unsupported {
        /// Name of the device.
        dev: String,
        /// What is missing.
        what: &'static str,
    },
    /// A device failed for a reason of its own.
    #[error("device `{dev}` failed: {reason}")]
    Device {
        /// Name of the device.
        dev: String,
        /// Why it failed.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T = ()> = core::result::Result<T, Error>;
