//! Why a vCPU stopped running guest code, and per-reason exit counters.

use axaddrspace::{AccessWidth, GuestPhysAddr, MappingFlags};

/// Why [`AxArchVCpu::run`](crate::AxArchVCpu::run) returned: the exits that the
/// architecture backend could not settle on its own.
///
/// Guest misbehaviour (a triple fault, a failed entry caused by bad guest state)
/// is reported here, not as an [`Error`](crate::Error): it ends that VM, not the
/// hypervisor.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum AxVCpuExitReason {
    /// The guest made a hypercall (x86: `VMCALL`/`VMMCALL`).
    Hypercall {
        /// Hypercall number.
        nr: u64,
        /// Up to six arguments.
        args: [u64; 6],
    },
    /// The guest read from an address that no memory backs (emulated MMIO).
    ///
    /// Complete it with [`AxVCpu::set_mmio_read_result`](crate::AxVCpu::set_mmio_read_result).
    MmioRead {
        /// Guest physical address read.
        addr: GuestPhysAddr,
        /// Width of the memory access.
        width: AccessWidth,
        /// General purpose register that receives the value (arch numbering).
        reg: usize,
        /// Width of the destination register operand (x86: `movzx eax, byte [m]` has
        /// `width` Byte and `reg_width` Dword).
        reg_width: AccessWidth,
        /// Whether the value is sign-extended to `reg_width` (x86 `MOVSX`/`MOVSXD`).
        signed_ext: bool,
    },
    /// The guest wrote to an address that no memory backs (emulated MMIO).
    MmioWrite {
        /// Guest physical address written.
        addr: GuestPhysAddr,
        /// Width of the memory access.
        width: AccessWidth,
        /// The value written, in the low `width` bytes.
        data: u64,
    },
    /// The guest read an I/O port (x86 `IN`).
    ///
    /// Complete it with [`AxVCpu::set_io_result`](crate::AxVCpu::set_io_result).
    IoRead {
        /// Port number.
        port: u16,
        /// Width of the access (1, 2 or 4 bytes).
        width: AccessWidth,
    },
    /// The guest wrote an I/O port (x86 `OUT`).
    IoWrite {
        /// Port number.
        port: u16,
        /// Width of the access (1, 2 or 4 bytes).
        width: AccessWidth,
        /// The value written, in the low `width` bytes.
        data: u64,
    },
    /// The guest read a model specific register (x86 `RDMSR`).
    ///
    /// Complete it with [`AxVCpu::set_msr_result`](crate::AxVCpu::set_msr_result).
    MsrRead {
        /// MSR index (x86: ECX).
        msr: u32,
    },
    /// The guest wrote a model specific register (x86 `WRMSR`).
    MsrWrite {
        /// MSR index (x86: ECX).
        msr: u32,
        /// The value written (x86: EDX:EAX).
        value: u64,
    },
    /// A guest physical access that the nested page table does not allow.
    NestedPageFault {
        /// The faulting guest physical address.
        addr: GuestPhysAddr,
        /// The kind of access (read, write, execute) that faulted.
        access_flags: MappingFlags,
    },
    /// A host interrupt arrived while the guest ran.
    ExternalInterrupt {
        /// The interrupt vector.
        vector: u8,
    },
    /// The guest can now take an interrupt (the interrupt window opened).
    InterruptWindow,
    /// The guest halted (x86 `HLT`).
    Halt,
    /// The guest asked to start another vCPU (x86: INIT-SIPI-SIPI, PSCI `CPU_ON`).
    CpuUp {
        /// The target vCPU (x86: its APIC ID).
        target_cpu: u64,
        /// Where the target starts.
        entry_point: GuestPhysAddr,
        /// An argument for the target.
        arg: u64,
    },
    /// The guest stopped this vCPU.
    CpuDown {
        /// Architecture-specific state code.
        state: u64,
    },
    /// The guest asked to power the whole system off.
    SystemDown,
    /// The guest triple-faulted (x86: shutdown condition).
    TripleFault,
    /// The guest asked to shut down (x86 SVM `SHUTDOWN` intercept, ACPI power off).
    Shutdown,
    /// VM entry failed; the code is the hardware's reason
    /// (x86 VMX: exit reason with bit 31 set; SVM: `VMEXIT_INVALID`).
    FailEntry {
        /// The hardware's entry failure reason.
        hardware_entry_failure_reason: u64,
    },
    /// Nothing for the caller to do (the backend handled the exit); run again.
    Nothing,
}

impl AxVCpuExitReason {
    /// The fieldless kind of this exit, for counting.
    #[inline]
    pub const fn kind(&self) -> ExitReasonKind {
        use ExitReasonKind as K;
        match self {
            Self::Hypercall { .. } => K::Hypercall,
            Self::MmioRead { .. } => K::MmioRead,
            Self::MmioWrite { .. } => K::MmioWrite,
            Self::IoRead { .. } => K::IoRead,
            Self::IoWrite { .. } => K::IoWrite,
            Self::MsrRead { .. } => K::MsrRead,
            Self::MsrWrite { .. } => K::MsrWrite,
            Self::NestedPageFault { .. } => K::NestedPageFault,
            Self::ExternalInterrupt { .. } => K::ExternalInterrupt,
            Self::InterruptWindow => K::InterruptWindow,
            Self::Halt => K::Halt,
            Self::CpuUp { .. } => K::CpuUp,
            Self::CpuDown { .. } => K::CpuDown,
            Self::SystemDown => K::SystemDown,
            Self::TripleFault => K::TripleFault,
            Self::Shutdown => K::Shutdown,
            Self::FailEntry { .. } => K::FailEntry,
            Self::Nothing => K::Nothing,
        }
    }

    /// The name of the exit reason, such as `"IoWrite"`.
    pub const fn name(&self) -> &'static str {
        self.kind().name()
    }
}

/// The kind of an [`AxVCpuExitReason`] without its fields: an index into
/// per-reason counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
#[repr(u8)]
pub enum ExitReasonKind {
    /// [`AxVCpuExitReason::Hypercall`].
    Hypercall,
    /// [`AxVCpuExitReason::MmioRead`].
    MmioRead,
    /// [`AxVCpuExitReason::MmioWrite`].
    MmioWrite,
    /// [`AxVCpuExitReason::IoRead`].
    IoRead,
    /// [`AxVCpuExitReason::IoWrite`].
    IoWrite,
    /// [`AxVCpuExitReason::MsrRead`].
    MsrRead,
    /// [`AxVCpuExitReason::MsrWrite`].
    MsrWrite,
    /// [`AxVCpuExitReason::NestedPageFault`].
    NestedPageFault,
    /// [`AxVCpuExitReason::ExternalInterrupt`].
    ExternalInterrupt,
    /// [`AxVCpuExitReason::InterruptWindow`].
    InterruptWindow,
    /// [`AxVCpuExitReason::Halt`].
    Halt,
    /// [`AxVCpuExitReason::CpuUp`].
    CpuUp,
    /// [`AxVCpuExitReason::CpuDown`].
    CpuDown,
    /// [`AxVCpuExitReason::SystemDown`].
    SystemDown,
    /// [`AxVCpuExitReason::TripleFault`].
    TripleFault,
    /// [`AxVCpuExitReason::Shutdown`].
    Shutdown,
    /// [`AxVCpuExitReason::FailEntry`].
    FailEntry,
    /// [`AxVCpuExitReason::Nothing`].
    Nothing,
}

impl ExitReasonKind {
    /// Every kind, in index order: `ALL[k.index()] == k`.
    pub const ALL: [Self; 18] = [
        Self::Hypercall,
        Self::MmioRead,
        Self::MmioWrite,
        Self::IoRead,
        Self::IoWrite,
        Self::MsrRead,
        Self::MsrWrite,
        Self::NestedPageFault,
        Self::ExternalInterrupt,
        Self::InterruptWindow,
        Self::Halt,
        Self::CpuUp,
        Self::CpuDown,
        Self::SystemDown,
        Self::TripleFault,
        Self::Shutdown,
        Self::FailEntry,
        Self::Nothing,
    ];

    /// The number of kinds: the length of a per-kind counter array.
    pub const COUNT: usize = Self::ALL.len();

    /// The index of this kind, in `0..COUNT`.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The kind with index `index`, if `index < COUNT`.
    pub const fn from_index(index: usize) -> Option<Self> {
        if index < Self::COUNT {
            Some(Self::ALL[index])
        } else {
            None
        }
    }

    /// The name of the kind, the same as the variant's name (`"Halt"`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hypercall => "Hypercall",
            Self::MmioRead => "MmioRead",
            Self::MmioWrite => "MmioWrite",
            Self::IoRead => "IoRead",
            Self::IoWrite => "IoWrite",
            Self::MsrRead => "MsrRead",
            Self::MsrWrite => "MsrWrite",
            Self::NestedPageFault => "NestedPageFault",
            Self::ExternalInterrupt => "ExternalInterrupt",
            Self::InterruptWindow => "InterruptWindow",
            Self::Halt => "Halt",
            Self::CpuUp => "CpuUp",
            Self::CpuDown => "CpuDown",
            Self::SystemDown => "SystemDown",
            Self::TripleFault => "TripleFault",
            Self::Shutdown => "Shutdown",
            Self::FailEntry => "FailEntry",
            Self::Nothing => "Nothing",
        }
    }
}

/// One counter per [`ExitReasonKind`].
///
/// ```
/// use axvcpu::{AxVCpuExitReason, ExitCounters, ExitReasonKind};
/// let mut c = ExitCounters::new();
/// c.record(&AxVCpuExitReason::Halt);
/// c.record(&AxVCpuExitReason::Halt);
/// c.record(&AxVCpuExitReason::MsrRead { msr: 0x1b });
/// assert_eq!(c.get(ExitReasonKind::Halt), 2);
/// assert_eq!(c.total(), 3);
/// let seen: Vec<_> = c.iter().collect();
/// assert_eq!(seen, [("MsrRead", 1), ("Halt", 2)]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitCounters {
    counts: [u64; ExitReasonKind::COUNT],
}

impl ExitCounters {
    /// All counters at zero.
    pub const fn new() -> Self {
        Self {
            counts: [0; ExitReasonKind::COUNT],
        }
    }

    /// Counts one exit of `reason`'s kind.
    #[inline]
    pub fn record(&mut self, reason: &AxVCpuExitReason) {
        self.record_kind(reason.kind());
    }

    /// Counts one exit of kind `kind`.
    #[inline]
    pub fn record_kind(&mut self, kind: ExitReasonKind) {
        let c = &mut self.counts[kind.index()];
        *c = c.saturating_add(1);
    }

    /// The count of kind `kind`.
    pub const fn get(&self, kind: ExitReasonKind) -> u64 {
        self.counts[kind.index()]
    }

    /// The counts, indexed by [`ExitReasonKind::index`].
    pub const fn as_array(&self) -> &[u64; ExitReasonKind::COUNT] {
        &self.counts
    }

    /// The sum of all counts.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, &c| a.saturating_add(c))
    }

    /// Adds every count of `other` to this one (to sum the vCPUs of a VM).
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// Sets all counters back to zero.
    pub fn reset(&mut self) {
        self.counts = [0; ExitReasonKind::COUNT];
    }

    /// `(name, count)` of every kind with a non-zero count, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.iter_kinds().map(|(k, c)| (k.name(), c))
    }

    /// `(kind, count)` of every kind with a non-zero count, in index order.
    pub fn iter_kinds(&self) -> impl Iterator<Item = (ExitReasonKind, u64)> + '_ {
        ExitReasonKind::ALL
            .iter()
            .zip(self.counts.iter())
            .filter(|(_, c)| **c != 0)
            .map(|(k, c)| (*k, *c))
    }
}

impl Default for ExitCounters {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn one_of_each() -> [AxVCpuExitReason; ExitReasonKind::COUNT] {
        let gpa = GuestPhysAddr::from_usize(0xfee0_0000);
        [
            AxVCpuExitReason::Hypercall {
                nr: 1,
                args: [0; 6],
            },
            AxVCpuExitReason::MmioRead {
                addr: gpa,
                width: AccessWidth::Dword,
                reg: 0,
                reg_width: AccessWidth::Dword,
                signed_ext: false,
            },
            AxVCpuExitReason::MmioWrite {
                addr: gpa,
                width: AccessWidth::Dword,
                data: 0,
            },
            AxVCpuExitReason::IoRead {
                port: 0x3f8,
                width: AccessWidth::Byte,
            },
            AxVCpuExitReason::IoWrite {
                port: 0x3f8,
                width: AccessWidth::Byte,
                data: 0x41,
            },
            AxVCpuExitReason::MsrRead { msr: 0x1b },
            AxVCpuExitReason::MsrWrite {
                msr: 0x1b,
                value: 0,
            },
            AxVCpuExitReason::NestedPageFault {
                addr: gpa,
                access_flags: MappingFlags::WRITE,
            },
            AxVCpuExitReason::ExternalInterrupt { vector: 0x20 },
            AxVCpuExitReason::InterruptWindow,
            AxVCpuExitReason::Halt,
            AxVCpuExitReason::CpuUp {
                target_cpu: 1,
                entry_point: GuestPhysAddr::from_usize(0x9000),
                arg: 0,
            },
            AxVCpuExitReason::CpuDown { state: 0 },
            AxVCpuExitReason::SystemDown,
            AxVCpuExitReason::TripleFault,
            AxVCpuExitReason::Shutdown,
            AxVCpuExitReason::FailEntry {
                hardware_entry_failure_reason: 0x8000_0021,
            },
            AxVCpuExitReason::Nothing,
        ]
    }

    #[test]
    fn kinds_are_distinct_and_indexed_in_order() {
        let reasons = one_of_each();
        for (i, r) in reasons.iter().enumerate() {
            assert_eq!(r.kind().index(), i, "{r:?}");
            assert_eq!(ExitReasonKind::from_index(i), Some(r.kind()));
            assert_eq!(ExitReasonKind::ALL[i], r.kind());
        }
        assert_eq!(ExitReasonKind::COUNT, 18);
        assert_eq!(ExitReasonKind::from_index(ExitReasonKind::COUNT), None);
    }

    #[test]
    fn names_match_variant_debug_names() {
        for r in one_of_each() {
            let dbg = std::format!("{r:?}");
            let variant = dbg.split([' ', '{']).next().unwrap();
            assert_eq!(r.name(), variant);
        }
    }

    #[test]
    fn counters_count_per_kind() {
        let mut c = ExitCounters::new();
        assert_eq!(c.iter().count(), 0);
        for _ in 0..3 {
            c.record(&AxVCpuExitReason::IoWrite {
                port: 0x3f8,
                width: AccessWidth::Byte,
                data: 0x41,
            });
        }
        c.record(&AxVCpuExitReason::Hypercall {
            nr: 7,
            args: [0; 6],
        });
        c.record_kind(ExitReasonKind::Nothing);
        assert_eq!(c.get(ExitReasonKind::IoWrite), 3);
        assert_eq!(c.get(ExitReasonKind::IoRead), 0);
        assert_eq!(c.total(), 5);
        let v: Vec<_> = c.iter().collect();
        assert_eq!(v, [("Hypercall", 1), ("IoWrite", 3), ("Nothing", 1)]);
        assert_eq!(c.as_array()[ExitReasonKind::IoWrite.index()], 3);

        let mut sum = ExitCounters::default();
        sum.add(&c);
        sum.add(&c);
        assert_eq!(sum.get(ExitReasonKind::IoWrite), 6);
        assert_eq!(sum.total(), 10);
        sum.reset();
        assert_eq!(sum, ExitCounters::new());
    }

    #[test]
    fn counters_saturate() {
        let mut a = ExitCounters::new();
        a.counts[ExitReasonKind::Halt.index()] = u64::MAX;
        a.record(&AxVCpuExitReason::Halt);
        assert_eq!(a.get(ExitReasonKind::Halt), u64::MAX);
        a.record(&AxVCpuExitReason::Nothing);
        assert_eq!(a.total(), u64::MAX);
    }
}
