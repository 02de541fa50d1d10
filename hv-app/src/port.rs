//! The port I/O seam, and how a run ends.
//!
//! [`PortIo`] is the only way the hv-app logic touches I/O ports: the binary
//! implements it with `in`/`out` instructions, tests with a recording fake.

/// Access to the x86 I/O port space.
pub trait PortIo {
    /// Reads a byte from `port`.
    fn inb(&mut self, port: u16) -> u8;
    /// Reads a 16-bit word from `port`.
    fn inw(&mut self, port: u16) -> u16;
    /// Reads a 32-bit doubleword from `port`.
    fn inl(&mut self, port: u16) -> u32;
    /// Writes a byte to `port`.
    fn outb(&mut self, port: u16, value: u8);
    /// Writes a 16-bit word to `port`.
    fn outw(&mut self, port: u16, value: u16);
    /// Writes a 32-bit doubleword to `port`.
    fn outl(&mut self, port: u16, value: u32);
}

/// I/O base of QEMU's `isa-debug-exit` device as xtask starts it
/// (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
pub const QEMU_DEBUG_EXIT_PORT: u16 = 0xf4;

/// Bochs's shutdown port: writing the bytes of `Shutdown` to it ends Bochs.
pub const BOCHS_SHUTDOWN_PORT: u16 = 0x8900;

/// The value hv-app writes to the debug-exit port. QEMU then exits with
/// status `(value << 1) | 1` (see [`ExitCode::qemu_status`]), so a
/// successful run ends with status 1, not 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// The run did what it should (QEMU status 1).
    Success = 0,
    /// A panic or a fatal boot error (QEMU status 3).
    Failure = 1,
    /// The 32-bit entry found a wrong loader magic in EAX (QEMU status 5).
    /// Written by the assembly entry, listed here for the record.
    BadBootMagic = 2,
    /// The CPU lacks long mode (QEMU status 7). Written by the assembly
    /// entry, listed here for the record.
    NoLongMode = 3,
    /// A CPU exception reached hv-app's handler, which printed its report
    /// (QEMU status 9).
    Exception = 4,
    /// The hypervisor stopped the last VM (triple fault, access outside its
    /// memory, failed entry) instead of the guest ending its own run (QEMU
    /// status 11). A guest that exits on its own passes its status through
    /// instead, so a guest writing 5 cannot be told apart from this.
    VmStopped = 5,
}

impl ExitCode {
    /// The exit status of QEMU after this code is written to the
    /// `isa-debug-exit` port: `(code << 1) | 1`.
    pub const fn qemu_status(self) -> i32 {
        (((self as u32) << 1) | 1) as i32
    }
}

/// The start of the last line hv-app prints before it powers off,
/// `axhv: exit status N` with N the value written to the debug-exit port.
/// Bochs has no `isa-debug-exit` device: `cargo xtask` reads the run's
/// status from this line there.
pub const EXIT_STATUS_MARKER: &str = "axhv: exit status ";

/// Writes the [`EXIT_STATUS_MARKER`] line for `value` to `out`.
pub fn write_exit_marker<W: core::fmt::Write + ?Sized>(
    out: &mut W,
    value: u32,
) -> core::fmt::Result {
    writeln!(out, "{EXIT_STATUS_MARKER}{value}")
}

/// Asks the emulator to end the run with `code`: writes it to QEMU's
/// `isa-debug-exit` port, then `Shutdown` to Bochs's shutdown port. On a
/// machine with neither device both writes go to unused ports and the
/// caller must halt.
pub fn request_power_off<P: PortIo + ?Sized>(io: &mut P, code: ExitCode) {
    request_power_off_with(io, code as u32);
}

/// [`request_power_off`] with a raw `value` for the debug-exit port, such
/// as a guest's own exit status (QEMU then exits with `(value << 1) | 1`).
pub fn request_power_off_with<P: PortIo + ?Sized>(io: &mut P, value: u32) {
    io.outl(QEMU_DEBUG_EXIT_PORT, value);
    for &b in b"Shutdown" {
        io.outb(BOCHS_SHUTDOWN_PORT, b);
    }
}

/// A recording [`PortIo`] for tests: every access is logged, reads return
/// values from a per-port default.
#[cfg(test)]
pub(crate) mod fake {
    use super::PortIo;

    /// One port access.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Access {
        In(u16, u8),
        Out(u16, u32, u8),
    }

    /// Records accesses; `inb` answers with `read(port)`.
    pub struct FakePorts<F: FnMut(u16) -> u8> {
        pub log: Vec<Access>,
        pub read: F,
    }

    impl<F: FnMut(u16) -> u8> FakePorts<F> {
        pub fn new(read: F) -> Self {
            Self {
                log: Vec::new(),
                read,
            }
        }

        /// The writes only, as `(port, value, width)`.
        pub fn writes(&self) -> Vec<(u16, u32, u8)> {
            self.log
                .iter()
                .filter_map(|a| match *a {
                    Access::Out(p, v, w) => Some((p, v, w)),
                    Access::In(..) => None,
                })
                .collect()
        }
    }

    impl<F: FnMut(u16) -> u8> PortIo for FakePorts<F> {
        fn inb(&mut self, port: u16) -> u8 {
            self.log.push(Access::In(port, 1));
            (self.read)(port)
        }
        fn inw(&mut self, port: u16) -> u16 {
            self.log.push(Access::In(port, 2));
            u16::from((self.read)(port))
        }
        fn inl(&mut self, port: u16) -> u32 {
            self.log.push(Access::In(port, 4));
            u32::from((self.read)(port))
        }
        fn outb(&mut self, port: u16, value: u8) {
            self.log.push(Access::Out(port, value.into(), 1));
        }
        fn outw(&mut self, port: u16, value: u16) {
            self.log.push(Access::Out(port, value.into(), 2));
        }
        fn outl(&mut self, port: u16, value: u32) {
            self.log.push(Access::Out(port, value, 4));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakePorts;
    use super::*;

    #[test]
    fn qemu_status_is_code_shifted_left_with_bit_0_set() {
        // QEMU hw/misc/debugexit.c: exit((val << 1) | 1).
        assert_eq!(ExitCode::Success.qemu_status(), 1);
        assert_eq!(ExitCode::Failure.qemu_status(), 3);
        assert_eq!(ExitCode::BadBootMagic.qemu_status(), 5);
        assert_eq!(ExitCode::NoLongMode.qemu_status(), 7);
        assert_eq!(ExitCode::Exception.qemu_status(), 9);
        assert_eq!(ExitCode::VmStopped.qemu_status(), 11);
    }

    #[test]
    fn power_off_writes_debug_exit_then_bochs_shutdown() {
        let mut io = FakePorts::new(|_| 0);
        request_power_off(&mut io, ExitCode::Failure);
        let w = io.writes();
        assert_eq!(w[0], (0xf4, 1, 4));
        let bochs: Vec<u8> = w[1..]
            .iter()
            .map(|&(p, v, width)| {
                assert_eq!((p, width), (0x8900, 1));
                v as u8
            })
            .collect();
        assert_eq!(bochs, b"Shutdown");
    }

    #[test]
    fn exit_marker_line() {
        let mut s = String::new();
        write_exit_marker(&mut s, ExitCode::VmStopped as u32).unwrap();
        assert_eq!(s, "axhv: exit status 5\n");
        s.clear();
        write_exit_marker(&mut s, 0x7e).unwrap();
        assert_eq!(s, "axhv: exit status 126\n");
    }

    #[test]
    fn power_off_with_a_guest_status() {
        let mut io = FakePorts::new(|_| 0);
        request_power_off_with(&mut io, 0x7e);
        assert_eq!(io.writes()[0], (0xf4, 0x7e, 4));
        assert_eq!(io.writes().len(), 1 + b"Shutdown".len());
    }
}
