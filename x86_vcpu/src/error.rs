//! The error type of this crate.

/// Everything that can go wrong in `x86_vcpu`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A feature this crate does not provide (yet).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// A caller passed an argument that cannot be honoured.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The host could not give the memory a structure needs.
    #[error("out of memory while allocating {0}")]
    NoMemory(&'static str),
    /// The processor has neither VMX nor SVM (or the wrong one was asked for).
    #[error("hardware virtualization not available: {0}")]
    VirtualizationUnavailable(&'static str),
    /// Firmware locked `IA32_FEATURE_CONTROL` with VMX outside SMX disabled.
    #[error("VMX disabled by firmware (IA32_FEATURE_CONTROL locked = {0:#x})")]
    VmxDisabledByFirmware(u64),
    /// A VM-execution/exit/entry control bit was requested that the
    /// capability MSR says the processor cannot set (or cannot clear).
    #[error("{control}: bit {bit} cannot be {}", if *want_set { "set" } else { "cleared" })]
    ControlNotSupported {
        /// Which control field (e.g. "secondary processor-based").
        control: &'static str,
        /// The offending bit number.
        bit: u32,
        /// `true` if the bit was wanted set, `false` if wanted clear.
        want_set: bool,
    },
    /// A control register value violates the VMX fixed-bit MSRs.
    #[error(
        "{register} = {value:#x} violates VMX fixed bits (must be 1: {must_be_one:#x}, must be 0: {must_be_zero:#x})"
    )]
    FixedBitsViolated {
        /// "CR0" or "CR4".
        register: &'static str,
        /// The value that was checked.
        value: u64,
        /// Bits that are 0 in `value` but must be 1.
        must_be_one: u64,
        /// Bits that are 1 in `value` but must be 0.
        must_be_zero: u64,
    },
    /// A value does not fit the width of the VMCS field it is written to.
    #[error("value {value:#x} too wide for {bits}-bit VMCS field {field:#06x}")]
    VmcsValueTooWide {
        /// Field encoding.
        field: u32,
        /// Field width in bits.
        bits: u32,
        /// The rejected value.
        value: u64,
    },
    /// A write to a read-only (VM-exit information) VMCS field.
    #[error("VMCS field {0:#06x} is read-only")]
    VmcsReadOnly(u32),
    /// A VMX instruction failed with VMfailInvalid (no current VMCS).
    #[error("VMX instruction failed: no current VMCS (VMfailInvalid)")]
    VmFailInvalid,
    /// A VMX instruction failed with VMfailValid and this VM-instruction
    /// error number (SDM 31.4, see [`crate::vmx::VmInstructionError`]).
    #[error("VMX instruction failed with error {0}: {msg}", msg = crate::vmx::instruction_error_message(*.0))]
    VmFailValid(u32),
    /// A VMCB failed a consistency check that VMRUN would make.
    #[error("VMCB consistency check failed: {0}")]
    InvalidVmcb(&'static str),
    /// An exit that the hardware reported but this crate does not understand.
    #[error("unknown exit reason {0:#x}")]
    UnknownExit(u64),
    /// The processor found an EPT entry it cannot use (a hypervisor bug in
    /// the nested page table) at this guest physical address.
    #[error("EPT misconfiguration at guest physical address {0:#x}")]
    EptMisconfiguration(u64),
    /// The instruction at the faulting RIP could not be decoded as an MMIO access.
    #[error("cannot decode MMIO instruction: {0}")]
    Decode(&'static str),
    /// A general-purpose register index outside 0..16.
    #[error("invalid general-purpose register index {0}")]
    InvalidRegister(usize),
}

/// The result type of this crate.
pub type Result<T = ()> = core::result::Result<T, Error>;
