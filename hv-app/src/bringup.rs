//! The exit policy of the first-light VM runner (issue #3).
//!
//! Until `axvm`'s VM object with its device set takes over, hv-app runs a
//! guest with the few devices the project's test guests touch, decided
//! here so that the decisions are tested on the host:
//!
//! - COM1 (ports `0x3f8..=0x3ff`): a write to the data register with
//!   LCR.DLAB clear is console output; LSR (`0x3fd`) reads `0x60` (THR and
//!   transmitter empty), LCR reads back what was written;
//! - the debug-exit port `0xf4`: a write ends the VM with that status;
//! - any other port: writes are ignored, reads return all ones (no device);
//! - hypercalls: `HC_VERSION` (0) returns [`HYPERCALL_ABI_VERSION`], any
//!   other number `-ENOSYS`.
//!
//! How the VM ended is a [`VmEnd`], printed as the run's last words.

use core::fmt;

use axaddrspace::{AccessWidth, MappingFlags};

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// The debug-exit port (QEMU `isa-debug-exit` at `iobase=0xf4`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Hypercall 0: the ABI version.
pub const HC_VERSION: u64 = 0;
/// The hypercall ABI version: `major << 16 | minor` = 1.0.
pub const HYPERCALL_ABI_VERSION: u64 = 0x0001_0000;
/// Linux `ENOSYS`: an unknown hypercall returns `-ENOSYS`.
pub const ENOSYS: i64 = 38;
/// Line status register value: THR empty (bit 5) and transmitter empty
/// (bit 6), no data ready.
pub const LSR_IDLE: u8 = 0x60;
/// Where the Multiboot information goes if nothing else is there
/// (conventional memory, like GRUB and QEMU put it).
pub const LOW_BOOT_INFO_GPA: u64 = 0x9000;

const LCR_DLAB: u8 = 1 << 7;

/// What a guest's port write means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortWrite {
    /// A byte for the guest's console.
    Console(u8),
    /// The guest ended its run with this status.
    Exit(u32),
    /// Nothing to do (UART setup, a port without a device).
    Ignored,
}

/// The ports of the first-light VM: a minimal COM1 and the debug-exit port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BringupPorts {
    lcr: u8,
}

impl BringupPorts {
    /// The ports after reset (LCR 0).
    pub const fn new() -> Self {
        Self { lcr: 0 }
    }

    /// Handles a guest `OUT` of `data` (`width` bytes) to `port`.
    pub fn write(&mut self, port: u16, width: AccessWidth, data: u64) -> PortWrite {
        let data = data & width.mask();
        match port {
            DEBUG_EXIT_PORT => PortWrite::Exit(data as u32),
            // Data register, unless DLAB makes it the divisor latch.
            COM1_BASE if self.lcr & LCR_DLAB == 0 => PortWrite::Console(data as u8),
            p if p == COM1_BASE + 3 => {
                self.lcr = data as u8;
                PortWrite::Ignored
            }
            _ => PortWrite::Ignored,
        }
    }

    /// Handles a guest `IN` of `width` bytes from `port`: the value to load.
    pub fn read(&self, port: u16, width: AccessWidth) -> u64 {
        match port {
            p if p == COM1_BASE + 5 => LSR_IDLE.into(),
            p if p == COM1_BASE + 3 => self.lcr.into(),
            _ => width.mask(),
        }
    }
}

/// The value hypercall `nr` returns in RAX.
pub const fn hypercall_result(nr: u64) -> u64 {
    match nr {
        HC_VERSION => HYPERCALL_ABI_VERSION,
        _ => (-ENOSYS) as u64,
    }
}

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

/// How a VM's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEnd {
    /// The guest wrote `status` to the debug-exit port.
    Exited {
        /// The value written.
        status: u32,
    },
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
    /// The guest accessed its own memory in a way the mapping forbids.
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
    /// The hypervisor could not go on with this VM.
    Error(alloc::string::String),
}

impl VmEnd {
    /// The value hv-app writes to the debug-exit port when this was the
    /// last VM: the guest's own status if it exited, else
    /// [`crate::port::ExitCode::VmStopped`].
    pub fn exit_value(&self) -> u32 {
        match self {
            Self::Exited { status } => *status,
            _ => crate::port::ExitCode::VmStopped as u32,
        }
    }
}

impl fmt::Display for VmEnd {
    /// `exited with status N`, or `stopped: <reason>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited { status } => write!(f, "exited with status {status}"),
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
            Self::Error(e) => write!(f, "stopped: hypervisor error: {e}"),
        }
    }
}

/// Where to put a Multiboot information area of `len` bytes: at
/// [`LOW_BOOT_INFO_GPA`] if that does not overlap the kernel's load extent
/// `[image_start, image_end)`, else on the first page after the kernel.
/// `in_ram(gpa, len)` says whether a range is guest RAM; `None` if neither
/// place is.
pub fn place_boot_info(
    image: Option<(u64, u64)>,
    len: u64,
    in_ram: impl Fn(u64, u64) -> bool,
) -> Option<u64> {
    let overlaps = |at: u64| image.is_some_and(|(s, e)| at < e && s < at.saturating_add(len));
    if !overlaps(LOW_BOOT_INFO_GPA) && in_ram(LOW_BOOT_INFO_GPA, len) {
        return Some(LOW_BOOT_INFO_GPA);
    }
    let after = image?.1.checked_next_multiple_of(4096)?;
    in_ram(after, len).then_some(after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn uart_output_needs_dlab_clear() {
        let mut p = BringupPorts::new();
        // The guests' UART setup: DLAB on, divisor 1, then 8N1.
        assert_eq!(p.write(0x3f9, AccessWidth::Byte, 0), PortWrite::Ignored);
        assert_eq!(p.write(0x3fb, AccessWidth::Byte, 0x80), PortWrite::Ignored);
        assert_eq!(p.read(0x3fb, AccessWidth::Byte), 0x80);
        assert_eq!(p.write(0x3f8, AccessWidth::Byte, 1), PortWrite::Ignored);
        assert_eq!(p.write(0x3fb, AccessWidth::Byte, 0x03), PortWrite::Ignored);
        assert_eq!(
            p.write(0x3f8, AccessWidth::Byte, 0x1241),
            PortWrite::Console(b'A')
        );
        assert_eq!(p.read(0x3fd, AccessWidth::Byte), 0x60);
    }

    #[test]
    fn debug_exit_and_other_ports() {
        let mut p = BringupPorts::new();
        assert_eq!(
            p.write(0xf4, AccessWidth::Byte, 0x17e),
            PortWrite::Exit(0x7e)
        );
        assert_eq!(
            p.write(0xf4, AccessWidth::Dword, 0x1_0000_0003),
            PortWrite::Exit(3)
        );
        assert_eq!(p.write(0x80, AccessWidth::Byte, 0), PortWrite::Ignored);
        // No device: the bus floats high.
        assert_eq!(p.read(0x60, AccessWidth::Byte), 0xff);
        assert_eq!(p.read(0xcfc, AccessWidth::Word), 0xffff);
        assert_eq!(p.read(0xcfc, AccessWidth::Dword), 0xffff_ffff);
        assert_eq!(p.read(0x3f8, AccessWidth::Byte), 0xff);
    }

    #[test]
    fn hypercalls() {
        assert_eq!(hypercall_result(0), 0x0001_0000);
        assert_eq!(hypercall_result(0xdead), 0xffff_ffff_ffff_ffda);
        assert_eq!(hypercall_result(0xdead) as i64, -38);
    }

    #[test]
    fn end_messages() {
        assert_eq!(
            VmEnd::Exited { status: 0 }.to_string(),
            "exited with status 0"
        );
        assert_eq!(VmEnd::Exited { status: 5 }.exit_value(), 5);
        assert_eq!(
            VmEnd::TripleFault { rip: 0x20_1234 }.to_string(),
            "stopped: triple fault at RIP 0x201234"
        );
        let e = VmEnd::OutsideMemory {
            gpa: 0x4000_0000,
            rip: 0x20_0abc,
            access: access_name(MappingFlags::READ),
        };
        assert_eq!(
            e.to_string(),
            "stopped: access to GPA 0x40000000 outside its memory (RIP 0x200abc, read)"
        );
        assert_eq!(e.exit_value(), 5);
        assert_eq!(
            VmEnd::EntryFailed {
                code: u64::MAX,
                check: Some("ASID is zero")
            }
            .to_string(),
            "stopped: VM entry failed (exit code -1, VMEXIT_INVALID): ASID is zero"
        );
        assert!(
            VmEnd::EntryFailed {
                code: u64::MAX,
                check: None
            }
            .to_string()
            .ends_with("no known consistency check fails")
        );
        // VMX: basic exit reason 33 with bit 31 set (entry failure).
        assert_eq!(
            VmEnd::EntryFailed {
                code: 0x8000_0021,
                check: None
            }
            .to_string(),
            "stopped: VM entry failed (exit code 0x80000021): no known consistency check fails"
        );
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

    #[test]
    fn boot_info_goes_low_unless_the_kernel_is_there() {
        let ram_16m = |gpa: u64, len: u64| gpa + len <= 16 << 20;
        // The test guests load at 2 MiB: low memory is free.
        assert_eq!(
            place_boot_info(Some((0x20_0000, 0x21_9000)), 0x200, ram_16m),
            Some(0x9000)
        );
        // A kernel loaded over 0x9000: after its end, page aligned.
        assert_eq!(
            place_boot_info(Some((0x8000, 0x1_2345)), 0x200, ram_16m),
            Some(0x1_3000)
        );
        // Touching the end of the window counts as overlap.
        assert_eq!(
            place_boot_info(Some((0x91ff, 0xa000)), 0x200, ram_16m),
            Some(0xa000)
        );
        // No RAM low: after the kernel, if that is RAM.
        let high_ram = |gpa: u64, _| gpa >= 0x10_0000;
        assert_eq!(
            place_boot_info(Some((0x10_0000, 0x10_0800)), 0x200, high_ram),
            Some(0x10_1000)
        );
        assert_eq!(place_boot_info(None, 0x200, high_ram), None);
        assert_eq!(
            place_boot_info(Some((0x8000, 16 << 20)), 0x200, ram_16m),
            None
        );
    }
}
