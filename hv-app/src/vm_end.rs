//! How a VM's run ended, the line printed for it, and the value hv-app
//! powers off with after the last VM.
//!
//! `axvm::Vm::run_vcpu` hands back the exits that end a VM
//! ([`axvm::VmExit::stops_vm`]); [`VmEnd::from_exit`] turns them into what
//! hv-app reports, with the few facts only the runner knows (the guest's
//! memory, the vCPU's RIP, the consistency check a failed entry broke)
//! coming from a [`StopContext`]. [`RunSummary`] adds the ends up.

use alloc::string::String;
use core::fmt;

use axaddrspace::MappingFlags;
use axvm::VmExit;

use crate::port::ExitCode;

/// The name of a nested page fault's access: `"write"`, `"execute"` or
/// `"read"`.
pub fn access_name(flags: MappingFlags) -> &'static str {
    if flags.contains(MappingFlags::WRITE) {
        "write"
    } else if flags.contains(MappingFlags::EXECUTE) {
        "execute"
    } else {
        "read"
    }
}

/// What [`VmEnd::from_exit`] asks the runner about the stopped VM.
pub trait StopContext {
    /// Whether the guest physical address `gpa` is the VM's memory (a RAM
    /// area or a device), as opposed to an address it does not have.
    fn owns(&self, gpa: u64) -> bool;
    /// Linear address of the stopped vCPU's current instruction.
    fn rip(&self) -> u64;
    /// The consistency check a failed VM entry breaks, if the vCPU can name
    /// it.
    fn entry_check(&self) -> Option<&'static str>;
}

/// How a VM's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEnd {
    /// The guest wrote `status` to the debug-exit port.
    Exited {
        /// The value written.
        status: u32,
    },
    /// The guest powered itself off (ACPI sleep request, system power-off).
    PoweredOff,
    /// The guest triple-faulted (SVM `SHUTDOWN`, VMX triple fault).
    TripleFault {
        /// Guest RIP at the fault.
        rip: u64,
    },
    /// The guest touched a guest physical address outside its memory.
    OutsideMemory {
        /// The address.
        gpa: u64,
        /// Guest RIP of the access.
        rip: u64,
        /// `"read"`, `"write"` or `"execute"` ([`access_name`]).
        access: &'static str,
    },
    /// The guest accessed its own memory in a way the mapping forbids
    /// (such as executing device memory).
    AccessDenied {
        /// The address.
        gpa: u64,
        /// Guest RIP of the access.
        rip: u64,
        /// `"read"`, `"write"` or `"execute"`.
        access: &'static str,
    },
    /// The guest halted with nothing that could wake it (no interrupt
    /// sources yet).
    Halted {
        /// Guest RIP after the `HLT`.
        rip: u64,
    },
    /// The processor refused to enter the guest.
    EntryFailed {
        /// The hardware's reason (SVM: exit code, `-1` = `VMEXIT_INVALID`).
        code: u64,
        /// The consistency check that fails, if the hypervisor can name it.
        check: Option<&'static str>,
    },
    /// The VM met something it cannot emulate (an MMIO instruction the
    /// decoder does not take, an exit it does not handle).
    Unhandled {
        /// What could not be handled.
        reason: String,
        /// Guest RIP of the instruction.
        rip: u64,
    },
    /// The guest asked for something hv-app does not do yet.
    Unsupported(String),
    /// The hypervisor could not go on with this VM (a bad configuration or
    /// image, a vCPU operation failed, host memory ran out).
    Error(String),
    /// Stopped on request (Type-1.5: the root VM stopped or destroyed it).
    Requested(String),
}

impl VmEnd {
    /// What a VM-ending exit means, or `None` for an exit that does not
    /// end the VM (hypercall, halt, interrupt, vCPU start/stop: the runner
    /// decides).
    ///
    /// An SVM `SHUTDOWN` is the x86 triple-fault shutdown, so
    /// [`VmExit::Shutdown`] is reported as a triple fault at the current
    /// RIP. A bad access to an address the VM [owns](StopContext::owns) is
    /// [`AccessDenied`](Self::AccessDenied), anywhere else
    /// [`OutsideMemory`](Self::OutsideMemory).
    pub fn from_exit(exit: &VmExit, ctx: &impl StopContext) -> Option<Self> {
        Some(match exit {
            VmExit::DebugExit { code, .. } => Self::Exited { status: *code },
            VmExit::PowerOff => Self::PoweredOff,
            VmExit::Shutdown => Self::TripleFault { rip: ctx.rip() },
            VmExit::TripleFault { rip } => Self::TripleFault { rip: *rip },
            VmExit::FailEntry {
                hardware_entry_failure_reason: code,
            } => Self::EntryFailed {
                code: *code,
                check: ctx.entry_check(),
            },
            VmExit::BadAccess { gpa, rip, access } => {
                let (gpa, rip, access) = (gpa.as_usize() as u64, *rip, access_name(*access));
                if ctx.owns(gpa) {
                    Self::AccessDenied { gpa, rip, access }
                } else {
                    Self::OutsideMemory { gpa, rip, access }
                }
            }
            VmExit::Unhandled { reason, rip } => Self::Unhandled {
                reason: reason.clone(),
                rip: *rip,
            },
            VmExit::Hypercall { .. }
            | VmExit::Halt
            | VmExit::ExternalInterrupt { .. }
            | VmExit::CpuUp { .. }
            | VmExit::CpuDown { .. } => return None,
        })
    }

    /// Whether the guest ended its own run (debug-exit port or power off),
    /// rather than being stopped by the hypervisor.
    pub const fn is_exit(&self) -> bool {
        matches!(self, Self::Exited { .. } | Self::PoweredOff)
    }

    /// The value hv-app writes to the debug-exit port when this was the
    /// only VM: the guest's own status if it exited, 0 if it powered off,
    /// else [`ExitCode::VmStopped`].
    pub const fn exit_value(&self) -> u32 {
        match self {
            Self::Exited { status } => *status,
            Self::PoweredOff => ExitCode::Success as u32,
            _ => ExitCode::VmStopped as u32,
        }
    }
}

impl fmt::Display for VmEnd {
    /// `exited with status N`, `powered off`, or `stopped: <reason>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited { status } => write!(f, "exited with status {status}"),
            Self::PoweredOff => f.write_str("powered off"),
            Self::TripleFault { rip } => write!(f, "stopped: triple fault at RIP {rip:#x}"),
            Self::OutsideMemory { gpa, rip, access } => write!(
                f,
                "stopped: access to GPA {gpa:#x} outside its memory (RIP {rip:#x}, {access})"
            ),
            Self::AccessDenied { gpa, rip, access } => write!(
                f,
                "stopped: {access} access to GPA {gpa:#x} not allowed by its mapping (RIP {rip:#x})"
            ),
            Self::Halted { rip } => write!(
                f,
                "stopped: halted at RIP {rip:#x} with nothing to wake it (no interrupts yet)"
            ),
            Self::EntryFailed { code, check } => {
                if *code == u64::MAX {
                    write!(f, "stopped: VM entry failed (exit code -1, VMEXIT_INVALID")?;
                } else {
                    write!(f, "stopped: VM entry failed (exit code {code:#x}")?;
                }
                match check {
                    Some(c) => write!(f, "): {c}"),
                    None => write!(f, "): no known consistency check fails"),
                }
            }
            Self::Unhandled { reason, rip } => {
                write!(f, "stopped: cannot emulate at RIP {rip:#x}: {reason}")
            }
            Self::Unsupported(what) => write!(f, "stopped: not supported yet: {what}"),
            Self::Error(e) => write!(f, "stopped: hypervisor error: {e}"),
            Self::Requested(why) => write!(f, "stopped: {why}"),
        }
    }
}

/// The ends of all VMs of a run, and the value hv-app powers off with.
///
/// The power-off value ([`exit_value`](Self::exit_value)):
/// - one VM: its [`VmEnd::exit_value`] (its own status, or 5 =
///   [`ExitCode::VmStopped`] if hv-app stopped it);
/// - several VMs: 0 if every VM exited with status 0 (or powered off);
///   else 5 if any was stopped; else the first nonzero status;
/// - no VM: 0.
///
/// Its `Display` is `all VMs ended (<n> exited, <m> stopped)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    exited: usize,
    stopped: usize,
    only: Option<u32>,
    first_nonzero: Option<u32>,
}

impl RunSummary {
    /// No VM ended yet.
    pub const fn new() -> Self {
        Self {
            exited: 0,
            stopped: 0,
            only: None,
            first_nonzero: None,
        }
    }

    /// Counts `end`.
    pub fn record(&mut self, end: &VmEnd) {
        self.only = (self.vms() == 0).then(|| end.exit_value());
        if end.is_exit() {
            self.exited += 1;
            let value = end.exit_value();
            if value != 0 && self.first_nonzero.is_none() {
                self.first_nonzero = Some(value);
            }
        } else {
            self.stopped += 1;
        }
    }

    /// VMs that ended on their own (debug-exit port, power off).
    pub const fn exited(&self) -> usize {
        self.exited
    }

    /// VMs hv-app stopped.
    pub const fn stopped(&self) -> usize {
        self.stopped
    }

    /// VMs counted.
    pub const fn vms(&self) -> usize {
        self.exited + self.stopped
    }

    /// The value for the debug-exit port (see the type's documentation).
    pub fn exit_value(&self) -> u32 {
        if let Some(value) = self.only {
            return value;
        }
        if self.stopped > 0 {
            return ExitCode::VmStopped as u32;
        }
        self.first_nonzero.unwrap_or(ExitCode::Success as u32)
    }
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "all VMs ended ({} exited, {} stopped)",
            self.exited, self.stopped
        )
    }
}

/// The host memory one VM took when it was built, printed after the build
/// as `VM <id> memory: total <n> KiB, guest RAM <n> KiB, hypervisor <n> KiB,
/// per vCPU <n> KiB` (the format `cargo xtask bench` reads).
///
/// - total: frame-allocator frames the build took (guest RAM allocated at
///   creation, nested page tables, the vCPUs' control structures);
/// - guest RAM: the RAM the configuration has allocated at creation
///   ([`eager_ram_bytes`]; lazily allocated RAM comes later);
/// - hypervisor: total minus guest RAM;
/// - per vCPU: the frames one vCPU's control structures take (SVM: VMCB,
///   host save page, I/O and MSR permission maps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmMemoryReport {
    /// The VM's id.
    pub id: usize,
    /// Bytes of frames the build took.
    pub total_bytes: u64,
    /// Bytes of guest RAM allocated at creation.
    pub guest_ram_bytes: u64,
    /// Bytes of frames one vCPU takes.
    pub per_vcpu_bytes: u64,
}

impl VmMemoryReport {
    /// The hypervisor's own part: total minus guest RAM.
    pub const fn hypervisor_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.guest_ram_bytes)
    }
}

impl fmt::Display for VmMemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VM {} memory: total {} KiB, guest RAM {} KiB, hypervisor {} KiB, per vCPU {} KiB",
            self.id,
            self.total_bytes >> 10,
            self.guest_ram_bytes >> 10,
            self.hypervisor_bytes() >> 10,
            self.per_vcpu_bytes >> 10
        )
    }
}

/// The RAM of `config` that is allocated when the VM is created (regions
/// with `map = "alloc"`), in bytes.
pub fn eager_ram_bytes(config: &axvmconfig::VmConfig) -> u64 {
    config
        .memory
        .iter()
        .filter(|r| r.map == axvmconfig::MapKind::Alloc)
        .fold(0u64, |a, r| a.saturating_add(r.size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axaddrspace::GuestPhysAddr;
    use std::string::ToString;

    /// A VM with 16 MiB of RAM at 0 and a device page at 0xfeb0_0000.
    struct Fake {
        rip: u64,
        check: Option<&'static str>,
    }

    impl StopContext for Fake {
        fn owns(&self, gpa: u64) -> bool {
            gpa < 16 << 20 || (0xfeb0_0000..0xfeb0_1000).contains(&gpa)
        }
        fn rip(&self) -> u64 {
            self.rip
        }
        fn entry_check(&self) -> Option<&'static str> {
            self.check
        }
    }

    const CTX: Fake = Fake {
        rip: 0x20_0042,
        check: Some("ASID is zero"),
    };

    fn end(exit: VmExit) -> Option<VmEnd> {
        VmEnd::from_exit(&exit, &CTX)
    }

    #[test]
    fn guest_exits() {
        // QEMU's isa-debug-exit semantics: a write of 3 is status 7.
        let e = end(VmExit::DebugExit { code: 3, status: 7 }).unwrap();
        assert_eq!(e, VmEnd::Exited { status: 3 });
        assert_eq!(e.to_string(), "exited with status 3");
        assert!(e.is_exit());
        assert_eq!(e.exit_value(), 3);
        let e = end(VmExit::PowerOff).unwrap();
        assert_eq!(e.to_string(), "powered off");
        assert!(e.is_exit());
        assert_eq!(e.exit_value(), 0);
    }

    #[test]
    fn triple_faults_and_shutdowns() {
        let e = end(VmExit::TripleFault { rip: 0x20_1234 }).unwrap();
        assert_eq!(e.to_string(), "stopped: triple fault at RIP 0x201234");
        assert!(!e.is_exit());
        assert_eq!(e.exit_value(), 5);
        // SVM SHUTDOWN carries no RIP: the vCPU's current one.
        assert_eq!(
            end(VmExit::Shutdown).unwrap(),
            VmEnd::TripleFault { rip: 0x20_0042 }
        );
    }

    #[test]
    fn bad_accesses() {
        let gpa = GuestPhysAddr::from_usize;
        let e = end(VmExit::BadAccess {
            gpa: gpa(0x4000_0000),
            rip: 0x20_0abc,
            access: MappingFlags::READ,
        })
        .unwrap();
        assert_eq!(
            e.to_string(),
            "stopped: access to GPA 0x40000000 outside its memory (RIP 0x200abc, read)"
        );
        assert_eq!(e.exit_value(), 5);
        // Executing the device page: the VM's, but not executable.
        let e = end(VmExit::BadAccess {
            gpa: gpa(0xfeb0_0010),
            rip: 0xfeb0_0010,
            access: MappingFlags::EXECUTE,
        })
        .unwrap();
        assert_eq!(
            e.to_string(),
            "stopped: execute access to GPA 0xfeb00010 not allowed by its mapping (RIP 0xfeb00010)"
        );
    }

    #[test]
    fn entry_failures_and_unhandled() {
        let e = end(VmExit::FailEntry {
            hardware_entry_failure_reason: u64::MAX,
        })
        .unwrap();
        assert_eq!(
            e.to_string(),
            "stopped: VM entry failed (exit code -1, VMEXIT_INVALID): ASID is zero"
        );
        let none = Fake {
            rip: 0,
            check: None,
        };
        // VMX: basic exit reason 33 with bit 31 set (entry failure).
        let e = VmEnd::from_exit(
            &VmExit::FailEntry {
                hardware_entry_failure_reason: 0x8000_0021,
            },
            &none,
        )
        .unwrap();
        assert_eq!(
            e.to_string(),
            "stopped: VM entry failed (exit code 0x80000021): no known consistency check fails"
        );
        let e = end(VmExit::Unhandled {
            reason: "MMIO access by `add`".into(),
            rip: 0x20_0100,
        })
        .unwrap();
        assert_eq!(
            e.to_string(),
            "stopped: cannot emulate at RIP 0x200100: MMIO access by `add`"
        );
        assert_eq!(
            VmEnd::Error("out of memory".into()).to_string(),
            "stopped: hypervisor error: out of memory"
        );
        assert_eq!(
            VmEnd::Requested("by the root VM".into()).to_string(),
            "stopped: by the root VM"
        );
    }

    #[test]
    fn exits_that_do_not_end_the_vm() {
        assert_eq!(
            end(VmExit::Hypercall {
                nr: 0,
                args: [0; 6]
            }),
            None
        );
        assert_eq!(end(VmExit::Halt), None);
        assert_eq!(end(VmExit::ExternalInterrupt { vector: 0x20 }), None);
        assert_eq!(end(VmExit::CpuDown { state: 0 }), None);
    }

    #[test]
    fn access_names() {
        assert_eq!(access_name(MappingFlags::WRITE), "write");
        assert_eq!(
            access_name(MappingFlags::READ | MappingFlags::WRITE),
            "write"
        );
        assert_eq!(access_name(MappingFlags::EXECUTE), "execute");
        assert_eq!(access_name(MappingFlags::READ), "read");
        assert_eq!(access_name(MappingFlags::empty()), "read");
    }

    fn summary(ends: &[VmEnd]) -> RunSummary {
        let mut s = RunSummary::new();
        for e in ends {
            s.record(e);
        }
        s
    }

    const OK: VmEnd = VmEnd::Exited { status: 0 };
    const STOPPED: VmEnd = VmEnd::TripleFault { rip: 0x1000 };

    #[test]
    fn one_vm_passes_its_value_through() {
        let s = summary(&[VmEnd::Exited { status: 7 }]);
        assert_eq!((s.exited(), s.stopped(), s.exit_value()), (1, 0, 7));
        assert_eq!(s.to_string(), "all VMs ended (1 exited, 0 stopped)");
        let s = summary(&[STOPPED]);
        assert_eq!((s.exited(), s.stopped(), s.exit_value()), (0, 1, 5));
        assert_eq!(summary(&[OK]).exit_value(), 0);
        assert_eq!(summary(&[]).exit_value(), 0);
    }

    #[test]
    fn several_vms() {
        // Every VM passed.
        let s = summary(&[OK, VmEnd::PoweredOff, OK]);
        assert_eq!(s.exit_value(), 0);
        assert_eq!(s.to_string(), "all VMs ended (3 exited, 0 stopped)");
        // A stopped VM wins over nonzero statuses.
        let s = summary(&[VmEnd::Exited { status: 2 }, STOPPED, OK]);
        assert_eq!(s.exit_value(), 5);
        assert_eq!(s.to_string(), "all VMs ended (2 exited, 1 stopped)");
        // The isolation-then-hello run: VM 1 stopped, VM 2 passed.
        assert_eq!(summary(&[STOPPED, OK]).exit_value(), 5);
        // No VM stopped: the first nonzero status.
        let s = summary(&[OK, VmEnd::Exited { status: 3 }, VmEnd::Exited { status: 4 }]);
        assert_eq!(s.exit_value(), 3);
        assert_eq!(s.vms(), 3);
    }

    #[test]
    fn memory_report_line() {
        // 16 MiB of RAM, 25 frames of nested page tables, one SVM vCPU of
        // 7 frames (VMCB, host save, 3 IOPM, 2 MSRPM).
        let r = VmMemoryReport {
            id: 1,
            total_bytes: (16 << 20) + (32 << 12),
            guest_ram_bytes: 16 << 20,
            per_vcpu_bytes: 7 << 12,
        };
        assert_eq!(r.hypervisor_bytes(), 128 << 10);
        assert_eq!(
            r.to_string(),
            "VM 1 memory: total 16512 KiB, guest RAM 16384 KiB, hypervisor 128 KiB, per vCPU 28 KiB"
        );
        // Less taken than the RAM (never for eager RAM): no underflow.
        let r = VmMemoryReport {
            total_bytes: 4096,
            ..r
        };
        assert_eq!(r.hypervisor_bytes(), 0);
    }

    #[test]
    fn eager_ram_counts_allocated_regions_only() {
        use axvmconfig::{BootProtocol, MapKind, MemFlags, MemoryRegion, VmConfig};
        let mut c = VmConfig::new(3, "m", 16 << 20, "k", BootProtocol::Multiboot);
        assert_eq!(eager_ram_bytes(&c), 16 << 20);
        c.memory.push(MemoryRegion {
            gpa: 0x100_0000,
            size: 8 << 20,
            map: MapKind::AllocLazy,
            flags: MemFlags::RWX,
        });
        c.memory.push(MemoryRegion {
            gpa: 0x200_0000,
            size: 0x1000,
            map: MapKind::Alloc,
            flags: MemFlags::READ,
        });
        assert_eq!(eager_ram_bytes(&c), (16 << 20) + 0x1000);
    }
}
