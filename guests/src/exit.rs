//! How a guest ends its run: a byte written to the debug-exit port.
//!
//! QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4,
//! iosize=0x04`) and the hypervisor's debug-exit device at the same port
//! both end the run with status `(code << 1) | 1`, so a passing guest makes
//! QEMU exit with status 1.

/// The I/O port of the debug-exit device.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// The guest's checks passed (QEMU status 1).
pub const EXIT_PASS: u8 = 0;
/// A check of the guest failed (QEMU status 3).
pub const EXIT_FAIL: u8 = 1;
/// The CPU has no long mode; written by the 32-bit entry (QEMU status 0xf9).
pub const EXIT_NO_LONG_MODE: u8 = 0x7c;
/// The loader's EAX was not `0x2BADB002`; written by the 32-bit entry
/// (QEMU status 0xfb).
pub const EXIT_BAD_MAGIC: u8 = 0x7d;
/// An unexpected CPU exception (QEMU status 0xfd).
pub const EXIT_EXCEPTION: u8 = 0x7e;
/// A Rust panic (QEMU status 0xff).
pub const EXIT_PANIC: u8 = 0x7f;

/// The exit status of QEMU after `code` is written to its `isa-debug-exit`
/// port: `(code << 1) | 1` (QEMU `hw/misc/debugexit.c`).
pub const fn qemu_status(code: u8) -> i32 {
    ((code as i32) << 1) | 1
}

/// Ends the run with `code`: writes it to [`DEBUG_EXIT_PORT`] with
/// `out dx, al`, then halts with interrupts off in case no device listens.
#[cfg(target_os = "none")]
pub fn exit(code: u8) -> ! {
    crate::port::outb(DEBUG_EXIT_PORT, code);
    loop {
        // SAFETY: `cli; hlt` only stops this CPU; the guest owns the machine
        // and runs at CPL 0, and nothing is left to do.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_status_is_code_shifted_left_with_bit_0_set() {
        // QEMU debugexit.c: exit((val << 1) | 1).
        assert_eq!(qemu_status(EXIT_PASS), 1);
        assert_eq!(qemu_status(EXIT_FAIL), 3);
        assert_eq!(qemu_status(EXIT_NO_LONG_MODE), 0xf9);
        assert_eq!(qemu_status(EXIT_BAD_MAGIC), 0xfb);
        assert_eq!(qemu_status(EXIT_EXCEPTION), 0xfd);
        assert_eq!(qemu_status(EXIT_PANIC), 0xff);
    }
}
