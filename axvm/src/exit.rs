//! What the exit loop hands to its caller, and the lifecycle of a VM.

use alloc::string::String;
use core::fmt;

use axaddrspace::{GuestPhysAddr, MappingFlags};

use crate::Error;

/// An exit the VM could not settle itself, returned by
/// [`Vm::run_vcpu`](crate::Vm::run_vcpu).
///
/// Some of them end the VM ([`stops_vm`](Self::stops_vm)): the VM is then
/// [`VmState::Stopped`] with this exit as the reason, and the caller
/// reports it. The others ask the caller to act and run the vCPU again.
#[derive(Debug, Clone, PartialEq)]
pub enum VmExit {
    /// The guest made a hypercall (number in RAX, arguments in RDI, RSI,
    /// RDX, R10, R8, R9). Put the result in RAX with
    /// [`Vm::set_hypercall_result`](crate::Vm::set_hypercall_result), then
    /// run again.
    Hypercall {
        /// Hypercall number.
        nr: u64,
        /// The six argument registers.
        args: [u64; 6],
    },
    /// The vCPU executed `HLT`: it waits for an interrupt. The caller may
    /// schedule something else (with interrupts off in the guest, nothing
    /// will wake it).
    Halt,
    /// A host interrupt arrived while the guest ran: the caller's chance to
    /// schedule. Run again to resume.
    ExternalInterrupt {
        /// The interrupt vector.
        vector: u8,
    },
    /// The guest asked to start another vCPU.
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
    /// The guest wrote its debug-exit port (QEMU `isa-debug-exit`). Ends
    /// the VM.
    DebugExit {
        /// The value the guest wrote (`status >> 1`; the project's test
        /// guests write 0 for pass).
        code: u32,
        /// The exit status QEMU would give: `(value << 1) | 1`.
        status: u32,
    },
    /// The guest powered itself off (ACPI PM1a control sleep request, or
    /// the vCPU reported a system power-off). Ends the VM.
    PowerOff,
    /// The guest asked to shut down (SVM `SHUTDOWN` intercept). Ends the VM.
    Shutdown,
    /// The guest triple-faulted. Ends the VM.
    TripleFault {
        /// Linear address of the guest's instruction when it happened.
        rip: u64,
    },
    /// VM entry failed because of the guest state. Ends the VM.
    FailEntry {
        /// The hardware's entry failure reason.
        hardware_entry_failure_reason: u64,
    },
    /// The guest touched guest physical memory it does not have (not RAM,
    /// no device), or accessed RAM in a way its flags forbid. Ends the VM.
    BadAccess {
        /// The faulting guest physical address.
        gpa: GuestPhysAddr,
        /// Linear address (CS base + RIP) of the faulting instruction.
        rip: u64,
        /// The kind of access (`READ`, `WRITE`, `EXECUTE`).
        access: MappingFlags,
    },
    /// An exit the VM cannot emulate, such as an MMIO access by an
    /// instruction the decoder does not handle. Ends the VM.
    Unhandled {
        /// What could not be handled, for the log.
        reason: String,
        /// Linear address (CS base + RIP) of the guest's instruction.
        rip: u64,
    },
}

impl VmExit {
    /// Whether this exit ends the VM.
    pub const fn stops_vm(&self) -> bool {
        matches!(
            self,
            Self::DebugExit { .. }
                | Self::PowerOff
                | Self::Shutdown
                | Self::TripleFault { .. }
                | Self::FailEntry { .. }
                | Self::BadAccess { .. }
                | Self::Unhandled { .. }
        )
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hypercall { nr, args } => write!(f, "hypercall {nr:#x} {args:x?}"),
            Self::Halt => f.write_str("halt"),
            Self::ExternalInterrupt { vector } => write!(f, "external interrupt {vector:#x}"),
            Self::CpuUp {
                target_cpu,
                entry_point,
                arg,
            } => write!(
                f,
                "start vCPU {target_cpu} at {:#x} (arg {arg:#x})",
                entry_point.as_usize()
            ),
            Self::CpuDown { state } => write!(f, "vCPU down (state {state:#x})"),
            Self::DebugExit { code, status } => {
                write!(f, "debug exit: code {code:#x} (status {status:#x})")
            }
            Self::PowerOff => f.write_str("power off"),
            Self::Shutdown => f.write_str("shutdown"),
            Self::TripleFault { rip } => write!(f, "triple fault at RIP {rip:#x}"),
            Self::FailEntry {
                hardware_entry_failure_reason,
            } => write!(
                f,
                "VM entry failed (hardware reason {hardware_entry_failure_reason:#x})"
            ),
            Self::BadAccess { gpa, rip, access } => write!(
                f,
                "bad access: {access:?} of GPA {:#x} at RIP {rip:#x} (not guest memory, or not allowed)",
                gpa.as_usize()
            ),
            Self::Unhandled { reason, rip } => write!(f, "unhandled at RIP {rip:#x}: {reason}"),
        }
    }
}

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// The guest ended it: the exit, one for which
    /// [`VmExit::stops_vm`] is true.
    Guest(VmExit),
    /// The hypervisor stopped it ([`Vm::stop`](crate::Vm::stop)), for the
    /// reason given.
    Requested(String),
    /// Running it failed on the hypervisor's side (a vCPU operation, host
    /// memory exhausted): the error.
    Failed(Error),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Guest(exit) => write!(f, "{exit}"),
            Self::Requested(why) => write!(f, "stopped by the hypervisor: {why}"),
            Self::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// The lifecycle of a VM: `Created -> Running -> Stopped`.
#[derive(Debug, Clone, PartialEq)]
pub enum VmState {
    /// Built; no vCPU has run yet.
    Created,
    /// A vCPU has run. The VM stays `Running` while its vCPUs come and go
    /// (halt, hypercall, preemption).
    Running,
    /// Ended for good; no vCPU runs again.
    Stopped(StopReason),
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Created => f.write_str("created"),
            Self::Running => f.write_str("running"),
            Self::Stopped(r) => write!(f, "stopped ({r})"),
        }
    }
}
