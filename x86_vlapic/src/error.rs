//! The crate's error type.

use crate::regs::ApicRegister;

/// Everything that can go wrong in an access to the virtual local APIC.
///
/// Most variants describe a guest access that real hardware refuses. How the
/// VM answers depends on the interface the guest used:
///
/// - x2APIC MSR access (`RDMSR`/`WRMSR`) and `IA32_APIC_BASE`: the processor
///   raises `#GP(0)`; the VM should inject it.
/// - xAPIC MMIO access: the processor ignores the write or returns 0 for the
///   read; the VM should do the same (an access to a reserved offset has
///   already been logged in ESR bit 7 by this crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No register at this offset of the xAPIC page.
    #[error("no local APIC register at xAPIC offset {offset:#x}")]
    BadOffset {
        /// Offset of the access within the 4 KiB APIC page.
        offset: u32,
    },
    /// No x2APIC register at this MSR (or the MSR is not an APIC MSR at all).
    #[error("no local APIC register at MSR {msr:#x}")]
    BadMsr {
        /// The MSR index.
        msr: u32,
    },
    /// xAPIC registers only take aligned 32-bit loads and stores.
    #[error(
        "{size}-byte access at xAPIC offset {offset:#x}: only aligned 32-bit accesses are allowed"
    )]
    BadWidth {
        /// Offset of the access within the 4 KiB APIC page.
        offset: u32,
        /// Size of the access in bytes.
        size: usize,
    },
    /// A write to a read-only register.
    #[error("write to read-only APIC register {reg:?}")]
    ReadOnly {
        /// The register.
        reg: ApicRegister,
    },
    /// A read of a write-only register (EOI, SELF IPI).
    #[error("read of write-only APIC register {reg:?}")]
    WriteOnly {
        /// The register.
        reg: ApicRegister,
    },
    /// A write that sets reserved bits (x2APIC mode checks them, SDM 11.12.1.3)
    /// or a reserved encoding (timer mode 11b).
    #[error("reserved bits set in value {value:#x} written to APIC register {reg:?}")]
    ReservedBits {
        /// The register.
        reg: ApicRegister,
        /// The value written.
        value: u64,
    },
    /// An ICR write with a reserved delivery mode (011b or 111b).
    #[error("reserved delivery mode {mode:#05b} in ICR")]
    ReservedDeliveryMode {
        /// Bits 10:8 of the ICR.
        mode: u8,
    },
    /// An x2APIC MSR access while the local APIC is not in x2APIC mode.
    #[error("x2APIC MSR access while the local APIC is not in x2APIC mode")]
    NotInX2ApicMode,
    /// An xAPIC MMIO access while the local APIC is not in xAPIC mode.
    #[error("xAPIC MMIO access while the local APIC is not in xAPIC mode")]
    NotInXApicMode,
    /// A write to `IA32_APIC_BASE` that sets reserved bits.
    #[error("reserved bits set in IA32_APIC_BASE value {value:#x}")]
    ApicBaseReservedBits {
        /// The value written.
        value: u64,
    },
    /// A write to `IA32_APIC_BASE` asking for a mode transition that the
    /// SDM (11.12.5) forbids.
    #[error("invalid IA32_APIC_BASE transition from {from:#x} to {to:#x}")]
    InvalidTransition {
        /// The MSR value before the write.
        from: u64,
        /// The value written.
        to: u64,
    },
    /// A bad [`VLocalApicConfig`](crate::VLocalApicConfig).
    #[error("invalid local APIC configuration: {0}")]
    BadConfig(&'static str),
    /// A feature this virtual local APIC does not offer (it is not
    /// advertised to the guest, so the access is treated as a fault).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

/// Result with this crate's [`Error`].
pub type Result<T = ()> = core::result::Result<T, Error>;
